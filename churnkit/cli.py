"""The ``churnkit`` command line: parses options and calls the library, nothing more.

Exit codes: 0 success (a gate that refuses registration is a success), 1 a failure the user can act
on (stderr names the output notebook and the failed cell), 2 usage. ``--json`` prints one JSON object
on stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from churnkit.signals import RunTerminated
from churnkit.exceptions import ChurnkitError, NotebookExecutionError

PARAM_HELP = "Notebook parameter NAME VALUE (repeatable); see `churnkit params NOTEBOOK`."


def _params(pairs) -> dict[str, str]:
    return {name: value for name, value in pairs}


def _config(runs_dir):
    from churnkit.config import load_config

    return load_config(runs_dir)


def emit_json(obj) -> None:
    """Print one JSON object on stdout (the only thing --json puts there)."""
    click.echo(json.dumps(obj, indent=2, default=str))


class _Group(click.Group):
    """Maps ChurnkitError to its exit code with a one-line message (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NotebookExecutionError as exc:
            where = f"code cell {exc.cell_index}" if exc.cell_index is not None else "a cell"
            click.echo(f"error: notebook {Path(exc.output_path).stem} failed in {where}: {exc.ename}: {exc.evalue}", err=True)
            click.echo(f"  failed cell: {exc.cell_index}", err=True)
            click.echo(f"  output notebook: {exc.output_path}", err=True)
            ctx.exit(exc.exit_code)
        except ChurnkitError as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except RunTerminated as exc:  # SIGTERM outside a notebook (a rollout, between pipeline steps)
            click.echo(f"error: RunTerminated: the command {exc} and was stopped", err=True)
            ctx.exit(128 + exc.signum)  # what a shell reports for a process ended by the signal
        except Exception as exc:  # a tracking server that stops answering or refuses, a cloud that does not answer
            from churnkit.deploy.reach import from_exception
            from churnkit.tracking import permission_error, server_error

            error = server_error(exc) or permission_error(exc) or from_exception(exc)
            if error is None:
                raise
            click.echo(f"error: {type(error).__name__}: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="churnkit")
@click.option("-v", "--verbose", is_flag=True,
              help="Log at INFO and show MLflow's progress bars on stderr (also: CHURNKIT_LOG_LEVEL=INFO or DEBUG).")
def main(verbose):
    """Notebook-first churn model kit: train, evaluate, deploy, roll out, monitor."""
    from churnkit.config import log_level, quiet_outputs

    quiet_outputs(log_level(verbose))


@main.command()
@click.argument("notebook", required=False)
@click.option("-p", "--parameter", "pairs", nargs=2, multiple=True, metavar="NAME VALUE", help=PARAM_HELP)
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--cell-timeout", type=click.IntRange(min=1), default=None, help="Seconds a cell may run before it is stopped.")
@click.option("--rerun", "rerun_id", metavar="RUN_ID",
              help="Run a past run's notebook again with the same parameters (-p overrides one); ids: `churnkit runs`.")
def run(notebook, pairs, runs_dir, cell_timeout, rerun_id):
    """Run one NOTEBOOK headless (01-train, 02-evaluate, ...); prints the output notebook path."""
    from churnkit.runner import rerun_notebook, run_notebook
    from churnkit.runner.secrets import describe

    if bool(notebook) == bool(rerun_id):
        raise click.UsageError("give either a NOTEBOOK or --rerun RUN_ID")
    if rerun_id:
        res = rerun_notebook(rerun_id, _params(pairs), config=_config(runs_dir), cell_timeout=cell_timeout)
    else:
        res = run_notebook(notebook, _params(pairs), config=_config(runs_dir), cell_timeout=cell_timeout)
    if res.redactions:
        click.echo(f"warning: redacted credentials from the output notebook ({describe(res.redactions)})", err=True)
    click.echo(str(res.output_path))


@main.command()
@click.option("-p", "--parameter", "pairs", nargs=2, multiple=True, metavar="NAME VALUE", help=PARAM_HELP)
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="Queue this long behind another pipeline on the same model (default: refuse at once, naming it).")
@click.option("--approved", default="", metavar="VERSION",
              help="Team mode: deploy and roll out the production version approved from candidate VERSION.")
def pipeline(pairs, runs_dir, as_json, wait, approved):
    """The monthly job: train → evaluate (gate, register) → deploy → rollout, in one run folder."""
    from churnkit.runner import pipeline_summary, run_pipeline

    echo = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    result = run_pipeline(_params(pairs), config=_config(runs_dir), echo=echo, wait=wait, approved=approved)
    summary = pipeline_summary(result)
    if as_json:
        emit_json(summary)
    else:
        click.echo(summary["text"])


@main.command()
@click.argument("notebook")
def params(notebook):
    """List NOTEBOOK's parameters with their defaults and comments."""
    from churnkit.runner import notebook_parameters

    ps = notebook_parameters(notebook)
    width = max(len(p.name) for p in ps)
    dwidth = max(len(p.source) for p in ps)
    for p in ps:
        click.echo(f"{p.name:<{width}}  {p.source:<{dwidth}}  {p.type_name:<5}  {p.comment}")


@main.group()
def data():
    """Data utilities."""


@data.command()
@click.option("--rows", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--month", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--drift", type=click.Choice(["none", "covariate", "concept", "new_category"]), default="none", show_default=True)
@click.option("--charges-unit", type=click.Choice(["dollars", "cents"]), default="dollars", show_default=True,
              help="cents: write the charge columns in cents, as a faulty export would.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="CSV or Parquet file to write.")
def synth(rows, month, seed, drift, charges_unit, out):
    """Write a synthetic monthly customer snapshot (Telco-shaped, churn label included)."""
    from churnkit.data import write_table, synth_month

    frame = synth_month(rows=rows, month=month, seed=seed, drift=None if drift == "none" else drift,
                        charges_unit=charges_unit)
    path = write_table(frame, out)
    click.echo(f"{path}: {len(frame)} rows, churn rate {(frame['churn'] == 'Yes').mean():.1%}")


# ---- rollout references ------------------------------------------------------------------------
@main.group()
def reference():
    """A registered version's rollout reference (its holdout scores through the serving scorer)."""


@reference.command("build")
@click.option("--model-name", default="churn", show_default=True, help="Registered model name.")
@click.option("--version", "version", required=True, help="The registered version to build the reference for.")
@click.option("--holdout", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV or Parquet rows held out from the version's training data (label column optional).")
@click.option("--label-column", default="churn", show_default=True, help="The label column of the holdout, if any.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the reference's numbers as one JSON object.")
def reference_build(model_name, version, holdout, label_column, runs_dir, as_json):
    """Build VERSION's rollout reference from a holdout table and store it in the version's model folder.

    For a version registered before references whose training run kept no holdout; the folder's manifest
    is computed again and recorded on the version.
    """
    from churnkit.reference import write_reference

    ref = write_reference(version, holdout, label_column, model_name, _config(runs_dir))
    if as_json:
        emit_json({k: v for k, v in ref.to_dict().items() if k not in ("scores", "champion")})
    else:
        click.echo(f"{model_name} v{version}: " + ref.summary())


# ---- bring your own model -----------------------------------------------------------------------
@main.command("import")
@click.argument("model_file", type=click.Path(exists=True))
@click.option("--sample", "sample_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV or Parquet rows the model scores (its input columns, and the label for the gate).")
@click.option("--label-column", default="churn", show_default=True, help="The churn label column of the sample.")
@click.option("--model-name", default="churn", show_default=True, help="Registered model name.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Churn decision threshold stored with the version (default: chosen on the sample).")
@click.option("--auc-threshold", type=float, default=0.85, show_default=True, help="Gate: sample ROC AUC must exceed this.")
@click.option("--min-improvement", type=float, default=0.0, show_default=True,
              help="Gate: AUC minus the serving champion's AUC on the same sample must reach this.")
@click.option("--allow-schema-change", is_flag=True,
              help="Let the model replace a champion with other input columns that cannot be compared with it.")
@click.option("--no-gate", is_flag=True, help="Register without the gate (required for an unlabelled sample); recorded.")
@click.option("--trust", is_flag=True, help="Trust the whole file: lift the allow-list (its code runs, still in the "
              "isolated child); recorded.")
@click.option("--trust-type", "trust_types", multiple=True, metavar="module.Class",
              help="Vouch for one class outside the allow-list, by its exact module and name (repeatable); recorded.")
@click.option("--columns", default="", metavar="a,b,c", help="Input columns in training order, for a model fitted on a matrix.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
def import_(model_file, sample_path, label_column, model_name, threshold, auc_threshold, min_improvement,
            allow_schema_change, no_gate, trust, trust_types, columns, runs_dir, as_json):
    """Register an existing .joblib/.pkl/.skops model or MLflow model folder as a version of the model."""
    from churnkit.importer import import_model

    result = import_model(model_file, sample_path, label_column, model_name=model_name, threshold=threshold,
                          no_gate=no_gate, trust=trust, trust_types=trust_types, columns=columns or None,
                          auc_threshold=auc_threshold,
                          min_improvement=min_improvement, allow_schema_change=allow_schema_change,
                          config=_config(runs_dir))
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(result.summary())


# ---- the production hand-off --------------------------------------------------------------------
@main.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--note", required=True, help="Why (stored on both versions; never a credential).")
@click.option("--override-gate", default="", metavar="REASON", help="Approve a candidate that did not pass the gate; recorded.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as one JSON object.")
def approve(model_name, version, note, override_gate, runs_dir, as_json):
    """Copy candidate MODEL VERSION into the production model with its lineage; record who, when and why."""
    from churnkit.runner.approval import approve as approve_version

    _emit_record(approve_version(model_name, version, note, override_gate=override_gate,
                                   config=_config(runs_dir)), as_json)


@main.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--note", required=True, help="Why (stored on the version; never a credential).")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as one JSON object.")
def reject(model_name, version, note, runs_dir, as_json):
    """Record the refusal of candidate MODEL VERSION (nothing reaches production)."""
    from churnkit.runner.approval import reject as reject_version

    _emit_record(reject_version(model_name, version, note, config=_config(runs_dir)), as_json)


@main.group()
def team():
    """Team mode on an MLflow server with authentication: candidates, production, permissions."""


@team.command("init")
@click.option("--model-name", default="churn", show_default=True, help="The candidates model (production: NAME-production).")
@click.option("--data-scientist", "data_scientists", multiple=True, metavar="USER[,USER]",
              help="EDIT on candidates, READ on production (repeatable).")
@click.option("--approver", "approvers", multiple=True, metavar="USER[,USER]", help="MANAGE on production (repeatable).")
@click.option("--ci", "ci_users", multiple=True, metavar="USER", help="The CI identity: MANAGE on production (repeatable).")
@click.option("--require-approval/--no-require-approval", default=True, show_default=True,
              help="The production model's approval_required tag (the pipeline stops for approval).")
@click.option("--apply", "do_apply", is_flag=True, help="Carry the steps out as the admin of MLFLOW_TRACKING_USERNAME.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as one JSON object.")
def team_init(model_name, data_scientists, approvers, ci_users, require_approval, do_apply, runs_dir, as_json):
    """Print each set-up step (experiment, models, users, permissions); --apply does them via MLflow's auth API."""
    from churnkit.team import apply_team, plan_team

    steps = plan_team(model_name, data_scientists=data_scientists, approvers=approvers, ci=ci_users,
                      require_approval=require_approval)
    if do_apply:
        apply_team(steps, _config(runs_dir), echo=(lambda m: click.echo(m, err=True)) if as_json else click.echo)
    if as_json:
        return emit_json({"applied": do_apply, "steps": [s.to_dict() for s in steps]})
    if not do_apply:
        for i, step in enumerate(steps, 1):
            click.echo(f"{i:>2}. {step.text}\n    {step.request} {json.dumps(step.args)}")
        click.echo("nothing was changed; run again with --apply as the MLflow admin (MLFLOW_TRACKING_USERNAME/PASSWORD)")


# ---- real-time serving --------------------------------------------------------------------------
@main.command()
@click.option("--model", "model_uri", metavar="URI",
              help="models:/churn@champion, models:/churn/N, runs:/..., a model folder or gs:// / s3:// URI "
                   "(default: CHURNKIT_MODEL_URI, AIP_STORAGE_URI, AZUREML_MODEL_DIR, then /opt/ml/model).")
@click.option("--host", help="Interface to bind (default CHURNKIT_HOST, else 127.0.0.1; the image sets 0.0.0.0).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default AIP_HTTP_PORT, else 8080; 0 picks a free one).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=6 * 1024 * 1024, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--max-rows", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Requests with more rows get 413.")
@click.option("--capture-dir", help="Write every scored request there (JSON Lines): a folder, or gs://BUCKET/PREFIX/ "
              "or s3://BUCKET/PREFIX/ (each closed file copied there). Default CHURNKIT_CAPTURE_URI.")
@click.option("--capture-max-bytes", type=click.IntRange(min=1), default=16 * 1024 * 1024, show_default=True,
              help="Rotate capture files at this size.")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers; slower connections are closed.")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a client has to send a request's body; slower ones get 408.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--workers", default=None, metavar="N|auto",
              help="Server processes on the port (auto: one per CPU). Default CHURNKIT_WORKERS, else auto when the "
                   "model comes from the environment (a container), else 1.")
def serve(model_uri, host, port, max_body_bytes, max_rows, capture_dir, capture_max_bytes, header_timeout, body_timeout,
          runs_dir, workers):
    """Serve the model over HTTP: SageMaker, Vertex AI, Azure ML and MLflow routes, /metrics."""
    import os

    from churnkit.serve.app import create_app, environment_settings, run_server
    from churnkit.serve.batch import batch_settings
    from churnkit.serve.loading import load_serving_model
    from churnkit.serve.workers import resolve_workers

    env = environment_settings(os.environ)
    n_workers = resolve_workers(workers, default="1" if model_uri else "auto")
    batch = batch_settings(os.environ, n_workers)  # a bad SAGEMAKER_* variable fails before the model loads
    loaded = load_serving_model(model_uri or env["model"], _config(runs_dir), compiled=True)
    if not loaded.pinned:
        click.echo(f"warning: serving {loaded.uri!r} unpinned: no CHURNKIT_MANIFEST_SHA256 names the digest recorded at "
                   "registration, so a changed folder would not be noticed (/version shows \"pinned\": false)", err=True)
    app = create_app(loaded, max_body_bytes=max_body_bytes, max_rows=max_rows, capture_dir=capture_dir or env["capture"],
                     capture_max_bytes=capture_max_bytes, vertex_health_route=env["vertex_health_route"],
                     vertex_predict_route=env["vertex_predict_route"], body_timeout=body_timeout,
                     batch=batch)
    run_server(app, host=host or env["host"], port=env["port"] if port is None else port, header_timeout=header_timeout,
               workers=n_workers)


# ---- the reviewer's view of runs/ ---------------------------------------------------------------
@main.command()
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--limit", type=click.IntRange(min=0), default=200, show_default=True, help="Newest N runs (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as one JSON list.")
def runs(runs_dir, limit, as_json):
    """List notebook runs newest first: status, key parameters and metrics, model versions."""
    from churnkit.audit import format_table, list_runs, production_lines

    entries = list_runs(_config(runs_dir), limit=limit or None)
    if as_json:
        emit_json(entries)
    else:
        click.echo(format_table(entries))
        for line in production_lines(_config(runs_dir)):
            click.echo(line)


@main.command()
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file to write (default <runs-dir>/index.html).")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Newest N notebook runs only (default all).")
def report(runs_dir, out, limit):
    """Write a static HTML index of runs/: executed notebooks, failures, gates, model versions."""
    from churnkit.audit import write_report

    click.echo(str(write_report(_config(runs_dir), out, limit=limit or None)))


# ---- progressive rollout ------------------------------------------------------------------------
TARGET_CHOICE = click.Choice(["local", "sagemaker", "azureml", "vertex"])


def _endpoint_name(ctx, param, value):
    from churnkit.deploy.base import check_endpoint_name
    from churnkit.exceptions import DeployTargetError

    try:
        return check_endpoint_name(value)
    except DeployTargetError as exc:
        raise click.BadParameter(str(exc)) from None


def _rollout_echo(as_json: bool):
    return (lambda msg: click.echo(msg, err=True)) if as_json else click.echo


def _endpoint_options(fn):
    """--target, --endpoint, --model-name, --runs-dir and --json, shared by rollout and rollback."""
    for option in reversed([
        click.option("--target", "deploy_target", type=TARGET_CHOICE, required=True, help="Deploy target of the endpoint."),
        click.option("--endpoint", default="churn", show_default=True, callback=_endpoint_name, envvar="CHURNKIT_ENDPOINT",
                     help="Endpoint name on the target (lowercase letters, digits, '-'); or CHURNKIT_ENDPOINT, e.g. "
                          "the Terraform output endpoint_name."),
        click.option("--model-name", default="churn", show_default=True, help="Registered model name."),
        click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR)."),
        click.option("--json", "as_json", is_flag=True, help="Print the decision record as one JSON object."),
    ]):
        fn = option(fn)
    return fn


def _emit_record(record, as_json: bool) -> None:
    if as_json:
        emit_json(record.to_dict())
    else:
        click.echo(record.summary())


@main.command()
@_endpoint_options
@click.option("--strategy", type=click.Choice(["canary", "linear"]), default="canary", show_default=True,
              help="canary: 10 → 100; linear: 25, 50, 75, 100 (unless --steps).")
@click.option("--steps", default="", metavar="10,50,100", help="Explicit challenger weights, ending with 100.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds each step bakes before it is judged [default: 30, or the target's telemetry minimum "
                   "when longer: 180 on sagemaker, 240 on azureml and vertex].")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Challenger's share of 5xx/timeouts/connection errors allowed (and above the champion's).")
@click.option("--max-p99-ratio", type=click.FloatRange(min=0), default=1.5, show_default=True,
              help="Challenger p99 / champion p99 on the same window.")
@click.option("--max-prediction-psi", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="PSI of the challenger's live scores against its own reference (its holdout scores); a step "
                   "fails only above this and above chance for the sizes seen.")
@click.option("--failure-threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Failed checks (over the whole rollout) that trigger the rollback; 1 = the first.")
@click.option("--min-requests", type=click.IntRange(min=0), default=50, show_default=True,
              help="Requests each variant needs in a step before its verdict (the bake extends up to 10×).")
@click.option("--replay-rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Replay held-out rows through the endpoint at this many requests/s during the rollout.")
@click.option("--max-input-drift", type=click.FloatRange(0, 1), default=None, metavar="SHARE",
              help="Also judge input drift: the share of input columns that may drift from the challenger's holdout.")
@click.option("--replay-path", default="", metavar="FILE",
              help="Replay this table (CSV/Parquet) instead of the challenger's holdout (with --replay-rate).")
@click.option("--min-scores", type=click.IntRange(min=1), default=None,
              help="Live scores a variant needs before the score checks count [default: 200].")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Chance of a false alarm each step may spend, split across its looks.")
@click.option("--looks", type=click.IntRange(min=1), default=3, show_default=True,
              help="Times each step is judged during its bake; a broken challenger is rolled back at the first.")
@click.option("--on-divergence", type=click.Choice(["hold", "rollback"]), default="hold", show_default=True,
              help="A live divergence from the champion beyond the offline one (plus chance): hold for review or roll back.")
@click.option("--on-inconclusive", type=click.Choice(["rollback", "hold"]), default="rollback", show_default=True,
              help="Too little data at a bake's cap: roll back (reason 'inconclusive: ...') or hold the weights.")
@click.option("--resume", is_flag=True, help="After a stopped controller: continue its step instead of rolling back.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print every traffic request and telemetry query per step as JSON; send nothing.")
def rollout(deploy_target, endpoint, model_name, strategy, steps, interval, max_error_rate, max_p99_ratio,
            max_prediction_psi, failure_threshold, min_requests, replay_rate, max_input_drift, replay_path, min_scores,
            alpha, looks, on_divergence, on_inconclusive, resume, runs_dir, as_json, plan_only):
    """Shift traffic from champion to challenger step by step; promote it, or roll back on a breach."""
    from churnkit.rollout import rollout as run_rollout

    if plan_only:
        from churnkit.rollout import plan_rollout

        emit_json(plan_rollout(deploy_target, endpoint=endpoint, model_name=model_name, strategy=strategy, steps=steps,
                               interval=interval, config=_config(runs_dir)))
        return

    record = run_rollout(deploy_target, endpoint=endpoint, model_name=model_name, strategy=strategy, steps=steps,
                         interval=interval, max_error_rate=max_error_rate, max_p99_ratio=max_p99_ratio,
                         max_prediction_psi=max_prediction_psi, failure_threshold=failure_threshold,
                         min_requests=min_requests, replay_rate=replay_rate, max_input_drift=max_input_drift,
                         resume=resume, replay_path=replay_path, min_scores=min_scores, alpha=alpha, looks=looks,
                         on_divergence=on_divergence, on_inconclusive=on_inconclusive,
                         config=_config(runs_dir), echo=_rollout_echo(as_json))
    _emit_record(record, as_json)


@main.command()
@_endpoint_options
def rollback(deploy_target, endpoint, model_name, runs_dir, as_json):
    """Restore the `previous` version as champion with 100 % of the traffic."""
    from churnkit.rollout import rollback as run_rollback

    record = run_rollback(deploy_target, endpoint=endpoint, model_name=model_name, config=_config(runs_dir),
                          echo=_rollout_echo(as_json))
    _emit_record(record, as_json)


# ---- deploy targets -----------------------------------------------------------------------------
def _target_name(ctx, param, value):
    from churnkit.deploy import target_class
    from churnkit.exceptions import DeployTargetError

    try:
        target_class(value)
    except DeployTargetError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _target_options(fn):
    """--target, --endpoint, --port, --runs-dir and --json, shared by deploy and endpoint commands."""
    for option in reversed([
        click.option("--target", "deploy_target", required=True, callback=_target_name, metavar="NAME",
                     help="local, sagemaker, azureml or vertex."),
        click.option("--endpoint", default="churn", show_default=True, callback=_endpoint_name, envvar="CHURNKIT_ENDPOINT",
                     help="Endpoint name on the target (lowercase letters, digits, '-'); or CHURNKIT_ENDPOINT, e.g. "
                          "the Terraform output endpoint_name."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
                     help="The local router's port (local target only)."),
        click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR)."),
        click.option("--json", "as_json", is_flag=True, help="Print the endpoint state as one JSON object."),
    ]):
        fn = option(fn)
    return fn


