"""The registry under concurrent pipelines: real processes racing on the embedded sqlite store and on a
real ``mlflow server`` backed by PostgreSQL; the pipeline lock and the version passed by number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_support import CHURNKIT, REPO, clean_env

PYTHON = str(Path(sys.executable))
ROUNDS = 3

LOG_CANDIDATES = """
import json, sys
import mlflow
from churnkit import registry
from churnkit.config import load_config
from churnkit.data import load_table
from churnkit.model import split_holdout, train_model
config = load_config(sys.argv[1])
registry.setup_tracking(config)
ids = []
for seed in (0, 1):
    ds = load_table('', rows=600, seed=seed)
    split = split_holdout(ds, 0.25, seed)
    with mlflow.start_run():
        ids.append(registry.log_candidate(train_model(split, ds.schema, 'logreg', seed), ds, split,
                                          model='logreg', seed=seed))
print(json.dumps(ids))
"""

RACER = """
import json, sys, time
from pathlib import Path
from churnkit import registry
from churnkit.config import load_config
from churnkit.evaluate import gate
runs, run_id, me, sync, rounds = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
config = load_config(runs)
candidate = registry.load_candidate(run_id, config)
for r in range(rounds):
    (sync / f"ready-{r}-{me}").touch()
    while not (sync / f"go-{r}").exists():
        time.sleep(0.002)
    try:
        out = {"round": r, "version": registry.register_candidate(candidate, gate(0.99, None, 0.5, -1.0),
                                                                   model_name=f"race-{r}", config=config)}
    except Exception as exc:
        out = {"round": r, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


def _race(runs: str, env: dict, tmp_path: Path) -> None:
    """Two processes register a new model name at the same instant, ``ROUNDS`` times."""
    made = subprocess.run([PYTHON, "-c", LOG_CANDIDATES, runs], env=env, capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    run_ids = json.loads(made.stdout.strip().splitlines()[-1])
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([PYTHON, "-c", RACER, runs, rid, str(i), str(sync), str(ROUNDS)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
             for i, rid in enumerate(run_ids)]
    try:
        for r in range(ROUNDS):
            deadline = time.monotonic() + 240
            while len(list(sync.glob(f"ready-{r}-*"))) < len(procs):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                    [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
                time.sleep(0.01)
            (sync / f"go-{r}").touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 2 * ROUNDS, [err[-2000:] for _, err in outputs]
    assert not [r for r in results if "error" in r], results

    from mlflow import MlflowClient

    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs) / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for r in range(ROUNDS):
        model = client.get_registered_model(f"race-{r}")  # it exists: no undo deleted it
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = 'race-{r}'"))
        assert versions == [1, 2]
        assert sorted(str(x["version"]) for x in results if x["round"] == r) == ["1", "2"]
        assert {a: str(v) for a, v in model.aliases.items()} == {"champion": "1", "challenger": "2"}, (r, model.aliases)


def test_racing_first_registrations_on_the_embedded_store(tmp_path):
    _race(str(tmp_path / "runs"), clean_env(), tmp_path)


@pytest.mark.probe
def test_racing_first_registrations_on_a_postgresql_server(postgres_mlflow, tmp_path):
    _race(str(tmp_path / "runs"), clean_env(MLFLOW_TRACKING_URI=postgres_mlflow.url), tmp_path)


@pytest.mark.probe
def test_concurrent_pipeline_on_one_model_is_refused_naming_the_holder(tmp_path):
    """Pipeline A holds the model's lock; B on the same model is refused at once with A's pid and command."""
    from conftest import free_port

    runs = tmp_path / "runs"
    env = clean_env()
    port = str(free_port())
    a = subprocess.Popen([CHURNKIT, "pipeline", "--runs-dir", str(runs), "-p", "port", port, "-p", "seed", "0"],
                         env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = runs / ".locks" / "pipeline-churn.lock"
    try:
        deadline = time.monotonic() + 240
        while not (lock.exists() and lock.read_text().strip()):
            assert time.monotonic() < deadline and a.poll() is None, a.communicate()
            time.sleep(0.1)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == a.pid and "pipeline" in holder["command"] and holder["host"] and holder["since"]
        b = subprocess.run([CHURNKIT, "pipeline", "--runs-dir", str(runs), "-p", "port", port], env=env,
                           cwd=str(REPO), capture_output=True, text=True, timeout=240)
        assert b.returncode == 1, b.stderr
        assert "PipelineLockedError" in b.stderr and f"pid {a.pid} on " in b.stderr and "--wait" in b.stderr
        assert "Traceback" not in b.stderr
        out, err = a.communicate(timeout=600)
        assert a.returncode == 0, err[-3000:]
        assert "registered churn v1 as champion" in out and "models:/churn/1 on local" in out, out
        assert not lock.read_text().strip()  # released: the next pipeline may run
    finally:
        if a.poll() is None:
            a.kill()
        subprocess.run([CHURNKIT, "endpoint", "stop", "--target", "local", "--runs-dir", str(runs)], env=env,
                       cwd=str(REPO), capture_output=True, timeout=120)


def test_deploy_and_rollout_take_the_version_by_number(tmp_path):
    """03-deploy deploys model_version even when the challenger alias points elsewhere; 04-rollout refuses to
    roll out another pipeline's challenger."""
    from deploy_support import registry_store

    runs = registry_store(tmp_path)  # churn v1 champion, v2 challenger
    env = clean_env()
    plan = subprocess.run([CHURNKIT, "run", "03-deploy", "--runs-dir", str(runs), "-p", "model_version", "1",
                           "-p", "plan_only", "true"], env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=300)
    assert plan.returncode == 0, plan.stderr
    cells = json.loads(Path(plan.stdout.strip().splitlines()[-1]).read_text())["cells"]
    printed = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert "models:/churn/1 → local" in printed and "models:/churn/2" not in printed, printed
    roll = subprocess.run([CHURNKIT, "run", "04-rollout", "--runs-dir", str(runs), "-p", "model_version", "1",
                           "-p", "replay_rate", "0"], env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=300)
    assert roll.returncode == 1
    assert "alias 'challenger' points at v2, not at v1" in roll.stderr, roll.stderr
    assert os.path.exists(runs / "mlflow.db")
