"""featstore.encoders.fbank against python_speech_features (the reference AV-HuBERT calls)."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.encoders.fbank import layer_norm_rows, logfbank, mel_filterbank, stack_frames

psf = pytest.importorskip("python_speech_features")


# < one window, = one window, one sample over, not a multiple of the step, 1 s, odd lengths
@pytest.mark.parametrize("n", [1, 100, 399, 400, 401, 560, 561, 1234, 16000, 16001, 24077])
def test_logfbank_matches_reference(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n) * 0.1
    ours = logfbank(x)
    ref = psf.logfbank(x)
    assert ours.shape == ref.shape == (1 if n <= 400 else 1 + -(-(n - 400) // 160), 26)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_logfbank_int16_and_silence_floor():
    """int16 input as AV-HuBERT reads wav files; silence hits the eps floor in both."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(8000) * 3000).astype(np.int16)
    x[2000:4000] = 0
    np.testing.assert_allclose(logfbank(x), psf.logfbank(x), rtol=1e-6, atol=1e-9)
    silent = logfbank(np.zeros(1000))
    np.testing.assert_array_equal(silent, np.log(np.finfo(np.float64).eps))
    np.testing.assert_array_equal(silent, psf.logfbank(np.zeros(1000)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"samplerate": 8000, "nfilt": 40, "nfft": 256, "winlen": 0.032, "winstep": 0.016},
        {"samplerate": 16000, "lowfreq": 300, "highfreq": 5000, "preemph": 0.0},
        {"samplerate": 22050, "nfilt": 20, "nfft": 1024},  # 551.25 samples per window rounds
    ],
)
def test_logfbank_non_default_arguments(kwargs):
    x = np.random.default_rng(2).standard_normal(9001)
    ours = logfbank(
        x,
        kwargs["samplerate"],
        win_s=kwargs.get("winlen", 0.025),
        step_s=kwargs.get("winstep", 0.01),
        n_filters=kwargs.get("nfilt", 26),
        n_fft=kwargs.get("nfft", 512),
        low_hz=kwargs.get("lowfreq", 0),
        high_hz=kwargs.get("highfreq"),
        preemph=kwargs.get("preemph", 0.97),
    )
    np.testing.assert_allclose(ours, psf.logfbank(x, **kwargs), rtol=1e-6, atol=1e-9)


def test_mel_filterbank_matches_reference():
    np.testing.assert_allclose(
        mel_filterbank(26, 512, 16000), psf.get_filterbanks(26, 512, 16000), rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="high_hz"):
        mel_filterbank(26, 512, 16000, high_hz=9000)


def test_logfbank_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        logfbank(np.zeros((2, 400)))


@pytest.mark.parametrize(("n", "rows"), [(1, 1), (4, 1), (5, 2), (7, 2), (8, 2), (99, 25)])
def test_stack_frames_shapes_and_zero_padded_remainder(n, rows):
    feats = np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 1  # no zeros of its own
    out = stack_frames(feats, k=4)
    assert out.shape == (rows, 12) and out.dtype == np.float32
    flat = out.reshape(-1, 3)  # [rows * 4, 3]: the frames back in order
    np.testing.assert_array_equal(flat[:n], feats)
    np.testing.assert_array_equal(flat[n:], 0)  # the remainder is padded with zeros at the end
    # row t holds frames 4t .. 4t+3, concatenated on the feature axis
    np.testing.assert_array_equal(out[0, 3:6], feats[1] if n > 1 else 0)


def test_stack_frames_errors():
    with pytest.raises(ValueError, match=r"\[F, D\]"):
        stack_frames(np.zeros(8))
    with pytest.raises(ValueError, match="k must be"):
        stack_frames(np.zeros((8, 2)), k=0)


def test_layer_norm_rows():
    x = np.random.default_rng(3).standard_normal((6, 104)) * 5 + 3
    y = layer_norm_rows(x)
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=1), 1, rtol=1e-5)  # eps 1e-5 in the denominator
    np.testing.assert_array_equal(layer_norm_rows(np.zeros((2, 4))), 0)
