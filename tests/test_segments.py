"""AV-Deepfake1M segment metrics on hand-computed cases, and the submission file formats."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from av1m_cases import AR_N, REFERENCE, make_case, official_tool, run_official  # isort: skip
from featstore.trainers.metrics import MetricError
from featstore.trainers.segments import (
    AR_IOU_THRESHOLDS,
    SEMANTICS,
    ResultFileError,
    check_semantics,
    iou_matrix,
    localization_metrics,
    official_proposals,
    read_proposals,
    read_score_file,
    segment_ap,
    segment_ar,
    segment_iou,
    truth_from_metadata,
    write_proposals,
    write_score_file,
)

# Three videos: v1 one truth segment, v2 two, v3 real. Proposals are (confidence, start, end).
TRUTH = {"v1": [(0.0, 10.0)], "v2": [(0.0, 4.0), (6.0, 10.0)], "v3": []}
PROPOSALS = {
    "v1": [(0.9, 0.0, 10.0), (0.6, 0.0, 10.0)],  # IoU 1 and 1: the second is a duplicate
    "v2": [(0.8, 0.0, 4.0), (0.7, 6.0, 9.0), (0.3, 6.0, 10.0)],  # IoU 1, 0.75, 1
    "v3": [(0.85, 1.0, 2.0)],  # on a real video: always a false positive
}
# v2's proposals out of confidence order: the official tool matches in this order.
SHUFFLED = PROPOSALS | {"v2": [(0.3, 6.0, 10.0), (0.8, 0.0, 4.0), (0.7, 6.0, 9.0)]}

# IoU > 0.5: v1's 0.9 takes its truth; v2's truths take 0.8 and 0.7 (first by confidence).
#   Ranked: 0.9 T, 0.85 F, 0.8 T, 0.7 T, 0.6 F, 0.3 F; 3 truths.
#   precision 1, 1/2, 2/3, 3/4, 3/5, 1/2; recall 1/3, 1/3, 2/3, 1, 1, 1
#   envelope  1, 3/4, 3/4, 3/4, 3/5, 1/2
#   AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6; the tool leaves out the first step: 1/2.
# IoU > 0.75 (0.75 is not > 0.75, so 0.7 misses and v2's second truth takes 0.3):
#   Ranked: 0.9 T, 0.85 F, 0.8 T, 0.7 F, 0.6 F, 0.3 T
#   precision 1, 1/2, 2/3, 1/2, 2/5, 1/2; recall 1/3, 1/3, 2/3, 2/3, 2/3, 1
#   envelope  1, 2/3, 2/3, 1/2, 1/2, 1/2
#   AP = 1/3 + 1/3 * 2/3 + 1/3 * 1/2 = 13/18; the tool: 13/18 - 1/3 = 7/18. Same at 0.9, 0.95.
AP_EXPECTED = {0.5: 5 / 6, 0.75: 13 / 18, 0.9: 13 / 18, 0.95: 13 / 18}
AP_OFFICIAL = {0.5: 1 / 2, 0.75: 7 / 18, 0.9: 7 / 18, 0.95: 7 / 18}


def test_segment_iou() -> None:
    assert segment_iou((0.0, 2.0), (1.0, 3.0)) == pytest.approx(1 / 3)
    assert segment_iou((0.0, 10.0), (2.0, 4.0)) == pytest.approx(0.2)
    assert segment_iou((0.0, 1.0), (1.0, 2.0)) == 0.0  # touching
    assert segment_iou((0.0, 1.0), (3.0, 4.0)) == 0.0
    assert segment_iou((1.0, 1.0), (1.0, 1.0)) == 0.0  # empty: no NaN
    assert segment_iou((2.0, 5.0), (2.0, 5.0)) == 1.0


def test_iou_matrix_matches_pairwise() -> None:
    rng = np.random.default_rng(0)
    props = np.sort(rng.uniform(0, 10, size=(7, 2)), axis=1)
    truth = np.sort(rng.uniform(0, 10, size=(4, 2)), axis=1)
    m = iou_matrix(props, truth)
    assert m.shape == (7, 4)
    for i in range(7):
        for j in range(4):
            a, b = props[i], truth[j]
            inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
            union = (a[1] - a[0]) + (b[1] - b[0]) - inter
            assert m[i, j] == pytest.approx(inter / union)
    assert iou_matrix(np.zeros((0, 2)), truth).shape == (0, 4)
    assert iou_matrix(props, np.zeros((0, 2))).shape == (7, 0)
    assert iou_matrix(props.astype(np.float32), truth.astype(np.float32)).dtype == np.float32
    with pytest.raises(MetricError, match=r"\[N, 2\]"):
        iou_matrix(np.zeros((3, 3)), truth)


def test_segment_ap_hand_computed() -> None:
    assert segment_ap(PROPOSALS, TRUTH, semantics="corrected") == pytest.approx(AP_EXPECTED)
    assert segment_ap(PROPOSALS, TRUTH, semantics="official") == pytest.approx(AP_OFFICIAL)


def test_segment_ap_ranks_within_video_by_confidence() -> None:
    # Default: file order does not matter.
    assert segment_ap(SHUFFLED, TRUTH, semantics="corrected") == pytest.approx(AP_EXPECTED)
    # Official: at IoU > 0.5 v2's second truth takes 0.3 (first in the file), not 0.7, so the
    # ranking becomes the IoU > 0.75 one.
    assert segment_ap(SHUFFLED, TRUTH, semantics="official")[0.5] == pytest.approx(7 / 18)


def test_segment_ap_single_hit_and_edge_cases() -> None:
    truth = {"a": [(1.0, 2.0)]}
    hit = {"a": [(0.5, 1.0, 2.0)]}
    assert segment_ap(hit, truth, iou_thresholds=[0.5], semantics="corrected") == {0.5: 1.0}
    assert segment_ap(hit, truth, iou_thresholds=[0.5], semantics="official") == {0.5: 0.0}
    # No proposals anywhere, or only misses: AP 0.
    assert segment_ap({"a": []}, truth) == pytest.approx(dict.fromkeys(AP_EXPECTED, 0.0))
    assert segment_ap({"a": [(0.9, 5.0, 6.0)]}, truth)[0.5] == 0.0
    # Proposals of videos outside the truth are ignored.
    assert segment_ap(hit | {"other": [(0.99, 0.0, 1.0)]}, truth, semantics="corrected")[0.5] == 1.0
    # A video with truth but no proposals still counts its truth: recall at most 1/2.
    truth2 = truth | {"b": [(0.0, 1.0)]}
    assert segment_ap(hit | {"b": []}, truth2, semantics="corrected")[0.5] == pytest.approx(0.5)


def test_segment_metrics_errors() -> None:
    with pytest.raises(MetricError, match="no proposals entry"):
        segment_ap({"v1": []}, TRUTH)
    with pytest.raises(MetricError, match="no fake segment"):
        segment_ap({"r": [(0.5, 0.0, 1.0)]}, {"r": []})
    with pytest.raises(MetricError, match="ends before it starts"):
        segment_ap({"a": [(0.5, 2.0, 1.0)]}, {"a": [(0.0, 1.0)]})
    with pytest.raises(MetricError, match="rows of 3 numbers"):
        segment_ar({"a": [(2.0, 1.0)]}, {"a": [(0.0, 1.0)]})
    with pytest.raises(MetricError, match="NaN"):
        segment_ar({"a": [(np.nan, 0.0, 1.0)]}, {"a": [(0.0, 1.0)]})
    with pytest.raises(MetricError, match="IoU thresholds"):
        segment_ap(PROPOSALS, TRUTH, iou_thresholds=[1.0])
    with pytest.raises(MetricError, match="n_proposals"):
        segment_ar(PROPOSALS, TRUTH, n_proposals=[0])


def test_segment_ar_hand_computed() -> None:
    # Top-k best IoU per truth (proposals by confidence):
    #   v1 (0, 10): k=1 -> 1, k=2 -> 1
    #   v2 (0, 4):  k=1 -> 1, k=2 -> 1;  v2 (6, 10): k=1 -> 0, k=2 -> 0.75, k=3 -> 1
    # IoU > 0.5: recall 2/3 (k=1), 3/3 (k=2), 3/3 (k=3); IoU > 0.8: 2/3, 2/3, 3/3.
    # AR@1 = 2/3, AR@2 = (1 + 2/3) / 2 = 5/6, AR@3 = 1.
    kw = {"n_proposals": (1, 2, 3), "iou_thresholds": (0.5, 0.8)}
    expected = {1: 2 / 3, 2: 5 / 6, 3: 1.0}
    assert segment_ar(PROPOSALS, TRUTH, semantics="corrected", **kw) == pytest.approx(expected)
    assert segment_ar(SHUFFLED, TRUTH, semantics="corrected", **kw) == pytest.approx(expected)
    assert segment_ar(PROPOSALS, TRUTH, semantics="official", **kw) == pytest.approx(expected)
    # Official, file order: v2's top 1 is (6, 10): v2 (0, 4) missed, (6, 10) found -> still 2/3;
    # top 2 adds (0, 4) -> 3/3 at both thresholds: AR@2 = 1.
    assert segment_ar(SHUFFLED, TRUTH, semantics="official", **kw) == pytest.approx(
        {1: 2 / 3, 2: 1.0, 3: 1.0}
    )
    # A fake video with no proposals: its truth is missed (4 truths) in both semantics (the
    # tool panics on the empty list; the file it can read carries a never-matching placeholder).
    truth = TRUTH | {"v4": [(0.0, 5.0)]}
    props = PROPOSALS | {"v4": []}
    missed = {1: 1 / 2, 2: 5 / 8, 3: 3 / 4}
    for semantics in ("corrected", "official"):
        assert segment_ar(props, truth, semantics=semantics, **kw) == pytest.approx(missed)


def _reference_ap_ar(proposals, truth, thresholds, ns):
    """Plain-loop reading of the definitions (default mode), for randomised cross-checks."""
    ranked, n_truth = [], 0
    ar_hits = {(t, n): 0 for t in thresholds for n in ns}
    for file, gts in truth.items():
        props = sorted(proposals[file], key=lambda p: -p[0])
        n_truth += len(gts)
        for t in thresholds:
            taken = set()
            for g in gts:
                for j, p in enumerate(props):
                    if j not in taken and segment_iou(p[1:], g) > t:
                        taken.add(j)
                        break
            for n in ns:
                ar_hits[t, n] += sum(any(segment_iou(p[1:], g) > t for p in props[:n]) for g in gts)
            ranked.extend((p[0], j in taken, t) for j, p in enumerate(props))
    ap = {}
    for t in thresholds:
        flags = [tp for _, tp, tt in sorted((r for r in ranked if r[2] == t), key=lambda r: -r[0])]
        area, hits = 0.0, 0
        for k, tp in enumerate(flags):
            if tp:
                hits += 1
                best = max(
                    sum(flags[: m + 1]) / (m + 1) for m in range(k, len(flags))
                )  # envelope at rank k
                area += best / n_truth
        ap[t] = area
    ar = {n: float(np.mean([ar_hits[t, n] / n_truth for t in thresholds])) for n in ns}
    return ap, ar


@pytest.mark.parametrize("seed", range(5))
def test_segment_metrics_match_loop_reference(seed: int) -> None:
    rng = random.Random(seed)
    truth, proposals = {}, {}
    for v in range(12):
        starts = sorted(rng.uniform(0, 20) for _ in range(rng.randint(0, 3)))
        truth[f"v{v}"] = [(s, s + rng.uniform(0.2, 3)) for s in starts]
        props = []
        for _ in range(rng.randint(0, 8)):
            if truth[f"v{v}"] and rng.random() < 0.6:  # jittered copy of a truth segment
                s, e = rng.choice(truth[f"v{v}"])
                s, e = s + rng.gauss(0, 0.3), e + rng.gauss(0, 0.3)
            else:
                s = rng.uniform(0, 20)
                e = s + rng.uniform(0.1, 3)
            props.append((round(rng.random(), 2), min(s, e), max(s, e)))  # ties in confidence
        proposals[f"v{v}"] = props
    truth["v0"] = [(1.0, 2.0)]
    ns = (1, 2, 5)
    ref_ap, ref_ar = _reference_ap_ar(proposals, truth, AR_IOU_THRESHOLDS, ns)
    kw = {"semantics": "corrected"}
    assert segment_ap(proposals, truth, iou_thresholds=AR_IOU_THRESHOLDS, **kw) == pytest.approx(
        ref_ap
    )
    assert segment_ar(proposals, truth, n_proposals=ns, **kw) == pytest.approx(ref_ar)


def test_localization_metrics_keys() -> None:
    m = localization_metrics(PROPOSALS, TRUTH, semantics="corrected")
    assert list(m) == [
        "AP@0.5", "AP@0.75", "AP@0.9", "AP@0.95", "AR@50", "AR@30", "AR@20", "AR@10", "AR@5",
    ]  # fmt: skip
    assert m["AP@0.5"] == pytest.approx(5 / 6)
    # Every N >= 3 sees all proposals, and each truth has one with IoU 1: recall 1 everywhere.
    assert m["AR@5"] == 1.0
    assert localization_metrics(PROPOSALS, TRUTH, semantics="official")["AP@0.5"] == pytest.approx(
        0.5
    )


def test_score_file_roundtrip_and_errors(tmp_path) -> None:
    path = tmp_path / "scores.txt"
    scores = {"test/000001.mp4": 0.25, "test/000002.mp4": -3.5e-7, "a b.mp4": 1.0 / 3.0}
    write_score_file(path, scores)
    assert path.read_text().splitlines()[0] == "test/000001.mp4;0.25"
    assert read_score_file(path) == scores
    with pytest.raises(ResultFileError, match="';'"):
        write_score_file(tmp_path / "x.txt", {"a;b": 1.0})
    with pytest.raises(ResultFileError, match="not finite"):
        write_score_file(tmp_path / "x.txt", {"a": float("nan")})
    bad = {
        "a.mp4 0.5\n": "expected 'file;score'",
        "a.mp4;0.5;1\n": "expected 'file;score'",
        "a.mp4;high\n": "not a number",
        "a.mp4;nan\n": "not finite",
        "a.mp4;0.1\n\na.mp4;0.2\n": ":3: 'a.mp4' is listed twice",
    }
    for text, match in bad.items():
        path.write_text(text)
        with pytest.raises(ResultFileError, match=match):
            read_score_file(path)


def test_proposal_file_roundtrip_and_errors(tmp_path) -> None:
    path = tmp_path / "proposals.json"
    write_proposals(path, PROPOSALS)
    assert json.loads(path.read_text())["v1"] == [[0.9, 0.0, 10.0], [0.6, 0.0, 10.0]]
    back = read_proposals(path)
    assert back == {k: [tuple(map(float, r)) for r in v] for k, v in PROPOSALS.items()}
    assert localization_metrics(back, TRUTH) == localization_metrics(PROPOSALS, TRUTH)
    bad = {
        "{not json": "not valid JSON",
        "[[0.5, 0, 1]]": "expected a JSON object",
        '{"a": [[0.5, 1]]}': "rows of 3 numbers",
        '{"a": [[0.5, 2, 1]]}': "ends before it starts",
        '{"a": [["x", 0, 1]]}': "must be numbers",
        '{"a": [[0.5, 0, 1], [0.5, 0]]}': "must be numbers",
    }
    for text, match in bad.items():
        path.write_text(text)
        with pytest.raises(ResultFileError, match=match):
            read_proposals(path)


def test_truth_from_metadata() -> None:
    entries = [
        {"file": "real.mp4", "fake_segments": [], "modify_type": "real"},
        {"file": "fake.mp4", "fake_segments": [[1.2, 1.6], [3.0, 3.25]]},
    ]
    assert truth_from_metadata(entries) == {
        "real.mp4": [],
        "fake.mp4": [(1.2, 1.6), (3.0, 3.25)],
    }
    with pytest.raises(MetricError, match="twice"):
        truth_from_metadata(entries + entries[:1])
    with pytest.raises(MetricError, match="lacks"):
        truth_from_metadata([{"file": "x.mp4"}])


# ------------------------------------------------ parity with the official evaluator


def _ours(case: dict, semantics: str = "official") -> dict:
    truth = truth_from_metadata(case["metadata"])
    ap = segment_ap(case["proposals"], truth, semantics=semantics)
    ar = segment_ar(case["proposals"], truth, n_proposals=AR_N, semantics=semantics)
    return {"ap": {str(t): v for t, v in ap.items()}, "ar": {str(n): v for n, v in ar.items()}}


def _assert_same(ours: dict, official: dict) -> None:
    for kind in ("ap", "ar"):
        assert ours[kind].keys() == official[kind].keys()
        for key, value in official[kind].items():
            # The tool sums in float32: agreement to float32 rounding, not to the bit.
            assert ours[kind][key] == pytest.approx(value, abs=2e-6), (kind, key)


def test_official_semantics_match_the_tool_on_stored_cases() -> None:
    """The tool's own numbers (tests/av1m_cases.py wrote them) on seeded random cases."""
    doc = json.loads(REFERENCE.read_text())
    assert doc["tool"].startswith("avdeepfake1m ") and doc["ar_n"] == list(AR_N)
    for case in doc["cases"]:
        assert case["metadata"] == make_case(case["seed"])["metadata"]  # same generator
        assert any(not rows for rows in case["proposals"].values())  # empty lists are covered
        _assert_same(_ours(case), case["official"])


