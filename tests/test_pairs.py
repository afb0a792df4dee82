"""Pairing stored audio and visual features: selection, rates, reconciling, silence trimming."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from featstore.errors import UnknownEncoderError
from featstore.store import EncoderInfo
from featstore.trainers.data import SelectionError
from featstore.trainers.pairs import (
    PairedVideo,
    PairingError,
    iter_pairs,
    load_pairs,
    select_pairs,
    stack_rows,
)

# video id -> (label, split, audio rows, visual rows)
VIDEOS = {
    "a": (0, "test", 30, 30),
    "b": (1, "test", 32, 29),  # audio longer
    "c": (0, "test", 20, 24),  # visual longer
    "d": (1, "test", 25, 25),
    "e": (0, "train", 10, 10),
}


def _write(store, *, visual_hz: float = 25.0, missing_visual=(), silence=None, modify=None):
    rows = []
    for i, (vid, (label, split, _, _)) in enumerate(VIDEOS.items()):
        row = {
            "video_id": vid,
            "label": label,
            "split": split,
            "modify_type": (modify or {}).get(vid, "both_modified" if label else "real"),
            "fake_segments": [[0.2, 0.6]] if label else [],
        }
        if silence is not None:
            row["leading_silence_s"] = silence[i]
        rows.append(row)
    store.write_manifest("toy", pd.DataFrame(rows))
    rng = np.random.default_rng(0)
    feats = {}
    for enc, hz, col in (("aud", 25.0, 2), ("vis", visual_hz, 3)):
        info = EncoderInfo(name=enc, frame_hz=hz, layer_dims={3: 6, "last": 6})
        with store.writer("toy", info) as writer:
            for vid, spec in VIDEOS.items():
                if enc == "vis" and vid in missing_visual:
                    continue
                x = rng.standard_normal((spec[col], 6)).astype(np.float16)
                feats[enc, vid] = x
                writer.add(vid, {3: x, "last": x})
    return feats


def test_pairs_are_reconciled_to_the_shorter_stream(store):
    feats = _write(store)
    pairs = load_pairs(store, "toy:test", "aud", "vis:last")
    assert [p.video_id for p in pairs] == ["a", "b", "c", "d"]
    for p in pairs:
        _, _, n_a, n_v = VIDEOS[p.video_id]
        assert (p.n_audio, p.n_visual) == (n_a, n_v)
        assert p.audio.shape == (min(n_a, n_v), 6) and p.visual.shape == (min(n_a, n_v), 6)
        assert p.audio.dtype == np.float32 and p.visual.dtype == np.float32
        np.testing.assert_array_equal(p.audio, feats["aud", p.video_id][: p.n_rows])
        np.testing.assert_array_equal(p.visual, feats["vis", p.video_id][: p.n_rows])
        assert p.frame_hz == 25.0
    assert pairs[1].label == 1 and pairs[1].fake_segments == ((0.2, 0.6),)
    assert pairs[0].fake_segments == ()


def test_iter_pairs_streams_and_layers_are_honoured(store):
    feats = _write(store)
    it = iter_pairs(store, "toy:test", "aud:3", "vis:3", real_only=True)
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert first.video_id == "a"
    np.testing.assert_array_equal(first.audio, feats["aud", "a"])
    assert [p.video_id for p in it] == ["c"]


def test_frame_rate_mismatch_is_an_error_unless_resampled(store):
    _write(store, visual_hz=12.5)
    with pytest.raises(PairingError, match=r"12\.5 Hz.*frame_hz=25"):
        load_pairs(store, "toy:test", "aud", "vis")
    with pytest.raises(PairingError):  # raised before any video is read
        iter_pairs(store, "toy:test", "aud", "vis")
    pairs = load_pairs(store, "toy:test", "aud", "vis", frame_hz=25.0)
    b = pairs[1]
    assert (b.n_audio, b.n_visual) == (32, 58)  # 29 rows at 12.5 Hz -> 58 at 25 Hz
    np.testing.assert_array_equal(b.visual[0], b.visual[1])  # each slow row repeated twice
    assert b.frame_hz == 25.0


def test_missing_visual_features(store):
    _write(store, missing_visual=("b",))
    with pytest.raises(SelectionError, match=r"no vis:last features.*'b'"):
        load_pairs(store, "toy:test", "aud", "vis")
    pairs = load_pairs(store, "toy:test", "aud", "vis", allow_missing=True)
    assert [p.video_id for p in pairs] == ["a", "c", "d"]


def test_evaluation_filter_and_selection_errors(store):
    _write(store, modify={"b": "audio_modified"})
    rows = select_pairs(store, "toy:test", "aud", "vis", fakes="paper")
    assert rows["video_id"].tolist() == ["a", "c", "d"]
    with pytest.raises(SelectionError, match="no split 'val'"):
        load_pairs(store, "toy:val", "aud", "vis")
    with pytest.raises(UnknownEncoderError, match="no encoder 'nope'"):
        load_pairs(store, "toy:test", "aud", "nope")


def test_trim_silence_needs_a_manifest_column(store):
    _write(store)
    with pytest.raises(PairingError, match="leading_silence_s"):
        load_pairs(store, "toy:test", "aud", "vis", trim_silence=True)


def test_trim_silence_skips_rows_of_both_streams(store):
    feats = _write(store, silence=[0.0, 0.1, 0.05, 0.3, 0.0])
    pairs = load_pairs(store, "toy:test", "aud", "vis", trim_silence=True)
    b = pairs[1]  # 0.1 s -> int(2.5) + 1 = 3 rows dropped (AVH-Align)
    assert b.silence_skip_rows == 3
    assert (b.n_audio, b.n_visual, b.n_rows) == (29, 26, 26)
    np.testing.assert_array_equal(b.audio, feats["aud", "b"][3:29])
    np.testing.assert_array_equal(b.visual, feats["vis", "b"][3:29])
    assert pairs[0].silence_skip_rows == 1  # 0 s still drops the first frame, as AVH-Align


def test_trim_silence_rejects_bad_values_and_empty_videos(store):
    _write(store, silence=[0.0, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(PairingError, match="1 videos have no valid"):
        load_pairs(store, "toy:test", "aud", "vis", trim_silence=True)


def test_trim_silence_longer_than_the_video(store):
    _write(store, silence=[2.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(PairingError, match="a: no rows left"):
        load_pairs(store, "toy:test", "aud", "vis", trim_silence=True)


def test_stack_rows():
    rng = np.random.default_rng(1)
    pairs = [
        PairedVideo(
            f"v{t}", 0, rng.standard_normal((t, 2)), rng.standard_normal((t, 3)), (), 25.0, t, t
        )
        for t in (3, 1, 4)
    ]
    audio, visual, offsets = stack_rows(pairs)
    assert audio.shape == (8, 2) and visual.shape == (8, 3)
    assert offsets.tolist() == [0, 3, 4, 8]
    np.testing.assert_array_equal(visual[4:8], pairs[2].visual)
    with pytest.raises(PairingError):
        stack_rows([])
