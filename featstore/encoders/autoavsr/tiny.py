"""Tiny random Auto-AVSR checkpoints in the original formats, for tests and demos only.

:func:`save_tiny_checkpoint` writes a bare state dict laid out as Auto-AVSR saves
it (current or legacy layout, see :mod:`.config`), with the speech recogniser's
``decoder.*`` / ``ctc.*`` heads, so that loading it exercises the real code path.
Widths are tiny and the weights random: the features mean nothing.

>>> path = save_tiny_checkpoint("autoavsr-vsr", tmp / "vsr.pth")  # doctest: +SKIP
>>> enc = load_encoder("autoavsr-vsr", str(path))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.encoders.autoavsr.config import AutoAVSRConfig, BranchConfig
from featstore.encoders.base import EncoderError

MODALITY = {"autoavsr-asr": "audio", "autoavsr-vsr": "visual", "autoavsr-avsr": "audiovisual"}
TINY_BRANCH = dict(
    d_model=16, n_heads=2, ffn_dim=24, n_blocks=2, conv_kernel=5, widths=(4, 4, 8, 8)
)


def tiny_config(modality: str, **overrides: Any) -> AutoAVSRConfig:
    """A 16-wide, 2-block model of ``modality`` (ResNet widths 4/4/8/8)."""
    kw = {**TINY_BRANCH, **overrides}
    video = BranchConfig("video", **kw) if modality in ("visual", "audiovisual") else None
    audio = BranchConfig("audio", **kw) if modality in ("audio", "audiovisual") else None
    return AutoAVSRConfig(modality, video=video, audio=audio, fusion_hidden=32)


def _legacy(key: str) -> str:
    """Canonical branch key -> the legacy encoder's key (front end inside the encoder)."""
    for new, old in (("frontend.", "encoder.frontend."), ("proj_encoder.", "encoder.embed.0.")):
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def original_state_dict(
    state: dict[str, Any], config: AutoAVSRConfig, layout: str
) -> dict[str, Any]:
    """Rename a canonical state dict to Auto-AVSR's ``layout`` ("current" | "legacy")."""
    if config.modality == "audiovisual":
        if layout != "legacy":
            raise EncoderError("Auto-AVSR's audio-visual model exists only in the legacy layout")
        out = {}
        for key, value in state.items():
            if key.startswith("video."):
                out[_legacy(key[len("video.") :])] = value
            elif key.startswith("audio."):
                out["aux_" + _legacy(key[len("audio.") :])] = value
            else:
                out[key] = value  # fusion.*
        return out
    if layout == "current":
        return dict(state)
    if layout == "legacy":
        return {_legacy(k): v for k, v in state.items()}
    raise EncoderError(f"layout must be 'current' or 'legacy', got {layout!r}")


def save_tiny_checkpoint(
    name: str, path: Path, *, layout: str | None = None, seed: int = 0, vocab: int = 11
) -> Path:
    """Write a tiny random ``.pth`` of encoder ``name`` in Auto-AVSR's format; return ``path``.

    ``layout``: "current" (default for asr/vsr) or "legacy" (the only one for avsr).
    BatchNorm running statistics are random too, so inference-mode BN is exercised.
    """
    import torch

    from featstore.encoders.autoavsr.model import build_model

    if name not in MODALITY:
        raise EncoderError(f"no tiny Auto-AVSR checkpoint for {name!r}; known: {sorted(MODALITY)}")
    config = tiny_config(MODALITY[name])
    layout = layout or ("legacy" if config.modality == "audiovisual" else "current")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in build_model(config).state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith(".weight") and value.dim() == 1:  # norm scales around 1
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.dim() >= 2 and not key.endswith(("pos_bias_u", "pos_bias_v")):
            fan_in = value[0].numel()  # keeps activations O(1) through the tiny network
            state[key] = torch.randn(value.shape, generator=gen) / fan_in**0.5
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    out = original_state_dict(state, config, layout)
    d = config.video.d_model if config.video is not None else config.audio.d_model  # type: ignore[union-attr]
    out["decoder.embed.0.weight"] = torch.randn(vocab, d, generator=gen)
    out["decoder.output_layer.weight"] = torch.randn(vocab, d, generator=gen)
    out["ctc.ctc_lo.weight"] = torch.randn(vocab, d, generator=gen)
    out["ctc.ctc_lo.bias"] = torch.zeros(vocab)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return path
