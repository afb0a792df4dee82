"""What ``eval`` counts: the evaluation filter for AUC/AP, the temporal AUC and AP/AR alike,
and the AV-Deepfake1M AP/AR semantics recorded beside the numbers (issue 15, items 9 and 10;
issue 20, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from featstore.trainers.evaluate import scored_metrics
from featstore.trainers.metrics import MetricError
from featstore.trainers.runs import Scored

FRAME_HZ = 25.0
KINDS = ["real", "both_modified", "audio_modified", "visual_modified"]


def _scored(seed: int = 0, n: int = 24) -> tuple[Scored, dict[str, tuple[str, np.ndarray]]]:
    """Videos of every modify_type; fakes carry one segment on whole rows ``[a, b)``.

    Returns the Scored and, per fake, its modify_type and the reference frame labels.
    """
    rng = np.random.default_rng(seed)
    rows, frames, truth = [], [], {}
    for i in range(n):
        kind = KINDS[i % 4]
        t = int(rng.integers(40, 80))
        scores = rng.standard_normal(t)
        segments: list[list[float]] = []
        if kind != "real":
            a = int(rng.integers(0, t - 12))
            b = a + int(rng.integers(4, 12))
            segments = [[a / FRAME_HZ, b / FRAME_HZ]]
            labels = np.zeros(t, dtype=int)
            labels[a:b] = 1
            scores[a:b] += rng.uniform(0.0, 2.0)  # some localize, some do not
            truth[f"v{i}"] = (kind, labels)
        rows.append(
            {
                "video_id": f"v{i}",
                "label": int(kind != "real"),
                "modify_type": kind,
                "fake_segments": json.dumps(segments),
            }
        )
        frames.append(scores)
    manifest = pd.DataFrame(rows)
    video = np.array([f.max() for f in frames])
    scored = Scored(
        selection="toy:test",
        manifest=manifest,
        scores=video,
        probabilities=1 / (1 + np.exp(-2 * video)),
        frame_scores=frames,
        frame_hz=FRAME_HZ,
    )
    return scored, truth


def _reference_temporal(scored: Scored, truth: dict, kinds: set[str]) -> tuple[float, int]:
    values = [
        roc_auc_score(labels, scored.frame_scores[int(v[1:])])
        for v, (kind, labels) in truth.items()
        if kind in kinds
    ]
    return float(np.mean(values)), len(values)


@pytest.mark.parametrize("seed", [0, 1])
def test_temporal_auc_applies_the_evaluation_filter(seed: int) -> None:
    scored, truth = _scored(seed)
    metrics, mask, _ = scored_metrics(scored, kind="probe")
    mean, n = _reference_temporal(scored, truth, {"both_modified"})
    assert metrics["temporal"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert metrics["temporal"]["n_videos"] == n == metrics["binary"]["n_fake"]
    assert metrics["temporal"]["fakes"] == metrics["fakes"] == "paper"
    assert mask.sum() == metrics["n_evaluated"] < metrics["n_scored"]


@pytest.mark.parametrize("seed", [0, 1])
def test_all_fakes_counts_every_fake_for_both(seed: int) -> None:
    scored, truth = _scored(seed)
    metrics, mask, _ = scored_metrics(scored, kind="probe", fakes="all")
    mean, n = _reference_temporal(scored, truth, set(KINDS))
    assert metrics["temporal"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert metrics["temporal"]["n_videos"] == n == metrics["binary"]["n_fake"]
    assert metrics["temporal"]["fakes"] == metrics["fakes"] == "all"
    assert mask.all()


def test_localization_semantics_are_recorded() -> None:
    scored, _ = _scored(2)
    official, _, _ = scored_metrics(scored, kind="probe", fakes="all")
    corrected, _, _ = scored_metrics(scored, kind="probe", segment_metrics="corrected", fakes="all")
    assert official["localization"]["semantics"] == "official"
    assert corrected["localization"]["semantics"] == "corrected"
    assert official["localization"]["n_videos"] == len(scored.scores)  # every video counted
    keys = [k for k in official["localization"] if k.startswith(("AP@", "AR@"))]
    assert keys == [k for k in corrected["localization"] if k.startswith(("AP@", "AR@"))]
    assert len(keys) == 9 and all(0 <= official["localization"][k] <= 1 for k in keys)
    # Segments on frame boundaries give IoUs on the thresholds (5 rows of 10 = 0.5), which
    # float32 (official) and float64 (corrected) compare differently: the numbers differ.
    assert any(official["localization"][k] != corrected["localization"][k] for k in keys)
    with pytest.raises(MetricError, match="semantics"):
        scored_metrics(scored, kind="probe", segment_metrics="tool")


@pytest.mark.parametrize("fakes", ["paper", "all"])
def test_ap_ar_follow_the_evaluation_filter(fakes: str) -> None:
    """AP/AR are computed over the videos the filter keeps, reals included, as the official
    tool runs over its metadata file: the same as the tool on the re-selected videos."""
    from featstore.trainers.segments import localization_metrics
    from featstore.trainers.temporal import proposals_from_scores

    scored, _ = _scored(3)
    metrics, _, _ = scored_metrics(scored, kind="probe", fakes=fakes)
    m = scored.manifest
    keep = m["modify_type"].isin(["real", "both_modified"]) if fakes == "paper" else m["label"] >= 0
    ids = m["video_id"][keep].tolist()
    frames = dict(zip(m["video_id"], scored.frame_scores, strict=True))
    truth = {
        v: [tuple(s) for s in json.loads(t)]
        for v, t in zip(m["video_id"], m["fake_segments"], strict=True)
    }
    reference = localization_metrics(
        {v: proposals_from_scores(frames[v], FRAME_HZ) for v in ids},
        {v: truth[v] for v in ids},
        semantics="official",
    )
    got = metrics["localization"]
    assert got["n_videos"] == len(ids) and got["fakes"] == fakes
    assert {k: got[k] for k in reference} == pytest.approx(dict(reference), abs=1e-12)
    record = metrics["filter"]
    y = m["label"][keep]
    assert (record["fakes"], record["n_real"], record["n_fake"]) == (
        fakes,
        int((y == 0).sum()),
        int((y == 1).sum()),
    )
    assert record["n_left_out"] == int((~keep).sum())
