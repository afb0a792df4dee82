"""The weight-free baselines ``logfbank`` and ``mouth-pixels``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from featstore.encoders import (
    CheckpointError,
    Clip,
    ClipError,
    EncoderError,
    get_spec,
    load_encoder,
)

psf = pytest.importorskip("python_speech_features")


def _audio(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _reference_audio_rows(audio: np.ndarray) -> np.ndarray:
    """AV-HuBERT's pipeline, written out: int16-scale logfbank, stack 4 with zero
    padding, per-row layer norm (eps 1e-5), trimmed to whole 25 fps frames."""
    feats = psf.logfbank(audio.astype(np.float64) * 32768.0, samplerate=16000)  # [F, 26]
    pad = -len(feats) % 4
    feats = np.concatenate([feats, np.zeros((pad, 26))]).reshape(-1, 104)  # [ceil(F/4), 104]
    mean = feats.mean(axis=1, keepdims=True)
    feats = (feats - mean) / np.sqrt(feats.var(axis=1, keepdims=True) + 1e-5)
    return feats[: len(audio) // 640]


def test_specs():
    for name, modality, crop, dim in [
        ("logfbank", "audio", "none", 104),
        ("mouth-pixels", "visual", "mouth", 484),
    ]:
        spec = get_spec(name)
        assert (spec.modality, spec.crop, spec.frame_hz, spec.dim) == (modality, crop, 25.0, dim)
        assert spec.default_checkpoint is None and not spec.has_weights
        enc = load_encoder(name)
        assert enc.layer_dims == {"last": dim}
        assert enc.info(layers=["last"]).layer_dims == {"last": dim}


# whole frames; a trailing partial frame (short of and past 80 samples); shortest possible
@pytest.mark.parametrize("n", [640, 1280, 16000, 16080, 16081, 16639, 40000 + 123])
def test_logfbank_rows_match_avhubert_pipeline(n):
    audio = _audio(n, seed=n)
    enc = load_encoder("logfbank")
    (out,) = enc.encode([Clip("v", audio=audio)], ["last"])
    rows = out["last"]
    assert rows.dtype == np.float32 and rows.shape == (n // 640, 104)
    assert rows.shape[0] == Clip("v", audio=audio).duration_frames  # the 25 fps frame count
    np.testing.assert_allclose(rows, _reference_audio_rows(audio), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(rows.std(axis=1), 1, atol=1e-3)


def test_logfbank_uses_int16_scale_near_the_log_floor():
    """Very quiet audio: float64 eps floors energies unless samples are int16-scaled first."""
    audio = _audio(6400, seed=9) * np.float32(1e-8)
    (out,) = load_encoder("logfbank").encode([Clip("v", audio=audio)], ["last"])
    np.testing.assert_allclose(out["last"], _reference_audio_rows(audio), rtol=1e-4, atol=1e-4)


def test_logfbank_last_row_holds_zero_padding():
    """16000 samples give 99 filterbank frames: the 25th row's last 26 dims are the pad."""
    audio = _audio(16000, seed=5)
    (out,) = load_encoder("logfbank").encode([Clip("v", audio=audio)], "last")
    rows = out["last"]  # [25, 104]
    assert rows.shape == (25, 104)
    pad = rows[-1, 78:]  # zeros before the layer norm: one value, the row's shift
    np.testing.assert_allclose(pad, pad[0], atol=1e-6)
    assert np.ptp(rows[-2, 78:]) > 0.1  # a full row has no such constant block


def test_logfbank_is_batch_independent_and_scale_robust():
    a, b = _audio(8000, 1), _audio(20000, 2)
    enc = load_encoder("logfbank")
    together = enc.encode([Clip("a", audio=a), Clip("b", audio=b)], ["last"])
    alone = enc.encode([Clip("b", audio=b)], ["last"])
    np.testing.assert_array_equal(together[1]["last"], alone[0]["last"])
    # the layer norm removes the log's constant offset: loudness does not change the rows
    # (20000 samples give 124 filterbank frames: no zero-padded row, which would differ)
    louder = enc.encode([Clip("b", audio=b * 4)], ["last"])
    np.testing.assert_allclose(louder[0]["last"], alone[0]["last"], atol=1e-4)


