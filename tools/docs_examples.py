"""Regenerate the console examples of the documentation site from real runs (``make docs-examples``).

Each example is one or more commands run here, in a fresh runs folder, with their output written to
``docs/examples/NAME.txt`` as a terminal shows it (``$ command`` then what it printed). The pages include
these files (``--8<-- "examples/NAME.txt"``) and show no other console output, so what the site shows is what
the code prints today. Temporary paths are replaced by the ``runs/`` a user would see.

    .venv/bin/python tools/docs_examples.py [NAME ...]
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "examples"
BIN = Path(sys.executable).parent
PORT = "18431"

#: name -> the commands it shows, in order; ``{runs}`` is the example's runs folder, ``{data}`` a scratch folder.
EXAMPLES: dict[str, list[str]] = {
    "params": ["churnkit params 01-train"],
    "bad-input": ["churnkit run 01-train -p data_path /nonexist.csv", "churnkit run 01-train -p seeed 1"],
    "demo": [
        "churnkit pipeline --runs-dir {runs} -p month 1 -p port " + PORT,
        "churnkit pipeline --runs-dir {runs} -p month 2 -p port " + PORT,
        "churnkit pipeline --runs-dir {runs} -p month 3 -p drift concept -p port " + PORT,
        "churnkit data synth --month 4 --drift concept --charges-unit cents --out {data}/month-4-export.csv",
        "churnkit data synth --month 4 --drift concept --seed 1 --out {data}/month-4-traffic.csv",
        "churnkit pipeline --runs-dir {runs} -p data_path {data}/month-4-export.csv"
        " -p replay_path {data}/month-4-traffic.csv -p port " + PORT,
        "churnkit runs --runs-dir {runs}",
        "churnkit endpoint stop --target local --runs-dir {runs}",
    ],
    "monitor": [
        "churnkit data synth --rows 2000 --month 1 --seed 0 --out {data}/may.csv",
        "churnkit data synth --rows 2000 --month 2 --seed 1 --drift covariate --out {data}/june.csv",
        "churnkit monitor --reference {data}/may.csv --current {data}/june.csv",
    ],
    "lint-imports": ["lint-imports"],
}


def run_example(name: str, commands: list[str]) -> str:
    """The transcript of ``commands`` (stdout and stderr as a terminal interleaves them, exit codes noted)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs, data = Path(tmp) / "runs", Path(tmp) / "data"
        data.mkdir()
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "CHURNKIT_LOG_LEVEL", "CHURNKIT_RUNS_DIR")}
        env.update(CHURNKIT_RUNS_DIR=str(runs), MPLBACKEND="Agg", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        lines = []
        for command in commands:
            shown = command.format(runs="runs", data="data")
            args = shlex.split(command.format(runs=runs, data=data))
            done = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=900)
            lines.append(f"$ {shown}")
            lines += done.stdout.rstrip("\n").splitlines()
            if done.returncode:
                lines.append(f"[exit {done.returncode}]")
        text = "\n".join(lines) + "\n"
        for path, shown in ((str(runs), "runs"), (str(data), "data"), (tmp, "."), (str(ROOT) + "/", "")):
            text = text.replace(path, shown)
        return re.sub(r"/tmp/tmp[\w-]+", ".", text)


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - EXAMPLES.keys())
    if unknown:
        raise SystemExit(f"no example named {', '.join(unknown)}; available: {', '.join(EXAMPLES)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or EXAMPLES:
        (OUT / f"{name}.txt").write_text(run_example(name, EXAMPLES[name]))
        print(f"docs/examples/{name}.txt", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
