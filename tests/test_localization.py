"""Localization people can act on, and scores that do not drift with clip length.

Post-processing recovers planted segments and ignores 1-frame spikes; calibration
picks the threshold its objective says (checked by brute force); windows keep a
looped real clip's probability; too-short inputs are refused (or left out by
``eval``); runs written before calibration keep the paper's reading and say so.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from scipy.stats import pearsonr

from featstore.store import FeatureStore, open_store
from featstore.timebase import mask_to_segments
from featstore.trainers import kinds
from featstore.trainers.calibration import REAL_VIDEOS, SEGMENT_F1, calibrate
from featstore.trainers.data import FeatureKey
from featstore.trainers.evaluate import evaluate
from featstore.trainers.inputs import read_video
from featstore.trainers.localization import DEFAULT_RULES, PAPER_RULES, SegmentRules, localize
from featstore.trainers.localization_metrics import localization_scores
from featstore.trainers.metrics import MetricError
from featstore.trainers.runs import load_run, read_predictions
from featstore.trainers.temporal import scores_to_segments
from featstore.trainers.windows import InputTooShortError, LengthProfile, WindowRule, window_rule

from trainer_fixtures import write_planted_dataset  # isort: skip

HZ = 25.0


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------ post-processing


@pytest.mark.parametrize("seed", range(5))
def test_post_processing_recovers_segments_and_ignores_spikes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = 400
    frames = rng.normal(-2.0, 0.6, t)  # [T] real frames, some noise above 0 now and then
    truth = [(60, 60 + int(rng.integers(10, 30))), (250, 250 + int(rng.integers(10, 30)))]
    for a, b in truth:
        frames[a:b] = rng.normal(2.0, 0.6, b - a)
        frames[a + (b - a) // 2] = -1.0  # a 1-frame dip inside the segment
    spikes = [20, 150, 151, 330]  # 1- and 2-frame spikes outside
    frames[spikes] = 8.0
    found = localize(frames, HZ, DEFAULT_RULES).segments
    truth_s = [(a / HZ, b / HZ) for a, b in truth]
    assert len(found) == len(truth)
    for seg, true in zip(found, truth_s, strict=True):
        assert _iou((seg.start_s, seg.end_s), true) > 0.9
        assert 0.5 < seg.confidence < 1 and not seg.below_threshold
    # the paper's reading of the same scores: fragments and spikes
    raw = scores_to_segments(frames, HZ, threshold=0.0)
    assert len(raw) > len(truth)
    assert any(abs(s.start_s - 20 / HZ) < 1e-9 for s in raw)


def test_paper_rules_are_the_raw_runs() -> None:
    rng = np.random.default_rng(1)
    frames = rng.normal(0.0, 1.0, 300)
    paper = localize(frames, HZ, PAPER_RULES).segments
    raw = scores_to_segments(frames, HZ, threshold=0.0)
    assert [(s.start_s, s.end_s, s.score) for s in paper] == [
        (s.start_s, s.end_s, s.score) for s in raw
    ]


def test_a_fake_verdict_always_points_somewhere() -> None:
    frames = np.full(100, -3.0)
    frames[40:55] = -1.0  # the clearest part, still under 0
    loc = localize(frames, HZ, DEFAULT_RULES, fake=True)
    (seg,) = loc.segments
    assert seg.below_threshold and (seg.start_s, seg.end_s) == (40 / HZ, 55 / HZ)
    assert loc.proposals[0][1:] == (seg.start_s, seg.end_s)
    assert localize(frames, HZ, DEFAULT_RULES).segments == ()  # labelled real: none
    flat = localize(np.zeros(30), HZ, DEFAULT_RULES, fake=True).segments
    assert [(s.start_s, s.end_s, s.below_threshold) for s in flat] == [(0.0, 30 / HZ, True)]


def test_rules_are_checked() -> None:
    for bad in ({"smooth_s": -1}, {"threshold": float("nan")}, {"smooth_s": 60.0}):
        with pytest.raises(MetricError):
            SegmentRules(**bad)
    with pytest.raises(MetricError, match="unknown keys"):
        SegmentRules.from_dict({"smoothing": 1})


def test_localization_scores_count_by_hand() -> None:
    videos = [
        # a fake: one segment found (IoU 0.8), one missed; a false segment
        (1, [[1.0, 2.0], [3.0, 3.2]], [[1.0, 1.8], [2.4, 2.8]], 100),
        (0, [[0.4, 0.6]], [], 100),  # a real with a false segment
        (0, [], [], 100),
        (1, [], [], 100),  # a fake without annotations: left out
    ]
    s = localization_scores(videos, HZ)
    assert (s.n_predicted, s.n_truth, s.n_matched) == (3, 2, 1)
    assert s.segment_precision == pytest.approx(1 / 3) and s.segment_recall == pytest.approx(0.5)
    assert s.segment_f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    # frames: predicted 25 + 5 + 5 rows, true 20 + 10, overlap 20
    tp, fp, fn = 20, 10 + 5, 10
    assert s.frame_iou == pytest.approx(tp / (tp + fp + fn))
    assert s.frame_f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s.mean_iou == pytest.approx(20 / (20 + 10 + 10))
    assert (s.n_fakes, s.fakes_with_segment, s.n_reals, s.reals_with_segment) == (1, 1, 2, 1)
    assert s.false_segments_on_reals == 1


# ------------------------------------------------------------------ calibration


def _bump(t: int, a: int, b: int, height: float, base: float = -5.0) -> np.ndarray:
    x = np.full(t, base)
    x[a:b] = height
    return x


def test_real_videos_threshold_is_the_rate_quantile_of_their_levels() -> None:
    # 20 reals, each with one 10-row bump at heights 1..20: at most 5 % (one video) may get
    # a segment, so the threshold is the second highest bump
    videos = [(0, _bump(100, 30, 40, float(h)), []) for h in range(1, 21)]
    card = calibrate(videos, HZ, selection="toy:val")
    assert card.chosen == REAL_VIDEOS and card.threshold == 19.0
    n_with = sum(bool(localize(f, HZ, card.rules).segments) for _, f, _ in videos)
    assert n_with == 1
    # a bump too short to survive the minimum length never counts
    short = [(0, _bump(100, 30, 33, 50.0), []), *videos]
    assert calibrate(short, HZ).threshold == 19.0


def _reference_segment_f1(videos: list[Any], threshold: float, rules: SegmentRules) -> float:
    """Segment F1 at IoU 0.5 by hand: median filter, runs, merge, minimum length, match."""
    k = round(rules.smooth_s * HZ)
    k = k + 1 - k % 2 if k > 1 else 1
    tp = n_pred = n_true = 0
    for label, frames, truth in videos:
        if label and not truth:
            continue
        segs: list[list[float]] = []
        smoothed = median_filter(frames, size=k, mode="nearest")
        for a, b in mask_to_segments(smoothed > threshold, frame_hz=HZ):
            if segs and a - segs[-1][1] <= rules.merge_gap_s + 1e-9:
                segs[-1][1] = b
            else:
                segs.append([a, b])
        segs = [s for s in segs if s[1] - s[0] >= rules.min_segment_s - 1e-9]
        n_pred += len(segs)
        n_true += len(truth)
        tp += sum(any(_iou(tuple(p), tuple(g)) > 0.5 for p in segs) for g in truth)
    return 0.0 if tp == 0 else 2 * tp / (n_pred + n_true)


def test_segment_f1_threshold_maximises_segment_f1() -> None:
    rng = np.random.default_rng(3)
    videos: list[Any] = []
    for _ in range(12):  # reals: noise with a bump of random height
        x = rng.normal(-2.0, 0.5, 120)
        x[50:60] += rng.uniform(1.0, 4.0)
        videos.append((0, x, []))
    for _ in range(12):  # fakes: a segment of random strength
        x = rng.normal(-2.0, 0.5, 120)
        a = int(rng.integers(10, 80))
        x[a : a + 20] += rng.uniform(2.0, 6.0)
        videos.append((1, x, [(a / HZ, (a + 20) / HZ)]))
    videos.append((1, rng.normal(0.0, 1.0, 120), []))  # a fake without annotations: ignored
    card = calibrate(videos, HZ, selection="toy:val")
    assert card.chosen == SEGMENT_F1 and set(card.thresholds) == {"paper", REAL_VIDEOS, SEGMENT_F1}
    best = _reference_segment_f1(videos, card.threshold, DEFAULT_RULES)
    assert card.calibrated_on["segment_f1"] == pytest.approx(best)
    # no threshold within the real videos' budget does better (the smoothed values, by hand)
    floor = card.thresholds[REAL_VIDEOS]
    assert card.threshold >= floor
    values = np.unique(np.concatenate([median_filter(f, 5, mode="nearest") for _, f, _ in videos]))
    others = [_reference_segment_f1(videos, float(v), DEFAULT_RULES) for v in values[::3]
              if v >= floor]  # fmt: skip
    assert len(others) > 20 and best >= max(others) - 1e-12
    # the paper's 0 would put segments on real videos; the calibrated threshold on none
    paper = DEFAULT_RULES.with_(threshold=0.0)
    assert sum(bool(localize(f, HZ, paper).segments) for y, f, _ in videos if not y) > 0
    assert sum(bool(localize(f, HZ, card.rules).segments) for y, f, _ in videos if not y) == 0
    # without the budget (no reals to keep clean), the best of all thresholds
    fakes = [v for v in videos if v[0]]
    free = calibrate(fakes, HZ)
    assert free.chosen == SEGMENT_F1 and REAL_VIDEOS not in free.thresholds
    everything = [_reference_segment_f1(fakes, float(v), DEFAULT_RULES) for v in values[::3]]
    assert free.calibrated_on["segment_f1"] >= max(everything) - 1e-12
    assert card.calibrated_on["n_real"] == 12 and card.calibrated_on["n_fake_annotated"] == 12


def test_without_a_fake_segment_in_the_budget_the_budget_decides() -> None:
    """Frame scores that say nothing about the annotated segments: segment F1 is 0 at every
    threshold within the real videos' budget, so the card uses the budget's threshold."""
    rng = np.random.default_rng(5)
    videos: list[Any] = [(0, rng.normal(-2.0, 0.5, 120), []) for _ in range(20)]
    for _ in range(10):
        a = int(rng.integers(10, 80))
        videos.append((1, rng.normal(-2.0, 0.5, 120), [(a / HZ, (a + 30) / HZ)]))
    card = calibrate(videos, HZ, selection="toy:val")
    floor = card.thresholds[REAL_VIDEOS]
    values = np.unique(np.concatenate([median_filter(f, 5, mode="nearest") for _, f, _ in videos]))
    within = [_reference_segment_f1(videos, float(v), DEFAULT_RULES) for v in values if v >= floor]
    assert within and max(within) == 0.0  # the premise, by hand
    assert card.chosen == REAL_VIDEOS and card.threshold == floor
    assert SEGMENT_F1 in card.thresholds and card.calibrated_on["segment_f1"] == 0.0
    assert "segment F1 is 0" in card.describe() and card.describe().startswith("real_videos")
    reals = [f for y, f, _ in videos if not y]
    assert sum(bool(localize(f, HZ, card.rules).segments) for f in reals) <= 0.05 * len(reals)


def test_card_resolves_names_numbers_and_overrides() -> None:
    videos = [(0, _bump(100, 30, 40, float(h)), []) for h in range(1, 21)]
    card = calibrate(videos, HZ)
    assert card.resolve()[0].threshold == 19.0
    rules, name = card.resolve("paper", smooth_s=0.0)
    assert (rules.threshold, rules.smooth_s, name) == (0.0, 0.0, "paper")
    assert card.resolve("1.5")[0].threshold == 1.5 and card.resolve(2.0)[1] == "given"
    with pytest.raises(MetricError, match="neither a number nor one of"):
        card.resolve("best")
    assert type(card).from_dict(card.to_dict()) == card


# ------------------------------------------------------------------ trained runs


@pytest.fixture(scope="module")
def fixed_length(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStore, Path]:
    """A probe trained on videos of one length (50 rows)."""
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("local")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(store, "toy", n_videos=24, dim=8, encoder="aud", n_frames=(50, 50))
    # the centred bias (an option): 5 epochs of 24 videos then localize
    run = train(
        store, features="aud", train="toy", out=root / "probe",
        config=ProbeConfig(max_epochs=5, lr=0.05, batch_videos=2, center_bias=True),
    )  # fmt: skip
    return store, run.path


def test_a_trained_run_records_its_card(fixed_length: tuple[FeatureStore, Path]) -> None:
    _, path = fixed_length
    config = load_run(path).config
    assert config["localization"]["chosen"] == SEGMENT_F1
    assert config["localization"]["calibrated_on"]["selection"] == "toy:val"
    assert config["lengths"]["median_rows"] == 50 and config["lengths"]["selection"] == "toy:train"
    detector = kinds.load(path)
    assert detector.localization.threshold == config["localization"]["threshold"]
    rule = detector.window_rule
    assert (rule.window_rows, rule.hop_rows, rule.min_rows, rule.kind_min_rows) == (50, 25, 25, 1)


@pytest.mark.parametrize("loops", [3, 10])
def test_a_looped_real_clip_keeps_its_probability(
    fixed_length: tuple[FeatureStore, Path], loops: int
) -> None:
    store, path = fixed_length
    detector = kinds.load(path)
    manifest = store.manifest("toy")
    reals = manifest[(manifest["label"] == 0) & (manifest["split"] == "test")]["video_id"]
    key = FeatureKey("aud")
    for video_id in reals:
        x = read_video(store, "toy", video_id, [key])[key]  # [50, 8]
        once = detector.score_video({key: x})
        looped = {key: np.tile(x, (loops, 1))}
        windowed = detector.score_video(looped)
        whole = detector.score_video(looped, windowed=False)
        p1, pw = kinds.probability(once.score), kinds.probability(windowed.score)
        assert not once.windowed and windowed.windowed
        assert abs(pw - p1) < 0.05, (video_id, p1, pw)
        # without windows the log-sum-exp grows by log(loops)
        assert whole.score == pytest.approx(once.score + np.log(loops), abs=1e-4)
        assert windowed.whole_score == pytest.approx(whole.score, abs=1e-6)
        assert len(windowed.windows) == 2 * loops - 1


def test_eval_reports_localization_duration_and_windows(
    fixed_length: tuple[FeatureStore, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from featstore.cli.main import app

    store, path = fixed_length
    metrics = evaluate(path, store, "toy:test", fakes="all")
    at, frame = metrics["at_threshold"], metrics["frame_threshold"]
    assert frame["name"] == SEGMENT_F1 and frame["rules"]["smooth_s"] == 0.2
    assert "segment F1" in frame["run_card"] and metrics["windows"] is None
    # recomputed from the written segments and the manifest
    segments = json.loads((path / "predictions" / "toy_test.segments.json").read_text())
    manifest = store.manifest("toy").set_index("video_id")
    preds = read_predictions(path, "toy_test")
    n_true = sum(len(manifest.loc[v, "fake_segments"]) for v in preds["video_id"])
    assert at["n_truth"] == n_true
    assert at["n_predicted"] == sum(len(s) for s in segments.values())
    assert metrics["duration"] is None  # every video lasts 2 s
    paper = evaluate(path, store, "toy:test", fakes="all", threshold="paper", smooth_s=0,
                     min_segment_s=0, merge_gap_s=0, write=False)  # fmt: skip
    assert paper["frame_threshold"]["value"] == 0.0
    windowed = evaluate(path, store, "toy:test", windows=True, write=False)
    assert windowed["windows"]["window_rows"] == 50 and windowed["windows"]["n_windowed"] == 0
    assert windowed["binary"] == metrics["binary"] or metrics["fakes"] != windowed["fakes"]
    out = CliRunner().invoke(app, ["eval", str(path), "--on", "toy:test", "--threshold", "paper"])
    assert out.exit_code == 0, out.output
    assert "frame threshold" in out.output and "segments P / R / F1" in out.output


def test_eval_reports_the_length_bias(tmp_path: Path) -> None:
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    store = open_store(tmp_path / "f.zarr", mode="a", durable=False)
    write_planted_dataset(store, "var", n_videos=30, dim=8, encoder="aud", n_frames=(20, 200))
    run = train(store, features="aud", train="var", out=tmp_path / "p",
                config=ProbeConfig(max_epochs=2, lr=0.05, batch_videos=2))  # fmt: skip
    metrics = evaluate(run.path, store, "var:*")
    preds = read_predictions(run.path, "var_all")
    manifest = store.manifest("var").set_index("video_id")
    real = preds[preds["label"] == 0]
    d = manifest.loc[real["video_id"], "duration_s"].to_numpy()
    assert metrics["duration"]["pearson_r"] == pytest.approx(pearsonr(d, real["score"]).statistic)
    assert metrics["duration"]["n_real"] == len(real)


# ------------------------------------------------------------------ minimums


def test_too_short_inputs_are_refused_or_left_out(tmp_path: Path) -> None:
    from featstore.trainers.kinds.syncfree import train
    from featstore.trainers.syncfree import PRESETS

    store = open_store(tmp_path / "f.zarr", mode="a", durable=False)
    for encoder in ("aud", "vis"):
        write_planted_dataset(store, "mix", n_videos=12, dim=8, encoder=encoder, seed=5,
                              n_frames=(10, 60))  # fmt: skip
    run = train(store, audio="aud", visual="vis", on="mix:*", out=tmp_path / "sf",
                config=PRESETS["speechforensics"])  # fmt: skip
    detector = kinds.load(run.path)
    assert detector.min_rows == 31 and "shifts -15..15" in detector.min_rows_reason
    manifest = store.manifest("mix")
    lengths = {
        v: round(d * 25) for v, d in zip(manifest["video_id"], manifest["duration_s"], strict=True)
    }
    short = sorted(v for v, n in lengths.items() if n < 31)
    assert short, "the fixture needs short videos"
    keys = [f.key for f in detector.features]
    with pytest.raises(InputTooShortError, match="needs at least 31 rows"):
        detector.score_video(read_video(store, "mix", short[0], keys))
    metrics = evaluate(run.path, store, "mix:*")
    assert metrics["too_short"]["n"] == len(short) and metrics["too_short"]["min_rows"] == 31
    assert set(metrics["too_short"]["video_ids"]) == set(short[:20])
    assert metrics["n_scored"] == len(manifest) - len(short)


def test_window_rule_minimums_and_plan() -> None:
    profile = LengthProfile.of([40, 60, 80, 100, 200], 25.0, selection="x:train")
    rule = window_rule(profile, kind_min_rows=31, kind_reason="context", frame_hz=25.0)
    assert rule.window_rows == profile.median_rows and rule.hop_rows == rule.window_rows // 2
    assert rule.min_rows == max(31, -(-profile.p5_rows // 2)) and rule.kind_min_rows == 31
    assert rule.plan(rule.window_rows) == []
    plan = rule.plan(3 * rule.window_rows + 7)
    assert plan[0][0] == 0 and plan[-1][1] == 3 * rule.window_rows + 7
    assert all(b - a == rule.window_rows for a, b in plan)
    assert all(b2 - b1 <= rule.hop_rows for (_, b1), (_, b2) in itertools.pairwise(plan))
    with pytest.raises(InputTooShortError, match="trained on clips"):
        WindowRule(10, 5, 8, 1, 25.0, "the run was trained on clips").check(
            3, service=True, who="run x"
        )
    rule.check(31, service=False, who="x")  # the kind's minimum passes


# ------------------------------------------------------------------ runs written before


def test_runs_without_a_card_keep_the_paper_reading(
    fixed_length: tuple[FeatureStore, Path], tmp_path: Path
) -> None:
    import shutil

    store, path = fixed_length
    old = tmp_path / "old"
    shutil.copytree(path, old)
    config = json.loads((old / "config.json").read_text())
    del config["localization"], config["lengths"]
    (old / "config.json").write_text(json.dumps(config))
    detector = kinds.load(old)
    assert not detector.localization.calibrated and detector.localization.threshold == 0.0
    assert detector.localization.rules == PAPER_RULES and detector.window_rule.window_rows == 0
    metrics = evaluate(old, store, "toy:test", write=False)
    assert metrics["frame_threshold"]["name"] == "paper"
    assert "not calibrated" in metrics["frame_threshold"]["run_card"]
    key = FeatureKey("aud")
    x = read_video(store, "toy", store.manifest("toy")["video_id"].iloc[0], [key])[key]
    assert not detector.score_video({key: np.tile(x, (4, 1))}).windowed
