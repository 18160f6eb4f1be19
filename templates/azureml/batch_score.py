"""Azure ML batch deployment scoring script: init() loads the model once, run(mini_batch) scores files of rows.

Deployed by ``churnkit score --target azureml`` (churnkit.batch.azureml) as the code of a
``ModelBatchDeployment`` with ``output_action: append_row`` and ``output_file_name: predictions.csv``.
Azure ML calls ``run`` with a list of file paths (a mini-batch of the input folder) and appends what
it returns to ``predictions.csv`` (https://learn.microsoft.com/azure/machine-learning/how-to-batch-scoring-script).

- Input files: CSV with a header; the **first column is the customer id** (the kit stages them so),
  the others the model's input columns (extra ID/label columns of the schema are ignored). Empty cells
  are missing values and are imputed as in training, as the local engine does.
- Output: one line per input row, a compact JSON object, so ids with commas or spaces survive:
  ``{"id": ..., "churn_probability": p, "churn": bool}`` or ``{"id": ..., "error": "<reason>"}`` for a
  row the model cannot score (a number that is not a number, an unknown column). A bad row never
  fails its mini-batch.
- The model is the churnkit model folder at or below ``AZUREML_MODEL_DIR``, loaded only if its
  manifest's sha256 matches (and ``CHURNKIT_MODEL_SHA256`` when set), as ``score.py`` does.
"""

import csv
import json
import logging
import os

from churnkit.serve.batch import lenient_validator, score_records
from churnkit.serve.loading import load_model_folder
from churnkit.serve.scorer import Scorer

log = logging.getLogger("churnkit.batch")
_state = {}


def init():
    """Load and verify the model under AZUREML_MODEL_DIR (once per scoring process)."""
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set; Azure ML sets it to the registered model's folder")
    loaded = load_model_folder(model_dir)
    scorer = Scorer.from_loaded(loaded)
    _state.update(loaded=loaded, scorer=scorer, validator=lenient_validator(scorer.validator))
    log.info("churnkit batch_score.py scoring with %s v%s (%s)", loaded.name, loaded.version, scorer.engine)


def score_file(path: str) -> list[str]:
    """The output lines of one input file (one per data row, in order)."""
    scorer, validator = _state["scorer"], _state["validator"]
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, strict=True)
        header = next(reader, None)
        if not header:
            return []
        ids, rows, errors = [], [], {}
        for i, fields in enumerate(reader):
            if not fields:
                continue
            ids.append(fields[0])
            if len(fields) != len(header):
                errors[len(rows)] = f"expected {len(header)} fields as in the header, got {len(fields)}"
                rows.append(None)
                continue
            rows.append({name: value for name, value in zip(header[1:], fields[1:])})
    scores = score_records(rows, errors, scorer, validator)
    t = scorer.threshold
    out = []
    for i, ident in enumerate(ids):
        obj = ({"id": ident, "churn_probability": scores[i], "churn": scores[i] >= t} if i in scores
               else {"id": ident, "error": " ".join(errors[i].split())})
        out.append(json.dumps(obj, separators=(",", ":")))
    return out


def run(mini_batch):
    """Score every file of the mini-batch; returns the output lines (Azure ML appends them to predictions.csv)."""
    lines = []
    for path in mini_batch:
        lines += score_file(path)
    return lines
