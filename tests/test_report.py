"""The train/test grid (paper Tab. 2/4): layout, missing cells, consistent renderings."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from featstore.trainers.report import MISSING, GridResult, GridTable, ReportError, grid_table

# AUC[train][test] for one feature on a 3x3 grid; AP = AUC - 0.05.
AUC = {
    "A": {"A": 1.00, "B": 0.60, "C": 0.70},
    "B": {"A": 0.55, "B": 0.95, "C": 0.65},
    "C": {"A": 0.80, "B": 0.50, "C": 0.90},
}


def results_3x3(feature: str = "clip") -> list[GridResult]:
    return [
        GridResult(feature, train, test, auc, round(auc - 0.05, 4), 100)
        for train, row in AUC.items()
        for test, auc in row.items()
    ]


def test_grid_layout_in_domain_ood_and_mean():
    table = grid_table(results_3x3())
    assert table.tests == ("A", "B", "C") and table.trains == ("A", "B", "C")
    assert [(r.feature, r.train) for r in table.rows] == [("clip", t) for t in "ABC"]
    expected_mean = {"A": (0.60 + 0.70) / 2, "B": (0.55 + 0.65) / 2, "C": (0.80 + 0.50) / 2}
    for row in table.rows:
        assert row.in_domain.auc == AUC[row.train][row.train]
        assert row.in_domain.ap == pytest.approx(AUC[row.train][row.train] - 0.05)
        assert [t for t, _ in row.out_of_domain] == [t for t in "ABC" if t != row.train]
        for test, cell in row.tests:
            assert cell.auc == AUC[row.train][test] and cell.n == 100
        assert row.mean_ood.auc == pytest.approx(expected_mean[row.train])
        assert row.mean_ood.ap == pytest.approx(expected_mean[row.train] - 0.05)


def test_orders_select_and_sort():
    table = grid_table(results_3x3(), train_order=["C", "A"], test_order=["C", "A", "B"])
    assert [r.train for r in table.rows] == ["C", "A"]
    row_c = table.rows[0]
    assert [t for t, _ in row_c.tests] == ["C", "A", "B"]
    assert row_c.in_domain.auc == 0.90
    # Mean OOD of train C is over A and B.
    assert row_c.mean_ood.auc == pytest.approx(0.65)


def test_missing_cells_do_not_crash():
    results = [r for r in results_3x3() if (r.train, r.test) != ("A", "B")]
    results += [GridResult("w2v2", "A", "A", 0.99, 0.98, 50)]  # only in-domain
    table = grid_table(results)
    row_clip_a = table.rows[0]
    assert row_clip_a.cell("B") is None
    assert row_clip_a.mean_ood.auc is None  # a mean over part of the OOD sets is not given
    assert table.rows[1].mean_ood.auc == pytest.approx(0.60)
    row_w2v2 = next(r for r in table.rows if r.feature == "w2v2")
    assert row_w2v2.train == "A" and row_w2v2.in_domain.auc == 0.99
    assert row_w2v2.cell("B") is None and row_w2v2.mean_ood.ap is None
    # Never-trained (feature, train) pairs are not padded with empty rows ...
    assert len(table.rows) == 4
    # ... unless both orders ask for them explicitly.
    padded = grid_table(results, features_order=["clip", "w2v2"], train_order=["A", "B", "C"])
    assert len(padded.rows) == 6
    assert padded.rows[-1].in_domain is None
    assert MISSING in padded.to_markdown()


def test_nan_metric_is_missing():
    table = grid_table([GridResult("clip", "A", "A", 0.9, float("nan"), 10)])
    assert table.rows[0].in_domain.ap is None
    assert json.loads(table.to_json())["rows"][0]["in_domain"]["ap"] is None


def parse_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line.strip().strip("|").split("|") for line in text.strip().splitlines()]
    header = [c.strip() for c in lines[0]]
    return header, [[c.strip() for c in line] for line in lines[2:]]


def test_markdown_csv_json_agree():
    results = [r for r in results_3x3() if (r.train, r.test) != ("B", "C")]
    results += results_3x3("videomae")
    table = grid_table(results)
    header, md_rows = parse_markdown(table.to_markdown())
    csv_rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    payload = json.loads(table.to_json())

    assert header[:4] == ["feature", "train", "in-domain AUC", "in-domain AP"]
    assert header[-2:] == ["mean OOD AUC", "mean OOD AP"]
    assert header[4:6] == ["A AUC", "A AP"]
    assert len(md_rows) == len(csv_rows) == len(payload["rows"]) == len(table.rows) == 6
    columns = [f"{g}_{m}" for g, m in table.columns()]
    assert list(csv_rows[0]) == ["feature", "train", *columns]

    for md, row_csv, row_json, row in zip(
        md_rows, csv_rows, payload["rows"], table.rows, strict=True
    ):
        assert md[:2] == [row.feature, row.train] == [row_csv["feature"], row_csv["train"]]
        assert row_json["feature"] == row.feature and row_json["train"] == row.train
        for k, name in enumerate(columns):
            group, metric = name.rsplit("_", 1)
            from_json = (
                row_json[group] if group in ("in_domain", "mean_ood") else row_json["tests"][group]
            )
            value = None if from_json is None else from_json[metric]
            if value is None:
                assert md[2 + k] == MISSING and row_csv[name] == ""
            else:
                assert float(row_csv[name]) == value  # full precision in both
                assert md[2 + k] == f"{100 * value:.1f}"

    row_b = payload["rows"][1]
    assert row_b["tests"]["C"] is None and row_b["mean_ood"] == {"auc": None, "ap": None, "n": None}
    assert row_b["out_of_domain"] == ["A", "C"]
    assert payload["tests"] == ["A", "B", "C"]


def test_markdown_values_like_the_paper_and_bold_best():
    results = results_3x3() + [
        GridResult("w2v2", "A", t, a, a, 10) for t, a in [("A", 0.9), ("B", 0.6), ("C", 0.8)]
    ]
    table = grid_table(results, train_order=["A"])
    _, rows = parse_markdown(table.to_markdown(bold_best=True))
    clip, w2v2 = rows
    assert clip[2] == "**100.0**" and w2v2[2] == "90.0"  # in-domain AUC
    assert clip[6] == "**60.0**" and w2v2[6] == "**60.0**"  # tie on B AUC: both bold
    assert w2v2[-2] == "**70.0**" and clip[-2] == "65.0"  # mean OOD AUC
    assert "**" not in table.to_markdown()


def test_write_files(tmp_path):
    table = grid_table(results_3x3())
    paths = table.write(tmp_path / "out", stem="auc_grid")
    assert {k: p.name for k, p in paths.items()} == {
        "md": "auc_grid.md",
        "csv": "auc_grid.csv",
        "json": "auc_grid.json",
    }
    assert paths["md"].read_text(encoding="utf-8") == table.to_markdown()
    assert paths["csv"].read_text(encoding="utf-8") == table.to_csv()
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["trains"] == ["A", "B", "C"]
    with pytest.raises(ReportError, match="stem"):
        table.write(tmp_path, stem="../x")


def test_grid_result_validation_and_to_dict():
    r = GridResult("clip", "A", "B", np.float64(0.5), 0.25, np.int64(7))
    assert r.to_dict() == {
        "feature": "clip",
        "train": "A",
        "test": "B",
        "auc": 0.5,
        "ap": 0.25,
        "n": 7,
        "fakes": "paper",  # the evaluation filter (default: the paper's)
        "n_real": None,
        "n_fake": None,
    }
    assert type(r.n) is int and type(r.auc) is float
    json.dumps(r.to_dict())
    with pytest.raises(ReportError, match="auc must lie in"):
        GridResult("clip", "A", "B", 50.0, 0.5, 10)  # percent instead of fraction
    with pytest.raises(ReportError, match="feature"):
        GridResult("", "A", "B", 0.5, 0.5, 10)
    with pytest.raises(ReportError, match="n must be"):
        GridResult("clip", "A", "B", 0.5, 0.5, -1)
    assert math.isnan(GridResult("clip", "A", "B", 0.5, float("nan"), 1).ap)


def test_duplicates_and_bad_orders_are_errors():
    with pytest.raises(
        ReportError, match="duplicate result for feature 'clip', train 'A', test 'A'"
    ):
        grid_table(results_3x3() + results_3x3()[:1])
    with pytest.raises(ReportError, match="repeat"):
        grid_table(results_3x3(), test_order=["A", "A"])
    with pytest.raises(ReportError, match="GridResult"):
        grid_table([{"feature": "clip"}])  # type: ignore[list-item]


def test_empty_grid_renders():
    table = grid_table([])
    assert isinstance(table, GridTable) and table.rows == ()
    assert table.to_csv().splitlines() == [
        "feature,train,in_domain_auc,in_domain_ap,mean_ood_auc,mean_ood_ap"
    ]
    assert json.loads(table.to_json())["rows"] == []