def _target(name: str, endpoint: str, port: int, runs_dir, autoscaling=None):
    from churnkit.deploy import open_target

    return open_target(name, endpoint, port, _config(runs_dir), autoscaling=autoscaling)


def _autoscaling_options(fn):
    """--min-instances ... --schedule: the autoscaling policy deploy registers for the new variant."""
    for option in reversed([
        click.option("--min-instances", type=int, default=None, help="Autoscaling: fewest instances (replicas)."),
        click.option("--max-instances", type=int, default=None, help="Autoscaling: most instances."),
        click.option("--target-invocations-per-instance", type=float, default=None, metavar="N",
                     help="Autoscaling: requests per instance per minute to hold (`churnkit loadtest --ramp` prints one)."),
        click.option("--target-cpu", type=float, default=None, metavar="PERCENT", help="Autoscaling: CPU percent to hold instead."),
        click.option("--scale-in-cooldown", type=int, default=None, metavar="SECONDS", help="Autoscaling: seconds between scale-ins."),
        click.option("--scale-out-cooldown", type=int, default=None, metavar="SECONDS", help="Autoscaling: seconds between scale-outs."),
        click.option("--schedule", "schedules", multiple=True, metavar="'MON-FRI 08:00 4-10'",
                     help="Autoscaling: min-max instances from a time of day (UTC) on some days (repeatable)."),
    ]):
        fn = option(fn)
    return fn


