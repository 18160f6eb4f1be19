"""``churnkit score --target sagemaker|azureml|vertex``: the customer base scored on a cloud's batch service.

The same run as the local engine (:func:`churnkit.batch.run.score_base`): the model resolved and
verified, the input read and typed (rows without an id or with a bad number refused here, never
sent nor billed), an MLflow run, the same output format and accounting. The scoring itself happens
on the service: the rows are staged in the service's format under ``churnkit/batch/<job>/`` of the
target's bucket (or, on Azure ML, uploaded by the SDK as the job's input folder), the job is
started, followed with progress on stderr, and its raw output read back and joined to the input by
id (:func:`churnkit.batch.cloud.write_raw_scores`): ranks, deciles and reasons as every engine.

Every limit is checked before the first request; ``plan=True`` returns the exact requests and sends
nothing. A failed job raises with the service's reason and the first lines of its error file; Ctrl-C
while waiting raises with the job's name and the commands to wait for it again or stop it.
"""

from __future__ import annotations

import time

from churnkit.batch.cloud import job_name, sendable, stage_csv, stage_jsonl
from churnkit.exceptions import CloudBatchError, ScoreError

TARGETS = ("sagemaker", "azureml", "vertex")


def service_for(target: str, endpoint: str = "churn", config=None, **options):
    """The batch service object of ``target`` over its deploy target (settings, credentials, clients)."""
    from churnkit.deploy import get_target

    if target not in TARGETS:
        raise ScoreError(f"no batch service for target {target!r}; available: {', '.join(map(repr, TARGETS))} "
                         "(or --engine local / spark)")
    deploy = get_target(target, endpoint=endpoint, config=config)
    if target == "sagemaker":
        from churnkit.batch.sagemaker import SageMakerBatch

        return SageMakerBatch(deploy, **options)
    if target == "azureml":
        from churnkit.batch.azureml import AzureMLBatch

        return AzureMLBatch(deploy, **options)
    from churnkit.batch.vertex import VertexBatch

    return VertexBatch(deploy, **options)


#: The job settings ``--batch-option`` may set, per target (the service classes' keyword arguments).
OPTIONS = {
    "sagemaker": ("instance_type", "instance_count", "max_payload_mb", "max_concurrent", "fmt", "poll_seconds",
                  "timeout"),
    "azureml": ("compute", "instance_count", "max_concurrency_per_instance", "mini_batch_size", "max_retries",
                "retry_timeout", "poll_seconds", "timeout"),
    "vertex": ("machine_type", "starting_replica_count", "max_replica_count", "batch_size", "poll_seconds", "timeout"),
}


def parse_options(target: str, pairs) -> dict:
    """``NAME=VALUE`` settings of ``target``'s job (whole numbers as int, others as text).

    Raises
    ------
    ScoreError
        A pair without '=', or a name the target's job does not have (the message lists them).
    """
    out = {}
    for pair in pairs:
        name, sep, value = str(pair).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in OPTIONS.get(target, ()):
            raise ScoreError(f"--batch-option {pair!r} is not NAME=VALUE with a {target} setting; "
                             f"settings: {', '.join(OPTIONS.get(target, ()))}")
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[name] = int(value)
        elif name.endswith(("seconds", "timeout")):
            try:
                out[name] = float(value)
            except ValueError:
                raise ScoreError(f"--batch-option {pair!r}: {name} takes seconds, e.g. {name}=30") from None
        else:
            out[name] = value
    return out


def job_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def read_input(input: str, schema, id_column: str):
    """The input as one arrow table (checked columns) and the rows to send."""
    from churnkit.batch.source import check_columns, open_source

    source = open_source(input)
    check_columns(source.columns, schema, id_column, [])
    table = source.dataset.to_table()
    rows = sendable(table, schema, id_column)
    if not len(rows):
        raise ScoreError(f"no row of {input!r} can be scored (each lacks an id in {id_column!r} or has a bad number); "
                         "nothing was sent. Fix the input or check --id-column")
    return table, rows


