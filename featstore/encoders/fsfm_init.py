"""Random initialisation of FSFM's ViT: FSFM's own (MAE's) scheme, or BERT-style.

FSFM trains its ViT from scratch with ``FSFMViT.initialize_weights``
(wolo-wolo/FSFM-CVPR25 ``fsfm-3c/models_fsfm.py``, MAE's code), on the encoder:

- ``pos_embed``: the fixed 2-D sin-cos embedding of ``util/pos_embed.py``
  (:func:`sincos_pos_embed`), a zero row for the CLS token;
- ``patch_embed.proj.weight``: ``xavier_uniform_`` on its ``[D, 3 * p * p]`` view (the
  patch projection initialised like a Linear); its bias keeps Conv2d's default;
- ``cls_token``: ``N(0, 0.02)``;
- every ``Linear``: ``xavier_uniform_``, bias 0; every ``LayerNorm``: 1, 0.

The fine-tuned model's ``fc_norm`` is a LayerNorm (1, 0) like the pre-trained ``norm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featstore.encoders.random_init import BERT, InitScheme, bert_init_

if TYPE_CHECKING:
    from torch import nn

    from featstore.encoders.fsfm import ViTConfig

__all__ = ["init_mae_", "init_random_", "sincos_pos_embed"]


def init_random_(vit: nn.Module, config: ViTConfig, scheme: InitScheme) -> None:
    """Initialise a freshly built ViT with ``scheme`` (FSFM's native one or :data:`BERT`)."""
    if scheme is BERT:
        bert_init_(vit)
    else:
        init_mae_(vit, config)


def init_mae_(vit: nn.Module, config: ViTConfig) -> None:
    """FSFM's ``initialize_weights`` on the encoder (module docstring); the global generator
    draws (:func:`~featstore.encoders.random_init.seeded` around the build)."""
    import torch
    from torch import nn

    grid = config.img_size // config.patch_size
    with torch.no_grad():
        table = sincos_pos_embed(config.embed_dim, grid)  # [1 + grid^2, D]
        vit.pos_embed.copy_(torch.from_numpy(table).float()[None])
        weight = vit.patch_embed.proj.weight  # [D, 3, p, p]
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(vit.cls_token, std=0.02)
        for m in vit.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position embedding with a zero CLS row: ``[1 + grid^2, dim]``.

    Patch ``r * grid + c`` (row-major): the first half of the channels encodes the
    column ``c``, the second the row ``r`` (MAE's ``meshgrid(w, h)`` puts w first); each
    half is ``[sin(x * w_i), cos(x * w_i)]`` with ``w_i = 10000^(-i / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # [D/4]
        angles = pos.reshape(-1).astype(np.float64)[:, None] * omega[None]  # [grid^2, D/4]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # [grid^2, D/2]

    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)  # [grid^2, D]
    return np.concatenate([np.zeros((1, dim)), table], axis=0)  # [1 + grid^2, D]
