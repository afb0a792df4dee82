"""The paper's table layouts: Tab. 2/4 with column J, and the shared Table renderer."""

from __future__ import annotations

import csv
import io
import json

import pytest

from featstore.trainers.report import GridResult, ReportError, grid_table, paper_columns, paper_grid
from featstore.trainers.tables import MISSING, Table, TableError

# Paper Tab. 2 (AUC %) rows, columns A..I, and the printed J. A = FAVC->FAVC, B = AV1M->FAVC,
# C = AV1M->AV1M, D = FAVC->AV1M, E = FAVC->AVLips, F = AV1M->AVLips, G = DFE->DFE,
# H = FAVC->DFE, I = AV1M->DFE (DFE-2024's probe is tested in-domain only).
PAIRS = [
    ("FAVC", "FAVC"), ("AV1M", "FAVC"), ("AV1M", "AV1M"), ("FAVC", "AV1M"), ("FAVC", "AVLips"),
    ("AV1M", "AVLips"), ("DFE", "DFE"), ("FAVC", "DFE"), ("AV1M", "DFE"),
]  # fmt: skip
TAB2 = {
    "Wav2Vec2": ([100, 99.9, 100, 96.6, 51.3, 56.3, 58.7, 62.3, 58.6], 70.8),
    "AV-HuBERT (V)": ([100, 95.5, 93.7, 64.1, 98.3, 90.5, 72.1, 63.7, 67.7], 80.0),
    "FSFM": ([97.1, 40.9, 95.3, 52.7, 84.3, 36.8, 71.7, 71.8, 43.5], 55.0),
    "CLIP VIT-L/14": ([99.8, 95.2, 96.5, 71.1, 60.3, 53.3, 73.9, 55.6, 43.5], 63.2),
    "SpeechForensics": ([100, 100, 68.1, 68.1, 92.7, 92.7, 75.6, 75.6, 75.6], 84.1),
}
TAB4_AVH_V = ([100, 99.6, 94.7, 62.1, 98.4, 88.6, 95.1, 92.9, 92.8], 89.1)


def _results(rows: dict, ap_rows: dict | None = None) -> list[GridResult]:
    out = []
    for feature, (values, _) in rows.items():
        ap_values = (ap_rows or {}).get(feature, (values, None))[0]
        for (train, test), auc, ap in zip(PAIRS, values, ap_values, strict=True):
            out.append(GridResult(feature, train, test, auc / 100, ap / 100, 100))
    return out


def _table():
    return grid_table(
        _results(TAB2, {"AV-HuBERT (V)": TAB4_AVH_V}),
        train_order=["FAVC", "AV1M", "DFE"],
        test_order=["FAVC", "AV1M", "AVLips", "DFE"],
    )


def test_columns_follow_the_paper():
    assert paper_columns(_table()) == tuple(PAIRS)
    t = paper_grid(_table())
    assert t.columns[:3] == ("A FAVC→FAVC", "B AV1M→FAVC", "C AV1M→AV1M")
    assert t.columns[-1] == "J mean OOD"
    assert [p["column"] for p in t.meta["pairs"] if not p["in_domain"]] == list("BDEFHI")
    assert "J: mean over each row's out-of-domain columns (B, D, E, F, H, I)" in t.caption
    one = grid_table([GridResult("clip", "A", "A", 0.9, 0.9, 10)])
    assert "B: no out-of-domain column" in paper_grid(one).caption


@pytest.mark.parametrize("feature", list(TAB2))
def test_column_j_is_the_papers_mean(feature):
    """J = the mean of the six out-of-domain cells, as printed in Tab. 2 (to its one decimal)."""
    t = paper_grid(_table(), "auc")
    j = t.values[t.rows.index(feature)][-1]
    assert f"{100 * j:.1f}" == f"{TAB2[feature][1]:.1f}"
    ood = [v for v, (a, b) in zip(TAB2[feature][0], PAIRS, strict=True) if a != b]
    assert j == pytest.approx(sum(ood) / 600)


def test_column_j_of_tab4():
    t = paper_grid(_table(), "ap")
    assert f"{100 * t.values[t.rows.index('AV-HuBERT (V)')][-1]:.1f}" == "89.1"


def test_j_needs_every_out_of_domain_cell():
    gone = ("FSFM", "AV1M", "DFE")
    results = [r for r in _results(TAB2) if (r.feature, r.train, r.test) != gone]
    table = grid_table(results, train_order=["FAVC", "AV1M", "DFE"])
    t = paper_grid(table)
    row = t.values[t.rows.index("FSFM")]
    assert row[-1] is None and row[PAIRS.index(("AV1M", "DFE"))] is None
    assert t.values[t.rows.index("CLIP VIT-L/14")][-1] is not None  # other rows keep theirs
    assert MISSING in t.to_markdown()
    with pytest.raises(ReportError, match="metric"):
        paper_grid(table, "eer")


def test_renderings_agree_and_bold_the_best(tmp_path):
    t = paper_grid(_table())
    md = t.to_markdown(bold_best=True)
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[0] == "feature (AUC)" and header[-1] == "J mean OOD"
    assert "**100.0**" in md and "**84.1**" in md  # SpeechForensics has the best J
    rows = list(csv.reader(io.StringIO(t.to_csv())))
    assert rows[0] == [t.title, *t.columns] and len(rows) == 1 + len(TAB2)
    assert float(rows[2][2]) == pytest.approx(0.955)  # full precision
    doc = json.loads(t.to_json())
    assert doc["rows"][1]["values"]["B AV1M→FAVC"] == pytest.approx(0.955)
    assert doc["metric"] == "auc" and doc["n"]["FSFM"] == [100] * 9
    paths = t.write(tmp_path, "tab2")
    assert paths["md"].read_text() == md and paths["csv"].read_text() == t.to_csv()


def test_table_validation():
    with pytest.raises(TableError, match="row names"):
        Table("x", ("a",), ("c",), ())
    with pytest.raises(TableError, match="1 values for 2 columns"):
        Table("x", ("a",), ("c", "d"), ((0.5,),))
    with pytest.raises(TableError, match="fractions"):
        Table("x", ("a",), ("c",), ((50.0,),))
    with pytest.raises(TableError, match="stem"):
        Table("x", (), (), ()).write(".", "../y")