def test_stored_cases_tell_the_semantics_apart() -> None:
    """The cases exercise every quirk: corrected numbers differ, and so would float64 ties."""
    case = json.loads(REFERENCE.read_text())["cases"][0]
    corrected = _ours(case, "corrected")
    assert any(abs(corrected["ap"][k] - case["official"]["ap"][k]) > 1e-3 for k in corrected["ap"])


@pytest.mark.parametrize("seed", [11, 12])
def test_official_semantics_match_the_live_tool(seed: int) -> None:
    tool = official_tool()
    if tool is None:
        pytest.skip("the official evaluator (PyPI avdeepfake1m) is not installed")
    case = make_case(seed)
    _assert_same(_ours(case), run_official(tool, case))


def test_known_issue_float32_confidence_ties() -> None:
    """Regression: confidences equal in float32 but not float64 must tie (stable order).

    A's miss comes first in the file; B's hit is 1e-9 more confident. The tool
    reads both as float32 0.5, keeps file order (miss, hit): precision 0, 1/2,
    AP (no recall-0 step) = 1/2 * 1/2. Ranked in float64 the hit would come
    first and the official AP would be 0.
    """
    truth = {"A": [(0.0, 1.0)], "B": [(0.0, 1.0)]}
    proposals = {"A": [(0.5, 5.0, 6.0)], "B": [(0.5 + 1e-9, 0.0, 1.0)]}
    assert segment_ap(proposals, truth, iou_thresholds=[0.5]) == {0.5: 0.25}
    assert segment_ap(proposals, truth, iou_thresholds=[0.5], semantics="corrected") == {0.5: 0.5}


def test_placeholder_proposals_change_nothing(tmp_path) -> None:
    """Files for the tool never hold an empty list; the placeholder leaves AP/AR unchanged."""
    case = make_case(5)
    empty = [f for f, rows in case["proposals"].items() if not rows]
    assert empty
    padded = official_proposals(case["proposals"])
    assert all(padded.values())
    lowest = min(r[0] for f, rows in case["proposals"].items() for r in rows)
    for file in empty:
        [[c, s, e]] = padded[file]
        assert (s, e) == (0.0, 0.0) and np.float32(c) < np.float32(lowest)
    truth = truth_from_metadata(case["metadata"])
    for semantics in ("official", "corrected"):
        assert localization_metrics(padded, truth, semantics=semantics) == pytest.approx(
            localization_metrics(case["proposals"], truth, semantics=semantics), abs=1e-12
        )
    write_proposals(tmp_path / "p.json", case["proposals"])
    assert json.loads((tmp_path / "p.json").read_text()) == padded


def test_semantics_must_be_known() -> None:
    with pytest.raises(MetricError, match="semantics 'tool'"):
        segment_ap(PROPOSALS, TRUTH, semantics="tool")
    assert check_semantics("corrected") == "corrected" and SEMANTICS == ("official", "corrected")
