"""Loading real-looking churn tables: coercion, roles, labels, and every bad-input error."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from churnkit.data import (
    Schema,
    load_table,
    map_label,
    prepare_features,
    read_table,
    synth_month,
    write_table,
)
from churnkit.exceptions import DataError, LabelError


def telco_frame(n: int = 60, label=("Yes", "No")) -> pd.DataFrame:
    """A frame shaped like the IBM Telco export, messy the way the real file is."""
    rng = np.random.default_rng(1)
    tenure = rng.integers(0, 72, n)
    monthly = np.round(rng.uniform(18, 118, n), 2)
    total = [" " if t == 0 else f"{m * t:.2f}" for t, m in zip(tenure, monthly)]
    return pd.DataFrame(
        {
            "customerID": [f"{1000 + i}-ABCDE" for i in range(n)],
            "gender": rng.choice(["Female", "Male"], n),
            "SeniorCitizen": rng.integers(0, 2, n),
            "tenure": tenure.astype(str),
            "Contract": rng.choice(["Month-to-month", "One year", "Two year"], n),
            "PaymentMethod": rng.choice(["Electronic check", "Mailed check", None], n),
            "MonthlyCharges": monthly.astype(str),
            "TotalCharges": total,
            "Churn": [label[i % 2] for i in range(n)],
        }
    )


def test_telco_like_csv_is_typed(tmp_path):
    frame = telco_frame()
    frame.loc[0, "tenure"] = "0"
    frame.loc[0, "TotalCharges"] = " "
    path = tmp_path / "telco.csv"
    frame.to_csv(path, index=False)

    ds = load_table(path, label_column="Churn")

    kinds = {c.name: c.kind for c in ds.schema.columns}
    assert kinds == {
        "gender": "categorical",
        "SeniorCitizen": "numeric",
        "tenure": "numeric",
        "Contract": "categorical",
        "PaymentMethod": "categorical",
        "MonthlyCharges": "numeric",
        "TotalCharges": "numeric",
    }
    assert ds.schema.dropped == ["customerID"]  # unique per row and not a number
    total = ds.schema.column("TotalCharges")
    assert total.numeric_text and total.nullable  # "29.85"-style text with blank cells
    assert np.isnan(ds.X.loc[0, "TotalCharges"])
    assert ds.X["MonthlyCharges"].dtype == np.float64
    assert ds.schema.column("PaymentMethod").nullable
    assert set(ds.schema.column("Contract").categories) == {"Month-to-month", "One year", "Two year"}
    assert ds.y.tolist()[:4] == [1, 0, 1, 0]
    assert len(ds.sha256) == 64 and ds.rows == 60


def test_parquet_and_explicit_id_columns(tmp_path):
    frame = telco_frame()
    path = write_table(frame, tmp_path / "t.parquet")
    ds = load_table(path, "Churn", id_columns=["gender"])
    assert "gender" in ds.schema.dropped and "gender" not in ds.X.columns


@pytest.mark.parametrize(
    "spellings",
    [("Yes", "No"), ("yes", "no"), ("True", "False"), ("1", "0"), (True, False), (1, 0), (" YES ", "no ")],
)
def test_label_spellings(spellings):
    y = map_label(pd.Series([spellings[0], spellings[1], spellings[1]]), "churn")
    assert y.tolist() == [1, 0, 0]


def test_unknown_label_spelling_names_the_values():
    with pytest.raises(LabelError) as err:
        map_label(pd.Series(["churned", "stayed", "stayed"]), "status")
    assert "'stayed'" in str(err.value) and "'status'" in str(err.value)


def test_label_with_one_class():
    with pytest.raises(LabelError, match="one class"):
        load_table(telco_frame(label=("No", "No")), "Churn")


def test_missing_label_column_lists_columns():
    with pytest.raises(LabelError) as err:
        load_table(telco_frame(), "churn")
    msg = str(err.value)
    assert "'churn'" in msg and "did you mean 'Churn'" in msg and "'TotalCharges'" in msg


def test_missing_labels_are_an_error():
    frame = telco_frame()
    frame.loc[3, "Churn"] = None
    with pytest.raises(LabelError, match="1 missing"):
        load_table(frame, "Churn")


def test_all_null_column_is_named():
    frame = telco_frame()
    frame["Notes"] = None
    with pytest.raises(DataError, match="'Notes'"):
        load_table(frame, "Churn")


def test_unknown_id_column():
    with pytest.raises(DataError, match="'nope'"):
        load_table(telco_frame(), "Churn", id_columns=["nope"])


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="could not be parsed"):
        read_table(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b,churn\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(empty)
    odd = tmp_path / "table.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="'.xlsx'"):
        read_table(odd)


def test_prepare_features_types_new_rows_like_training():
    ds = load_table(telco_frame(), "Churn")
    raw = pd.DataFrame([{"gender": "Male", "SeniorCitizen": "1", "tenure": " 12 ", "Contract": "Three year",
                         "PaymentMethod": "", "MonthlyCharges": 50, "TotalCharges": "600.5", "extra": 1}])
    X = prepare_features(raw, ds.schema)
    assert list(X.columns) == ds.schema.names
    assert X.loc[0, "tenure"] == 12.0 and X.loc[0, "TotalCharges"] == 600.5
    assert pd.isna(X.loc[0, "PaymentMethod"])  # blank text is missing, for the imputer
    assert X.loc[0, "Contract"] == "Three year"  # unseen category passes through; the encoder ignores it
    with pytest.raises(DataError, match="'tenure'"):
        prepare_features(raw.drop(columns=["tenure"]), ds.schema)


def test_missing_categories_are_nan_in_every_spelling():
    from churnkit.data import to_categorical

    col = pd.Series([" a ", None, np.nan, "", "  ", pd.NA, 1], dtype=object)
    out = to_categorical(col).tolist()
    assert out[0] == "a" and out[-1] == "1" and all(pd.isna(v) and v is not pd.NA for v in out[1:-1])
    assert to_categorical(pd.Series(["x", None], dtype="string")).isna().tolist() == [False, True]


def test_schema_round_trip():
    ds = load_table("", rows=300)
    again = Schema.from_dict(ds.schema.to_dict())
    assert again == ds.schema


def test_synthetic_months_are_reproducible_and_drift():
    a = synth_month(rows=2000, month=1, seed=3)
    b = synth_month(rows=2000, month=1, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not synth_month(rows=2000, month=2, seed=3).equals(a)
    assert a["customer_id"].is_unique
    assert (a["total_charges"] == " ").any()  # blanks for new customers, as in the Telco export
    cov = synth_month(rows=2000, month=1, seed=3, drift="covariate")
    assert cov["tenure"].mean() < 0.8 * a["tenure"].mean()
    assert cov["monthly_charges"].mean() > a["monthly_charges"].mean() + 5
    new = synth_month(rows=2000, month=1, seed=3, drift="new_category")
    assert "Digital wallet" in set(new["payment_method"]) and "Digital wallet" not in set(a["payment_method"])
    with pytest.raises(DataError, match="'sideways'"):
        synth_month(rows=10, drift="sideways")


def bank_export(n: int = 2000) -> pd.DataFrame:
    """A table shaped like the common bank-churn export (RowNumber, CustomerId, Surname, ..., Exited)."""
    rng = np.random.default_rng(7)
    surnames = [f"Surname{i}" for i in range(int(n * 0.85))]  # many, but some shared: not unique per row
    age = rng.integers(18, 92, n)
    active = rng.integers(0, 2, n)
    exited = (rng.random(n) < 1 / (1 + np.exp(-(0.07 * (age - 45) - 0.9 * active)))).astype(int)
    return pd.DataFrame({
        "RowNumber": np.arange(1, n + 1),
        "CustomerId": rng.permutation(np.arange(15565701, 15565701 + 250_000))[:n],
        "Surname": rng.choice(surnames, n),
        "CreditScore": rng.integers(350, 851, n),
        "Geography": rng.choice(["France", "Spain", "Germany"], n),
        "Gender": rng.choice(["Female", "Male"], n),
        "Age": age,
        "Tenure": rng.integers(0, 11, n),
        "Balance": np.round(np.where(rng.random(n) < 0.36, 0.0, rng.normal(119_000, 30_000, n)), 2),
        "NumOfProducts": rng.integers(1, 5, n),
        "HasCrCard": rng.integers(0, 2, n),
        "IsActiveMember": active,
        "EstimatedSalary": np.round(rng.uniform(11.58, 199_992.48, n), 2),
        "Exited": exited,
    })


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_bank_export_roles_ids_and_high_cardinality(tmp_path, suffix):
    from churnkit.data import MAX_CATEGORIES, describe_dataset

    frame = bank_export()
    assert frame["Surname"].nunique() > MAX_CATEGORIES and frame["Surname"].nunique() < 0.9 * len(frame)
    ds = load_table(write_table(frame, tmp_path / f"bank{suffix}"), "Exited")

    # Integers unique per row are identifiers, surnames are too many categories: all dropped, each with a note.
    assert ds.schema.dropped == ["RowNumber", "CustomerId", "Surname"]
    assert ds.schema.notes["RowNumber"] == "ID-like: integers unique per row"
    assert ds.schema.notes["Surname"].startswith("too many categories: ")
    assert list(ds.X.columns) == ["CreditScore", "Geography", "Gender", "Age", "Tenure", "Balance", "NumOfProducts",
                                  "HasCrCard", "IsActiveMember", "EstimatedSalary"]
    # Numbers written as numbers are "numeric", in a CSV as much as in Parquet.
    assert not any(c.numeric_text for c in ds.schema.columns)

    table = describe_dataset(ds)
    assert table.loc["Age", "kind"] == "numeric" and table.loc["Geography", "kind"] == "categorical"
    assert table.loc["CustomerId", "kind"] == "dropped (ID-like)"
    assert table.loc["Surname", "kind"] == "dropped (too many categories)"
    salary = table.loc["EstimatedSalary", "values"]
    assert re.fullmatch(r"[\d,.]+ \.\. 1\d\d,\d{3}\.\d\d", salary) and "e+" not in table.to_string()
    summary = table.attrs["summary"]
    assert "note: dropped 'Surname', too many categories:" in summary and "keep_columns=['Surname']" in summary
    assert "note: dropped 'CustomerId', ID-like: integers unique per row" in summary


def test_keep_columns_keeps_a_flagged_column_and_says_so(tmp_path):
    from churnkit.data import describe_dataset

    ds = load_table(bank_export(), "Exited", keep_columns=["Surname"])
    assert "Surname" not in ds.schema.dropped and ds.schema.column("Surname").kind == "categorical"
    assert ds.schema.dropped == ["RowNumber", "CustomerId"]
    table = describe_dataset(ds)
    assert table.loc["Surname", "kind"] == "categorical (kept by keep_columns)"
    assert "note: kept 'Surname' as keep_columns asks, although too many categories" in table.attrs["summary"]
    with pytest.raises(DataError, match=r"keep_columns \['Nope'\] are not in the table"):
        load_table(bank_export(), "Exited", keep_columns=["Nope"])


def test_near_unique_text_is_id_like_and_text_needing_cleanup_is_text_in_file(tmp_path):
    frame = telco_frame(200)
    frame["email"] = [f"user{i % 190}@example.com" for i in range(200)]  # 190 distinct in 200 rows
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    ds = load_table(path, "Churn")
    assert "email" in ds.schema.dropped and ds.schema.notes["email"].startswith("ID-like: text with 190 distinct")
    kinds = {c.name: c.numeric_text for c in ds.schema.columns if c.kind == "numeric"}
    assert kinds == {"SeniorCitizen": False, "tenure": False, "MonthlyCharges": False, "TotalCharges": True}
