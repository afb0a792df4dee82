"""One contract suite run over every registered encoder (``featstore.encoders.specs()``).

Each encoder is loaded from :data:`CHECKPOINTS` (a factory writing a tiny
checkpoint in the family's original format) or, for weight-free encoders, with no
checkpoint; an encoder with weights and no factory fails
(``test_every_encoder_with_weights_has_a_factory``), so the suite covers every
registered encoder. Inputs are built from the spec's modality and crop.

The contract: rows per clip equal ``encoder.n_rows(clip.duration_frames)``
within one row (an encoder with its own windowing overrides ``n_rows``:
VideoMAE's ``(T // 16) * 8``); every layer's rows have ``layer_dims[layer]``
columns, are float32 and finite; encoding is deterministic and padding-safe
(a clip's rows do not depend on the other clips of the batch); unknown layers
raise ``EncoderError`` and a missing modality ``ClipError``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from featstore.encoders import (
    Clip,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
    load_encoder,
    specs,
)
from featstore.encoders.tiny import save_tiny_checkpoint


def _tiny(name: str) -> Callable[[Path], str]:
    return lambda directory: str(save_tiny_checkpoint(name, directory / name))


def _avhubert(directory: Path) -> str:
    from featstore.encoders.avhubert.tiny import save_tiny_checkpoint as save

    return str(save(directory / "avhubert.pt"))


def _autoavsr(name: str) -> Callable[[Path], str]:
    def factory(directory: Path) -> str:
        from featstore.encoders.autoavsr.tiny import save_tiny_checkpoint as save

        return str(save(name, directory / f"{name}.pth"))

    return factory


def _fsfm(directory: Path) -> str:
    from featstore.encoders.fsfm import DEFAULT_CHECKPOINT
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint as save

    return str(save(directory / DEFAULT_CHECKPOINT))  # the fine-tuned layout, as the default


CHECKPOINTS: dict[str, Callable[[Path], str]] = {
    "wav2vec2": _tiny("wav2vec2"),
    "clip": _tiny("clip"),
    "videomae": _tiny("videomae"),
    "avhubert-a": _avhubert,  # one pre-trained audio-visual checkpoint serves all three
    "avhubert-v": _avhubert,
    "avhubert-av": _avhubert,
    "autoavsr-asr": _autoavsr("autoavsr-asr"),
    "autoavsr-vsr": _autoavsr("autoavsr-vsr"),
    "autoavsr-avsr": _autoavsr("autoavsr-avsr"),
    "fsfm": _fsfm,
}
"""Encoder name -> factory writing a tiny checkpoint into a directory and returning its path."""

FRAME_COUNTS = (35, 21)  # two clips of different lengths (VideoMAE: 2 and 1 windows)


def checkpoint_for(spec: EncoderSpec, directory: Path) -> str | None:
    """The checkpoint to load ``spec`` from (None: weight-free)."""
    if spec.name in CHECKPOINTS:
        return CHECKPOINTS[spec.name](directory)
    if not spec.has_weights:
        return None
    pytest.fail(
        f"encoder {spec.name!r} has weights and no tiny checkpoint factory: "
        "add one to CHECKPOINTS in tests/test_encoder_contract.py"
    )


def _builtin_names() -> list[str]:
    """The project's own encoders (tests register toy ones that this contract is not about)."""
    from featstore.encoders import _REGISTRY

    return sorted(n for n in specs() if _REGISTRY[n][1].__module__.startswith("featstore."))


def test_every_encoder_with_weights_has_a_factory():
    builtin = _builtin_names()
    missing = sorted(n for n in builtin if specs()[n].has_weights and n not in CHECKPOINTS)
    assert not missing, f"add tiny checkpoint factories to CHECKPOINTS for {missing}"
    assert set(CHECKPOINTS) <= set(specs()), "CHECKPOINTS names an unregistered encoder"


def make_clip(spec: EncoderSpec, n_frames: int, *, seed: int, video_id: str = "v") -> Clip:
    """A clip of ``n_frames`` 25 fps frames with the inputs ``spec`` needs."""
    rng = np.random.default_rng(seed)
    audio = frames = None
    if spec.needs_audio:
        n = n_frames * 640 + 300  # a partial last frame, as decoded audio often has
        t = np.arange(n) / 16_000
        audio = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
        audio = audio.astype(np.float32)
    if spec.needs_video:
        shape = {"none": (40, 56, 3), "face": (224, 224, 3), "mouth": (96, 96)}[spec.crop]
        frames = rng.integers(0, 256, (n_frames, *shape), dtype=np.uint8)
    clip = Clip(video_id, frames=frames, audio=audio)
    if spec.needs_video:
        assert clip.duration_frames == n_frames
    return clip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=_builtin_names())
