"""Tiny random FSFM checkpoints in FSFM's own format, for tests and demos only.

:func:`save_tiny_checkpoint` writes what FSFM's pre-training saves with
``torch.save``: ``{"model": state_dict, "epoch": ...}`` with timm's ViT key names,
plus FSFM's pre-training extras (``mask_token``, ``decoder*``, ``rep_decoder*``,
``projector``, ``predictor``) that the loader lists as unused. The ViT is 16 wide,
2 blocks, 1 head (what :func:`featstore.encoders.fsfm.infer_config` infers for
width 16) and 32-pixel patches over FSFM's 224x224 face crops (7x7 patches): its
features mean nothing.

>>> path = save_tiny_checkpoint(tmp / "checkpoint-400.pth")  # doctest: +SKIP
>>> enc = load_encoder("fsfm", str(path))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featstore.encoders.fsfm import ViTConfig, infer_config

__all__ = ["PRETRAINING_EXTRAS", "TINY", "fsfm_state_dict", "save_tiny_checkpoint"]

TINY = ViTConfig(img_size=224, patch_size=32, embed_dim=16, depth=2, num_heads=1, mlp_dim=32)
PRETRAINING_EXTRAS: dict[str, tuple[int, ...]] = {
    "mask_token": (1, 1, 8),
    "decoder_embed.weight": (8, 16),
    "decoder_blocks.0.norm1.weight": (8,),
    "decoder_pred.weight": (12, 8),
    "rep_decoder_embed.weight": (8, 16),
    "projector.projection_head.0.weight": (32, 16),
    "predictor.projection_head.0.weight": (32, 32),
}
"""Shapes of FSFM pre-training keys that are not part of the encoder (not loaded)."""


def fsfm_state_dict(config: ViTConfig = TINY, *, seed: int = 0) -> dict[str, Any]:
    """A random encoder state dict with FSFM's keys for ``config``: norm scales near 1,
    other weights ``N(0, 0.2)``, so activations stay O(1) through the tiny ViT."""
    import torch

    from featstore.encoders.fsfm import build_vit

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for key, value in build_vit(config).state_dict().items():
        is_norm_scale = "norm" in key and key.endswith(".weight")
        state[key] = float(is_norm_scale) + 0.2 * torch.randn(value.shape, generator=gen)
    return state


def save_tiny_checkpoint(
    path: str | Path,
    *,
    config: ViTConfig = TINY,
    seed: int = 0,
    extras: bool = True,
    epoch: int = 400,
) -> Path:
    """Write a random FSFM-format checkpoint of ``config`` to ``path``; return it.

    ``extras``: include the pre-training keys (:data:`PRETRAINING_EXTRAS`) beside the
    encoder's. ``config`` must be one that :func:`infer_config` reads back from the
    shapes (its heads follow from the width), or the saved model would load differently.
    """
    import torch

    state = fsfm_state_dict(config, seed=seed)
    inferred = infer_config(state)
    if inferred != config:
        raise ValueError(
            f"FSFM checkpoints do not record {config}; loading would infer {inferred} "
            "(heads follow from the width: see featstore.encoders.fsfm.FSFM_HEADS)"
        )
    if extras:
        gen = torch.Generator().manual_seed(seed + 1)
        state.update(
            {k: torch.randn(shape, generator=gen) for k, shape in PRETRAINING_EXTRAS.items()}
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "epoch": epoch}, path)
    return path