def plan_cloud(target: str, model: str, input: str, *, id_column: str = "customerID", endpoint: str = "churn",
               config=None, job: str = "", **options) -> dict:
    """The exact requests of a batch score on ``target`` (limits checked); nothing is sent or staged."""
    from churnkit.deploy.base import resolve_release
    from churnkit.serve.loading import load_serving_model

    loaded = load_serving_model(str(model), config)
    release = resolve_release(str(model), config=config)
    _, rows = read_input(input, loaded.schema, id_column)
    svc = service_for(target, endpoint, config, **options)
    job = job or job_name(release.model_name, release.version, job_stamp())
    names = loaded.schema.names
    if target == "sagemaker":
        requests = svc.plan(release, job, id_column, staged=stage_csv(rows, names, id_column))
    elif target == "vertex":
        requests = svc.plan(release, job, id_column, staged=stage_jsonl(rows, names, id_column))
    else:
        requests = svc.plan(release, job, f"<{len(rows)} rows staged as CSV, uploaded by the SDK>")
    return {"target": target, "job": job, "rows_to_send": len(rows),
            "model": {"name": release.model_name, "version": release.version}, "requests": requests}


def _unreachable(exc: Exception) -> bool:
    """True for the SDKs' "could not connect" errors (not a refusal by the service)."""
    import requests

    kinds: list[type] = [requests.ConnectionError, ConnectionError, TimeoutError]
    for module, names in (("botocore.exceptions", ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError")),
                          ("azure.core.exceptions", ("ServiceRequestError", "ServiceResponseError")),
                          ("google.api_core.exceptions", ("RetryError", "ServiceUnavailable"))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        kinds += [getattr(mod, n) for n in names if hasattr(mod, n)]
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:  # the SDK error may be wrapped (DeployTargetError's cause)
        if isinstance(cur, tuple(kinds)):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def run_cloud(svc, target: str, release, loaded, table, rows, id_column: str, job: str, progress=None) -> tuple:
    """Stage, submit, wait and read back; returns ``(raw score frame, JobReport)``.

    Raises
    ------
    CloudBatchError
        The service cannot be reached (one line naming it; the SDK's own retries bound the time).
    """
    try:
        return _run_cloud(svc, target, release, loaded, table, rows, id_column, job, progress)
    except (CloudBatchError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if not _unreachable(exc):
            raise
        raise CloudBatchError(f"{svc.service} cannot be reached ({type(exc).__name__}: {exc}); check the network, "
                              f"the region and any proxy, then run again (job {job!r} may not have started)") from None


def _run_cloud(svc, target: str, release, loaded, table, rows, id_column: str, job: str, progress=None) -> tuple:
    import tempfile
    from pathlib import Path

    names = loaded.schema.names
    if target == "sagemaker":
        staged = stage_csv(rows, names, id_column)
        svc.check_bucket_region(svc.target.settings["bucket"])
        requests = svc.plan(release, job, id_column, staged=staged, model_exists=svc.model_exists(release))
        svc.send(requests, release, staged)
        report = svc.wait(job, progress=progress)
        return svc.read_output(report.output_uri, id_column), report
    if target == "vertex":
        staged = stage_jsonl(rows, names, id_column)
        model = svc.model_resource(release)
        requests = svc.plan(release, job, id_column, model=model, input_uris=["<staged>"])
        uris = svc.stage(job, staged)
        requests[-1]["request"]["batch_prediction_job"]["input_config"]["gcs_source"]["uris"] = uris
        name = svc.submit(requests[-1])
        report = svc.wait(name, progress=progress)
        return svc.read_output(report.output_uri), report
    svc.check()
    svc.check_compute()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / job
        folder.mkdir()
        (folder / "part-00000.csv").write_bytes(rows[[id_column, *names]].to_csv(index=False).encode())
        svc.ensure_model(release)
        started = svc.submit(release, job, str(folder))
    report = svc.wait(started, progress=progress)
    return svc.read_output(started), report