def _emit_state(state, as_json: bool) -> None:
    if as_json:
        emit_json(state.to_dict())
    else:
        click.echo(state.summary())


def _emit_plan(target, action: str, requests: list) -> None:
    emit_json({"target": target.name, "endpoint": target.endpoint, "action": action, "basis": target.plan_basis,
               "requests": requests})


def _plan_or_apply(target, action: str, plan_only: bool, as_json: bool, **kw) -> None:
    """Print the exact requests of ``action`` (--plan), or carry it out and print the live state."""
    if plan_only:
        _emit_plan(target, action, target.plan(action, **kw))
    else:
        _emit_state(getattr(target, action)(**kw), as_json)


@main.command()
@_target_options
@click.option("--model", "model_uri", required=True, metavar="URI", help="models:/churn@challenger, models:/churn/3, ...")
@click.option("--variant", default=None, help="Variant name (default v<version>).")
@click.option("--weight", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Traffic share of the new variant; the others share the rest (the first variant gets 100).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the exact requests as JSON; send nothing.")
@click.option("--guardrails", type=click.Choice(["canary", "linear"]), default=None,
              help="SageMaker only: replace the model with a blue/green canary or linear shift and alarm rollback.")
@click.option("--step", type=click.IntRange(1, 99), default=10, show_default=True, help="Guardrails: percent per step.")
@click.option("--bake", type=click.IntRange(min=0), default=600, show_default=True, help="Guardrails: seconds between steps.")
@_autoscaling_options
def deploy(deploy_target, endpoint, port, runs_dir, as_json, model_uri, variant, weight, plan_only, guardrails, step, bake,
           **scaling):
    """Deploy a registered model version to an endpoint as a weighted variant (autoscaled with --min/--max-instances)."""
    from churnkit.deploy.autoscaling import policy_for

    target = _target(deploy_target, endpoint, port, runs_dir, policy_for(deploy_target, **scaling))
    if guardrails and deploy_target != "sagemaker":
        raise click.BadParameter(f"--guardrails works with --target sagemaker, not {deploy_target!r}", param_hint="--guardrails")
    if guardrails:
        kw = {"model_uri": model_uri, "strategy": guardrails, "step": step, "bake_seconds": bake}
        if plan_only:
            return _emit_plan(target, "guarded", target.plan("guarded", **kw))
        return _emit_state(target.deploy_guarded(**kw), as_json)
    if plan_only:
        return _emit_plan(target, "deploy", target.plan("deploy", model_uri=model_uri, variant=variant, weight=weight))
    _emit_state(target.deploy(model_uri, variant, weight), as_json)


@main.group()
def endpoint():
    """Look at or change a deployed endpoint: status, traffic, remove, stop."""


@endpoint.command()
@_target_options
def status(deploy_target, endpoint, port, runs_dir, as_json):
    """Show the live variants, their model versions, weights and status; autoscaling and instance counts on a cloud."""
    from churnkit.deploy.autoscaling import live_status, status_lines

    target = _target(deploy_target, endpoint, port, runs_dir)
    state = target.describe()
    scaling = live_status(target, state)
    if as_json:
        return emit_json({**state.to_dict(), "autoscaling": scaling})
    click.echo(state.summary())
    for line in status_lines(scaling):
        click.echo(line)


@endpoint.command()
@_target_options
@click.argument("weights", nargs=-1, required=True, metavar="VARIANT=WEIGHT...")
@click.option("--plan", "plan_only", is_flag=True, help="Print the exact requests as JSON; send nothing.")
def traffic(deploy_target, endpoint, port, runs_dir, as_json, weights, plan_only):
    """Set traffic weights, e.g. `v1=90 v2=10` (they must sum to 100)."""
    parsed = {}
    for item in weights:
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not VARIANT=WEIGHT (e.g. v2=10)", param_hint="WEIGHTS")
        parsed[name] = int(value)
    _plan_or_apply(_target(deploy_target, endpoint, port, runs_dir), "set_traffic", plan_only, as_json, weights=parsed)


@endpoint.command()
@_target_options
@click.argument("variant")
@click.option("--plan", "plan_only", is_flag=True, help="Print the exact requests as JSON; send nothing.")
def remove(deploy_target, endpoint, port, runs_dir, as_json, variant, plan_only):
    """Drain VARIANT (its traffic goes to the others) and delete it."""
    _plan_or_apply(_target(deploy_target, endpoint, port, runs_dir), "remove", plan_only, as_json, variant=variant)


@endpoint.command()
@_target_options
@click.option("--plan", "plan_only", is_flag=True, help="Print the exact requests as JSON; send nothing.")
def stop(deploy_target, endpoint, port, runs_dir, as_json, plan_only):
    """Stop the endpoint: local processes end; a cloud endpoint is deleted (models stay registered)."""
    _plan_or_apply(_target(deploy_target, endpoint, port, runs_dir), "stop", plan_only, as_json)


# ---- the serving image --------------------------------------------------------------------------
@main.group()
def image():
    """The serving image (templates/serving/Dockerfile): build it, push it to ECR, ACR or Artifact Registry."""


@image.command("build")
@click.option("--push", is_flag=True, help="Sign in to the target's registry, tag and push (needs --target).")
@click.option("--target", "deploy_target", type=click.Choice(["sagemaker", "azureml", "vertex"]), default=None,
              help="Whose registry: the image URI comes from --image-uri, the target's variable or Terraform output.")
@click.option("--tag", default=None, help="Image tag (default: the tag of the URI, else the churnkit version).")
@click.option("--base", default=None, metavar="IMAGE", help="Base image (build argument BASE; default python:3.11-slim).")
@click.option("--image-uri", default=None, metavar="URI", help="Registry URI to push to, overriding the environment and Terraform.")
@click.option("--ca-bundle", default=None, metavar="FILE",
              help="CA bundle pip trusts during the build (default PIP_CERT, REQUESTS_CA_BUNDLE or SSL_CERT_FILE; '' for none).")
@click.option("--network", default="host", show_default=True, help="docker build --network ('' for docker's default).")
@click.option("--terraform-dir", type=click.Path(file_okay=False), default=None,
              help="Terraform folder whose outputs name the registry (default templates/terraform/<cloud>).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the exact commands as JSON; run nothing.")
def image_build(push, deploy_target, tag, base, image_uri, ca_bundle, network, terraform_dir, plan_only):
    """Build the serving image for linux/amd64; with --push, push it where the deploy target reads it."""
    from churnkit.deploy.image import plan_image, run_plan

    plan = plan_image(push=push, target=deploy_target, tag=tag, base=base, image_uri=image_uri, ca_bundle=ca_bundle,
                      network=network or None, terraform_dir=terraform_dir)
    if plan_only:
        return emit_json(plan.to_dict())
    uri = run_plan(plan)
    for name, value in plan.env.items():
        click.echo(f"export {name}={value}", err=True)
    click.echo(uri)


# ---- capacity -----------------------------------------------------------------------------------
@main.command()
@click.argument("url")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Requests per second (the first step of a --ramp).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to send (each step of a --ramp).")
@click.option("--ramp", is_flag=True, help="Raise the rate x1.5 per step until the p99 objective is missed; "
              "prints the rate one instance holds and the autoscaling target.")
@click.option("--p99-objective-ms", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True)
@click.option("--headroom", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True,
              help="Share of the sustained rate kept free in the autoscaling target.")
@click.option("--max-steps", type=click.IntRange(min=1), default=8, show_default=True, help="Most ramp steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per request.")
@click.option("--route", default="/invocations", show_default=True, help="Predict route (/score on Azure ML).")
@click.option("--data", "data_path", default="", metavar="FILE", help="Rows to send (CSV/Parquet; default a synthetic month).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def loadtest(url, rate, duration, ramp, p99_objective_ms, headroom, max_steps, batch_size, route, data_path, as_json):
    """Load URL at --rate for --duration: throughput, p50/p99, errors, model vs overhead latency; --ramp sizes it."""
    from churnkit import loadtest as lt

    rows = None
    if data_path:
        from churnkit.data import read_table

        rows = read_table(data_path).drop(columns=["churn", "customer_id"], errors="ignore")
    kw = {"rows": rows, "route": route, "batch_size": batch_size}
    if ramp:
        result = lt.ramp(url, rate, duration, p99_objective_ms=p99_objective_ms, headroom=headroom, max_steps=max_steps,
                         echo=None if as_json else click.echo, **kw)
    else:
        result = lt.loadtest(url, rate, duration, **kw)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(result.summary())


# ---- monitoring ---------------------------------------------------------------------------------
@main.command()
@click.option("--reference", default=None, metavar="FILE", help="Reference table (CSV/Parquet), e.g. the training month.")
@click.option("--current", default=None, metavar="FILE|DIR",
              help="Current table, or a serving data-capture folder / .jsonl file (served scores included).")
@click.option("--history", multiple=True, metavar="FILE", help="Earlier labelled months, oldest first (AUC over months).")
@click.option("--labels", "labels_path", default="", metavar="FILE", help="Labels that arrived later, joined on --id-column.")
@click.option("--label-column", default="churn", show_default=True, help="The churn label in --labels or --current.")
@click.option("--id-column", default="", help="Join key of --labels (default: the one column shared with --current).")
@click.option("--exclude", "id_columns", multiple=True, metavar="COLUMN", help="Column to leave out of drift (repeatable).")
@click.option("--model", "model_uri", default="", metavar="URI", help="models:/churn@champion, runs:/..., or a folder: "
              "scores give prediction drift and, with labels, performance vs its holdout.")
@click.option("--metrics-url", default="", metavar="URL", help="A churnkit server (http://127.0.0.1:8080): latency breakdown.")
@click.option("--probe-requests", type=click.IntRange(min=0), default=20, show_default=True,
              help="Timed requests the latency probe sends (rows of --current); 0: read /metrics only.")
@click.option("--drift-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Dataset drift when at least this share of columns drifted.")
@click.option("--psi-warn", type=click.FloatRange(min=0), default=0.1, show_default=True, help="PSI warning level.")
@click.option("--psi-act", type=click.FloatRange(min=0), default=0.25, show_default=True,
              help="PSI of a column or of the scores at which retraining is recommended.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=0.03, show_default=True,
              help="Retrain when ROC AUC falls more than this below the model's holdout AUC.")
@click.option("--small-sample", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Up to this many rows a side: KS / chi-squared p < 0.05; above: Wasserstein / Jensen-Shannon.")
@click.option("--report", "report_path", default="", metavar="FILE.html", help="Write the HTML report (plots included).")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--latency", is_flag=True, help="Latency diagnosis from a cloud endpoint's own metrics (with --target).")
@click.option("--target", "latency_target", type=click.Choice(["sagemaker", "azureml", "vertex"]), default=None,
              help="--latency: the cloud of --endpoint.")
@click.option("--endpoint", default="churn", show_default=True, envvar="CHURNKIT_ENDPOINT",
              help="--latency: the endpoint name (or CHURNKIT_ENDPOINT).")
@click.option("--since", default="1h", show_default=True, help="--latency: how far back to read (30m, 1h, 2d).")
def monitor(reference, current, history, labels_path, label_column, id_column, id_columns, model_uri, metrics_url,
            probe_requests, drift_share, psi_warn, psi_act, max_auc_drop, small_sample, report_path, runs_dir, as_json,
            latency, latency_target, endpoint, since):
    """Data drift, prediction drift, performance once labels arrive, latency; exit 0 even when drift is found.

    With --latency --target T --endpoint E: where a cloud endpoint's time goes, the likely cause and the change to make.
    """
    if latency:
        from churnkit.monitor.cloud import cloud_latency, summary

        if not latency_target:
            raise click.UsageError("--latency needs --target sagemaker|azureml|vertex (for a churnkit server: --metrics-url)")
        result = cloud_latency(latency_target, endpoint, since, config=_config(runs_dir))
        if as_json:
            return emit_json({k: v for k, v in result.items() if k != "series"}
                             | {"series": {n: s.to_dict() for n, s in result["series"].items()}})
        return click.echo(summary(result))
    if not (reference and current):
        raise click.UsageError("give --reference FILE and --current FILE|DIR (or --latency --target T --endpoint E)")
    from churnkit.monitor import monitor_files

    report = monitor_files(reference, current, labels_path=labels_path, history=history, model_uri=model_uri,
                           metrics_url=metrics_url, probe_requests=probe_requests, config=_config(runs_dir),
                           label_column=label_column, id_column=id_column, id_columns=id_columns,
                           drift_share=drift_share, psi_warn=psi_warn, psi_act=psi_act, max_auc_drop=max_auc_drop,
                           small_sample=small_sample)
    if report_path:
        path = report.write_html(report_path)
        click.echo(f"report written to {path}", err=as_json)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(report.table().to_string(float_format=lambda v: f"{v:.4g}"))
        click.echo(report.summary())


# ---- batch scoring -----------------------------------------------------------------------------

@main.command()
@click.option("--model", "model_uri", required=True, metavar="URI",
              help="models:/churn@champion, models:/churn/3, runs:/ID/model, a model folder, or s3:// gs:// ... .")
@click.option("--input", "input_uri", required=True, metavar="PATH",
              help="Parquet or CSV file, or a folder of them; local, s3://, gs:// or abfs://.")
@click.option("--output", required=True, metavar="DIR", help="Score output folder (new, empty, or an earlier output).")
@click.option("--id-column", default="customerID", show_default=True, help="The customer id column.")
@click.option("--reasons", type=click.IntRange(min=0), default=3, show_default=True, help="Reasons per row (0: none).")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="local: processes on this machine; spark: the active Spark session (spark-submit, local[*]).")
@click.option("--month", default="", metavar="YYYY-MM", help="score_month partition (default: this UTC month).")
@click.option("--passthrough", multiple=True, metavar="COLUMN", help="Input column copied to the output (repeatable).")
@click.option("--duplicates", type=click.Choice(["refuse", "keep"]), default="refuse", show_default=True,
              help="A repeated id: refuse the run, or keep the rows with duplicate_id set.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local engine processes (default: every core).")
@click.option("--target", "batch_target", type=click.Choice(["sagemaker", "azureml", "vertex"]), default=None,
              help="Score on the cloud's batch service (Batch Transform, batch endpoints, batch prediction) instead of "
                   "--engine; --plan prints its exact requests.")
@click.option("--endpoint", default="churn", show_default=True, help="With --target: the endpoint whose settings, "
              "model and batch endpoint (Azure ML: <endpoint>-batch) the job uses.")
@click.option("--batch-option", "batch_options", multiple=True, metavar="NAME=VALUE",
              help="With --target: a setting of the service's job, e.g. max_payload_mb=6, max_concurrent=4, "
                   "instance_type=ml.m5.xlarge (SageMaker); instance_count=2, mini_batch_size=2, compute=NAME "
                   "(Azure ML); machine_type=n1-standard-4, max_replica_count=4, batch_size=64 (Vertex AI).")
@click.option("--plan", is_flag=True, help="Print what would be scored and written as JSON; score nothing.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Audit trail folder (default runs/ or CHURNKIT_RUNS_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
def score(model_uri, input_uri, output, id_column, reasons, engine, month, passthrough, duplicates, workers, batch_target,
          endpoint, batch_options, plan, runs_dir, as_json):
    """Score the whole customer base: ranked, explained, partitioned Parquet under --output."""
    from churnkit.batch.run import plan_score, score_base

    config = _config(runs_dir)
    if batch_target:
        from churnkit.batch.cloudrun import parse_options, plan_cloud
        from churnkit.batch.run import score_on_target

        if passthrough:
            raise click.UsageError("--passthrough is not available with --target: the services return ids and scores")
        options = parse_options(batch_target, batch_options)
        if plan:
            return emit_json(plan_cloud(batch_target, model_uri, input_uri, id_column=id_column, endpoint=endpoint,
                                        config=config, **options))
        result = score_on_target(batch_target, model_uri, input_uri, output, id_column=id_column, reasons=reasons,
                                 month=month, duplicates=duplicates, endpoint=endpoint, config=config, **options)
    elif plan:
        return emit_json(plan_score(model_uri, input_uri, output, id_column=id_column, reasons=reasons, engine=engine,
                                    month=month, passthrough=passthrough, config=config))
    else:
        result = score_base(model_uri, input_uri, output, id_column=id_column, reasons=reasons, engine=engine,
                            month=month, passthrough=passthrough, duplicates=duplicates, workers=workers, config=config)
    if as_json:
        return emit_json(result.to_dict())
    for line in result.lines():
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