def _reference_mouth_rows(frames: np.ndarray) -> np.ndarray:
    out = np.empty((len(frames), 22, 22))
    for t, frame in enumerate(frames):
        crop = frame[4:92, 4:92].astype(np.float64) / 255.0  # AV-HuBERT's CenterCrop(88)
        for i in range(22):
            for j in range(22):
                out[t, i, j] = crop[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean()
    return ((out - 0.421) / 0.165).reshape(len(frames), 484)


def test_mouth_pixels_rows():
    frames = np.random.default_rng(0).integers(0, 256, (5, 96, 96), dtype=np.uint8)
    enc = load_encoder("mouth-pixels")
    (out,) = enc.encode([Clip("v", frames=frames)], ["last"])
    rows = out["last"]
    assert rows.dtype == np.float32 and rows.shape == (5, 484)
    np.testing.assert_allclose(rows, _reference_mouth_rows(frames), rtol=1e-6, atol=1e-6)
    # the 4-pixel border outside the 88x88 crop does not matter
    bordered = frames.copy()
    bordered[:, :4] = 255
    bordered[:, :, 92:] = 0
    (again,) = enc.encode([Clip("v", frames=bordered)], ["last"])
    np.testing.assert_array_equal(again["last"], rows)
    # a flat grey frame maps to one value: (v / 255 - 0.421) / 0.165
    flat = np.full((1, 96, 96), 128, dtype=np.uint8)
    (grey,) = enc.encode([Clip("v", frames=flat)], ["last"])
    np.testing.assert_allclose(grey["last"], (128 / 255 - 0.421) / 0.165, rtol=1e-6)


def test_mouth_pixels_one_row_per_frame_with_audio_present():
    frames = np.zeros((37, 96, 96), dtype=np.uint8)
    clip = Clip("v", frames=frames, audio=_audio(37 * 640 + 300))
    (out,) = load_encoder("mouth-pixels").encode([clip], ["last"])
    assert out["last"].shape == (37, 484) and clip.duration_frames == 37


@pytest.mark.parametrize(
    ("name", "clip", "match"),
    [
        ("logfbank", Clip("v1", frames=np.zeros((3, 96, 96), np.uint8)), "needs audio"),
        ("logfbank", Clip("v2", audio=_audio(639)), "shorter than one 25 fps frame"),
        ("logfbank", Clip("v3", audio=np.zeros(1280, np.int16)), "float mono audio"),
        ("logfbank", Clip("v4", audio=np.zeros((2, 1280), np.float32)), "float mono audio"),
        ("logfbank", Clip("v5", audio=np.full(1280, np.nan, np.float32)), "NaN"),
        ("mouth-pixels", Clip("v6", audio=_audio(1280)), "no frames"),
        ("mouth-pixels", Clip("v7", frames=np.zeros((3, 96, 96, 3), np.uint8)), "grey uint8"),
        ("mouth-pixels", Clip("v8", frames=np.zeros((3, 88, 88), np.uint8)), "grey uint8"),
        ("mouth-pixels", Clip("v9", frames=np.zeros((3, 96, 96), np.float32)), "grey uint8"),
        ("mouth-pixels", Clip("v10", frames=np.zeros((0, 96, 96), np.uint8)), "no frames"),
    ],
)
def test_clip_errors_name_the_video(name, clip, match):
    with pytest.raises(ClipError, match=match) as info:
        load_encoder(name).encode([clip], ["last"])
    assert clip.video_id in str(info.value)


def test_loader_options():
    with pytest.raises(CheckpointError, match="no weights"):
        load_encoder("logfbank", checkpoint="some/model")
    with pytest.raises(EncoderError, match="no options"):
        load_encoder("mouth-pixels", window=3)
    with pytest.raises(EncoderError, match="no layer"):
        load_encoder("logfbank").encode([Clip("v", audio=_audio(1280))], [0])
    # random_init, device and dtype change nothing: there are no weights
    audio = _audio(3200)
    plain = load_encoder("logfbank").encode([Clip("v", audio=audio)], ["last"])
    rand = load_encoder("logfbank", random_init=True, device="cuda", dtype="float16")
    assert rand.random_init is False
    np.testing.assert_array_equal(
        rand.encode([Clip("v", audio=audio)], ["last"])[0]["last"], plain[0]["last"]
    )


def test_import_is_torch_free():
    code = (
        "import sys, featstore.encoders.baselines, featstore.encoders.fbank;"
        "from featstore.encoders import specs; specs();"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
