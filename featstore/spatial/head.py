"""The per-frame linear readout a spatial explanation explains: ``z = w . phi(f) + b``.

``f`` is an encoder's frame feature (one stored row) and ``phi`` the optional L2
normalisation ``f / max(||f||, eps)`` (the paper's probe normalises every frame,
Eq. 1). A trained linear probe is exactly this; the store side knows nothing of
runs, so callers build a :class:`FrameHead` from whatever detector they hold.

>>> head = FrameHead(weight=np.ones(4, np.float32), bias=-0.5)
>>> head.logits_np(np.array([[3.0, 4.0, 0.0, 0.0]], np.float32)).round(3).tolist()
[0.9]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import torch

__all__ = ["NORM_EPS", "FrameHead", "HeadError"]

NORM_EPS = 1e-12  # as torch.nn.functional.normalize (and the probe): f / max(||f||, eps)


class HeadError(FeatstoreError):
    """A frame head does not fit the features it is applied to."""


@dataclass(frozen=True, eq=False)
class FrameHead:
    """``z = w . phi(f) + b`` on frame features ``f [D]``; ``phi`` = L2 normalisation or identity."""

    weight: np.ndarray = field(repr=False)  # [D] float32
    bias: float = 0.0
    l2_normalize: bool = True

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise HeadError(f"a frame head's weight must be a non-empty vector, got {w.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", float(self.bias))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def check(self, dim: int, what: str) -> None:
        if dim != self.dim:
            raise HeadError(f"the frame head is {self.dim}-wide but {what} is {dim}-wide")

    def scale(self, f: torch.Tensor) -> torch.Tensor:
        """``[N, D] -> [N]``: the factor ``phi`` multiplies a frame by (1 without normalisation)."""
        import torch

        if not self.l2_normalize:
            return torch.ones(f.shape[0], dtype=f.dtype, device=f.device)
        return 1.0 / f.norm(dim=-1).clamp_min(NORM_EPS)

    def w(self, like: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.as_tensor(self.weight, device=like.device).to(like.dtype)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """``[N, D] -> [N]`` frame logits (differentiable)."""
        self.check(int(f.shape[-1]), "the frame feature")
        return (f @ self.w(f)) * self.scale(f) + self.bias

    def logits_np(self, f: np.ndarray) -> np.ndarray:
        """``[N, D] -> [N]`` float64 logits computed in numpy (a reference for tests and checks)."""
        f = np.asarray(f, dtype=np.float64)
        self.check(int(f.shape[-1]), "the frame feature")
        z = f @ self.weight.astype(np.float64)
        if self.l2_normalize:
            z = z / np.maximum(np.linalg.norm(f, axis=-1), NORM_EPS)
        return z + self.bias
