"""The score output: exact ranks, row accounting, errors/, atomic partition replacement, foreign folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnkit.batch import output
from churnkit.batch.output import ScoreMeta, ScoreWriter, ntile, output_columns, write_scores
from churnkit.exceptions import ChurnkitError, ScoreOutputError

ID = "customerID"


def meta(**kw) -> ScoreMeta:
    return ScoreMeta(**({"model_name": "churn", "model_version": "3", "threshold": 0.5, "run_id": "r1",
                         "id_column": ID, "score_month": "2026-12", "reasons": 0} | kw))


def scored(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)  # rounded: many ties, broken by the id
    return pd.DataFrame({ID: [f"C{i:05d}" for i in rng.permutation(n)], "churn_probability": p})


def read(root) -> pd.DataFrame:
    return output.read_scores(root).to_pandas()


def test_ranks_are_exact_over_the_whole_partition_and_ties_break_by_id(tmp_path):
    frame = scored(1003)
    with ScoreWriter(tmp_path / "out", meta()) as w:
        for start in range(0, len(frame), 150):  # staged in pieces, ranked as one
            part = frame.iloc[start:start + 150]
            w.add(part)
        summary = w.commit(len(frame))
    got = read(tmp_path / "out").sort_values("rank")
    want = frame.sort_values(["churn_probability", ID], ascending=[False, True])
    assert got[ID].tolist() == want[ID].tolist()
    assert got["rank"].tolist() == list(range(1, 1004))
    assert got["percentile"].iloc[0] == 100.0 and got["percentile"].iloc[-1] == 0.0
    # ntile(10) of 1003 rows: the first 3 deciles hold 101 rows, the other 7 hold 100
    assert got.groupby("decile").size().tolist() == [101] * 3 + [100] * 7
    assert (got["churn"] == (got["churn_probability"] >= 0.5)).all()
    assert list(got.columns[:6]) == output_columns(ID, 0)[:6]
    assert {"model_name", "run_id", "scored_at", "score_month", "model_version"} <= set(got.columns)
    assert summary.rows_in == summary.rows_scored == 1003 and summary.rows_refused == 0
    assert [d["rows"] for d in summary.deciles] == [101] * 3 + [100] * 7
    on_disk = json.loads((tmp_path / "out" / meta().partition / output.PARTITION_FILE).read_text())
    assert on_disk["rows_in"] == 1003


def test_ntile_matches_the_sql_definition():
    assert ntile(np.arange(1, 8), 7).tolist() == [1, 2, 3, 4, 5, 6, 7]  # fewer rows than tiles: one each
    assert ntile(np.arange(1, 24), 23).tolist() == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 2 + [5] * 2 + [6] * 2 \
        + [7] * 2 + [8] * 2 + [9] * 2 + [10] * 2


def test_a_rerun_replaces_the_partition_and_its_errors_and_leaves_other_months(tmp_path):
    out = tmp_path / "out"
    write_scores(out, scored(50), meta(score_month="2026-11"))
    errors = pd.DataFrame({ID: ["X1", None], "input_row": [3, 9], "reason": ["column 'tenure': 'abc'", "id missing"]})
    write_scores(out, scored(40), meta(), errors=errors, rows_in=42)
    summary = write_scores(out, scored(30, seed=1), meta())  # the rerun: no errors this time
    table = read(out)
    by_month = table.groupby("score_month").size().to_dict()
    assert by_month == {"2026-11": 50, "2026-12": 30}
    assert summary.replaced and summary.rows_in == 30
    assert not list((out / "errors" / meta().partition).glob("*.parquet"))  # the old refused rows went with it
    assert not [p for p in out.iterdir() if p.name.startswith((".staging-", ".trash-"))]


def test_refused_rows_are_kept_with_the_id_and_reason_and_counted(tmp_path):
    out = tmp_path / "out"
    errors = pd.DataFrame({ID: ["X1", None], "input_row": [3, 9], "reason": ["column 'tenure': 'abc'", "id missing"]})
    summary = write_scores(out, scored(40), meta(), errors=errors, rows_in=42)
    got = output.read_scores(out, errors=True).to_pydict()
    assert got[ID] == ["X1", None] and got["input_row"] == [3, 9]
    assert got["reason"][0] == "column 'tenure': 'abc'" and got["score_month"] == ["2026-12"] * 2
    assert summary.rows_refused == 2 and "42 rows in = 40 scored + 2 refused" in summary.line()


def test_accounting_that_does_not_add_up_replaces_nothing(tmp_path):
    out = tmp_path / "out"
    write_scores(out, scored(20), meta())
    with pytest.raises(ScoreOutputError, match="21 rows in but 20 scored"):
        write_scores(out, scored(20, seed=5), meta(), rows_in=21)
    assert len(read(out)) == 20 and read(out)[ID].tolist() != []
    assert not list(out.glob(".staging-*"))


def test_a_folder_that_is_not_a_score_output_is_refused_untouched(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "q3.xlsx").write_text("precious")
    with pytest.raises(ScoreOutputError, match="is not a churnkit score output") as err:
        write_scores(folder, scored(5), meta())
    assert isinstance(err.value, ChurnkitError)
    assert sorted(p.name for p in folder.iterdir()) == ["q3.xlsx"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScoreOutputError, match="is a file"):
        write_scores(tmp_path / "file", scored(5), meta())


@pytest.mark.parametrize("bad", [{"score_month": "2026-13"}, {"score_month": "../x"}, {"model_version": "../3"},
                                 {"id_column": ""}])
def test_partition_names_are_checked(bad):
    with pytest.raises(ScoreOutputError):
        meta(**bad)


def test_a_swap_killed_half_way_is_finished_by_the_next_run(tmp_path):
    """The process dies after moving the old partition aside and before moving the new one in."""
    out = tmp_path / "out"
    write_scores(out, scored(10), meta())
    script = textwrap.dedent(f"""
        import os, sys
        from churnkit.batch import output
        from churnkit.batch.output import ScoreMeta, write_scores
        import pandas as pd
        real = os.replace
        calls = []
        def dying(src, dst):
            real(src, dst)
            calls.append(dst)
            if os.path.basename(dst) == "old0":  # the old partition is in the trash: die before the new one moves in
                os._exit(9)
        output.os.replace = dying
        m = ScoreMeta("churn", "3", 0.5, "r2", id_column={ID!r}, score_month="2026-12", reasons=0)
        write_scores({str(out)!r}, pd.DataFrame({{{ID!r}: ["A", "B"], "churn_probability": [0.1, 0.9]}}), m)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 9
    assert not (out / meta().partition).exists()  # the crash window: partition moved aside
    assert list(out.glob(".trash-*"))
    with output.output_lock(out):
        done = output.recover(out)
    assert any("completed the swap" in d for d in done)
    assert sorted(read(out)[ID]) == ["A", "B"]  # the new partition had been fully written: rolled forward
    assert not list(out.glob(".trash-*")) and not list(out.glob(".staging-*"))


