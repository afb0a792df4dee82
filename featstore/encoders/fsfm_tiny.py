"""Tiny random FSFM checkpoints in FSFM's own formats, for tests and demos only.

:func:`save_tiny_checkpoint` writes what FSFM's ``misc.save_model`` saves with
``torch.save``: ``{"model": state_dict, "optimizer": ..., "epoch": ..., "scaler": ...,
"args": argparse.Namespace}``, with timm's ViT key names, in either layout of
:mod:`featstore.encoders.fsfm`:

- ``fine-tuned`` (default, like ``FF++_c23_32frames/checkpoint-min_val_loss.pth``):
  the encoder, ``fc_norm`` and the 2-class ``head`` of ``models_vit`` with
  ``global_pool``;
- ``pre-trained`` (like ``VF2_ViT-B/checkpoint-400.pth``): the encoder, ``norm`` and
  FSFM's pre-training extras (``mask_token``, ``decoder*``, ``rep_decoder*``,
  ``projector``, ``predictor``).

The ViT is 16 wide, 2 blocks, 1 head (what :func:`featstore.encoders.fsfm.infer_config`
infers for width 16) and 32-pixel patches over FSFM's 224x224 face crops (7x7
patches): its features mean nothing.

>>> path = save_tiny_checkpoint(tmp / "FF++_c23_32frames/checkpoint-min_val_loss.pth")  # doctest: +SKIP
>>> enc = load_encoder("fsfm", str(path))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from featstore.encoders.fsfm import FINE_TUNED, PRE_TRAINED, ViTConfig, infer_config

__all__ = [
    "HEAD_CLASSES",
    "PRETRAINING_EXTRAS",
    "TINY",
    "fsfm_state_dict",
    "save_tiny_checkpoint",
]

TINY = ViTConfig(img_size=224, patch_size=32, embed_dim=16, depth=2, num_heads=1, mlp_dim=32)
HEAD_CLASSES = 2  # real / fake (main_finetune_DfD.py --nb_classes 2)
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
FINAL_NORM = {FINE_TUNED: "fc_norm", PRE_TRAINED: "norm"}


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
    layout: str = FINE_TUNED,
    seed: int = 0,
    extras: bool = True,
    epoch: int | None = None,
) -> Path:
    """Write a random FSFM checkpoint of ``config`` in ``layout`` to ``path``; return it.

    ``layout``: ``"fine-tuned"`` or ``"pre-trained"`` (it sets ``config.final_norm``).
    ``extras``: include the keys outside the encoder (the fine-tuned ``head`` or the
    pre-training heads). ``config`` must be one that :func:`infer_config` reads back from
    the shapes (its heads follow from the width), or the saved model would load
    differently.
    """
    import torch

    if layout not in FINAL_NORM:
        raise ValueError(f"layout must be {FINE_TUNED!r} or {PRE_TRAINED!r}, got {layout!r}")
    config = dataclasses.replace(config, final_norm=FINAL_NORM[layout])
    state = fsfm_state_dict(config, seed=seed)
    inferred = infer_config(state)
    if inferred != config:
        raise ValueError(
            f"FSFM checkpoints do not record {config}; loading would infer {inferred} "
            "(heads follow from the width: see featstore.encoders.fsfm.FSFM_HEADS)"
        )
    gen = torch.Generator().manual_seed(seed + 1)
    if extras and layout == FINE_TUNED:
        state["head.weight"] = 2e-5 * torch.randn(HEAD_CLASSES, config.embed_dim, generator=gen)
        state["head.bias"] = torch.zeros(HEAD_CLASSES)
    elif extras:
        state.update(
            {k: torch.randn(shape, generator=gen) for k, shape in PRETRAINING_EXTRAS.items()}
        )
    fine_tuned = layout == FINE_TUNED
    args = argparse.Namespace(  # what main_finetune_DfD.py / main_pretrain.py pickle
        model="vit_base_patch16" if fine_tuned else "fsfm_vit_base_patch16",
        input_size=config.img_size,
        nb_classes=HEAD_CLASSES,
        global_pool=fine_tuned,
        epochs=10 if fine_tuned else 400,
    )
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": epoch if epoch is not None else (9 if fine_tuned else 400),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5},
        "args": args,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