def encoder(request, tmp_path_factory) -> Encoder:
    spec = specs()[request.param]
    checkpoint = checkpoint_for(spec, tmp_path_factory.mktemp(spec.name))
    return load_encoder(spec.name, checkpoint)


@pytest.fixture(scope="module")
def clips(encoder) -> list[Clip]:
    return [
        make_clip(encoder.spec, n, seed=i, video_id=f"clip{i}") for i, n in enumerate(FRAME_COUNTS)
    ]


@pytest.fixture(scope="module")
def batched(encoder, clips) -> list[dict]:
    return encoder.encode(clips, "all")


def test_spec_and_layer_dims(encoder):
    spec = encoder.spec
    assert spec.name in specs() and spec.frame_hz > 0
    assert "last" in encoder.layer_dims
    assert all(d > 0 for d in encoder.layer_dims.values())
    blocks = sorted(k for k in encoder.layer_dims if isinstance(k, int))
    assert blocks == list(range(len(blocks)))  # hidden_states numbering: 0..n
    info = encoder.info()
    assert info.frame_hz == spec.frame_hz and dict(info.layer_dims) == encoder.layer_dims
    assert info.modality == spec.modality and info.crop == spec.crop


def test_rows_dims_dtype_finite(encoder, clips, batched):
    assert len(batched) == len(clips)
    for clip, rows in zip(clips, batched, strict=True):
        assert set(rows) == set(encoder.layer_dims)
        expected = encoder.n_rows(clip.duration_frames)
        counts = {layer: x.shape[0] for layer, x in rows.items()}
        assert len(set(counts.values())) == 1, counts  # every layer: the same time steps
        assert abs(next(iter(counts.values())) - expected) <= 1, (counts, expected)
        for layer, x in rows.items():
            assert x.ndim == 2 and x.shape[1] == encoder.layer_dims[layer], (layer, x.shape)
            assert x.dtype == np.float32
            assert np.isfinite(x).all()


def test_deterministic(encoder, clips, batched):
    again = encoder.encode(clips, "all")
    for a, b in zip(batched, again, strict=True):
        for layer in a:
            np.testing.assert_array_equal(a[layer], b[layer])


def test_padding_safe(encoder, clips, batched):
    reversed_batch = encoder.encode(clips[::-1], "all")[::-1]
    for i, clip in enumerate(clips):
        alone = encoder.encode([clip], "all")[0]
        for layer in alone:
            np.testing.assert_allclose(batched[i][layer], alone[layer], atol=1e-5, rtol=1e-4)
            np.testing.assert_allclose(reversed_batch[i][layer], alone[layer], atol=1e-5, rtol=1e-4)


def test_layer_subsets_match_all(encoder, clips, batched):
    rows = encoder.encode(clips[:1], ["last"])[0]
    assert list(rows) == ["last"]
    np.testing.assert_allclose(rows["last"], batched[0]["last"], atol=1e-5, rtol=1e-4)


def test_unknown_layer(encoder, clips):
    with pytest.raises(EncoderError):
        encoder.encode(clips[:1], [999])
    with pytest.raises(EncoderError):
        encoder.encode(clips[:1], ["no_such_layer"])


def test_missing_modality(encoder):
    spec = encoder.spec
    clip = make_clip(spec, 20, seed=0)
    if spec.needs_audio:
        clip.audio = None
    else:
        clip.frames = None
    with pytest.raises(ClipError):
        encoder.encode([clip], ["last"])


def test_registry_import_is_torch_free():
    code = (
        "import sys, featstore.encoders as e; e.specs(); "
        "import featstore.encoders.hf, featstore.encoders.tiny; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


def test_tiny_fsfm_checkpoint_reads_back(tmp_path):
    import dataclasses

    from featstore.encoders.fsfm import ViTConfig
    from featstore.encoders.fsfm_tiny import PRETRAINING_EXTRAS, TINY
    from featstore.encoders.fsfm_tiny import save_tiny_checkpoint as save

    encoder = load_encoder("fsfm", CHECKPOINTS["fsfm"](tmp_path))
    assert encoder.config == TINY and TINY.final_norm == "fc_norm"  # type: ignore[attr-defined]
    assert encoder.unused_keys == ["head.bias", "head.weight"]  # type: ignore[attr-defined]
    pre = load_encoder("fsfm", str(save(tmp_path / "pre.pth", layout="pre-trained")))
    assert pre.config == dataclasses.replace(TINY, final_norm="norm")  # type: ignore[attr-defined]
    assert sorted(pre.unused_keys) == sorted(PRETRAINING_EXTRAS)  # type: ignore[attr-defined]

    two_heads = ViTConfig(img_size=224, patch_size=32, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="would infer"):
        save(tmp_path / "bad.pth", config=two_heads)