def test_staging_of_a_live_writer_survives_another_commit(tmp_path):
    out = tmp_path / "out"
    with ScoreWriter(out, meta(score_month="2026-10")) as slow:
        slow.add(scored(5))
        write_scores(out, scored(7), meta())  # commits and recovers while ``slow`` is still staging
        assert slow.stage.is_dir()
        slow.commit(5)
    assert read(out).groupby("score_month").size().to_dict() == {"2026-10": 5, "2026-12": 7}


def test_scored_rows_missing_a_column_are_refused_with_the_list(tmp_path):
    with ScoreWriter(tmp_path / "out", meta(reasons=1)) as w:
        with pytest.raises(ScoreOutputError, match="reason_1"):
            w.add(pa.table({ID: ["a"], "churn_probability": [0.2]}))
    assert not list((tmp_path / "out").glob(".staging-*"))


def test_repeated_ids_are_refused_by_default_or_kept_with_a_flag(tmp_path):
    out = tmp_path / "out"
    write_scores(out, scored(10), meta())
    twice = pd.DataFrame({ID: ["A", "B", "A"], "churn_probability": [0.2, 0.4, 0.9]})
    with pytest.raises(ChurnkitError, match=r"1 id\(s\) appear on more than one input row, e.g. \['A'\]"):
        write_scores(out, twice, meta())
    assert len(read(out)) == 10 and not list(out.glob(".staging-*"))  # the previous partition is intact
    write_scores(out, twice, meta(), duplicates="keep")
    got = read(out).sort_values("rank")
    assert got[ID].tolist() == ["A", "B", "A"] and got["duplicate_id"].tolist() == [True, False, True]
    assert list(got.columns[:7]) == output_columns(ID, 0, flag_duplicates=True)[:7]
