"""The two attributions of paper Sec. 3.1: an exact linear decomposition and Grad-CAM.

**Linear decomposition** (frame features that are a mean of patch tokens, [84]):
with ``f = (1/P) sum_p x_p`` and the head ``z = w . f / ||f|| + b``, patch ``p``
contributes ``c_p = w . x_p / (P ||f||)`` and ``sum_p c_p = z - b`` exactly. The
L2 normalisation is a per-frame scalar: a patch's contribution depends on the
other patches only through ``||f||``, the same for all of them. A LayerNorm
*after* the mean (FSFM's fine-tuned ``fc_norm``) is handled the same way:
``LN(m) = gamma * (m - mean_d m) / sigma(m) + beta``; the centring is linear and
``sigma(m)`` is again one scalar per frame, so ``c_p = w . (gamma * (x_p -
mean_d x_p)) / (P sigma ||f||)`` and the shift ``beta`` gives a per-frame
constant ``w . beta / ||f||`` that belongs to no patch (returned apart):
``sum_p c_p + constant = z - b`` exactly. A LayerNorm *before* the mean (per
token) is part of the tokens and needs nothing special.

**Grad-CAM** [64] for non-linear aggregation: activations ``A [N, K, C]`` (K
positions, C channels) of a hooked module and the gradients of each frame's
logit with respect to them; ``alpha_c = mean_k dz/dA_kc``, map ``= ReLU(sum_c
alpha_c A_kc)``. :func:`capture` is the forward hook that keeps the activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from featstore.spatial.head import FrameHead

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Captured",
    "Decomposition",
    "capture",
    "decompose_mean",
    "decompose_weighted",
    "grad_cam",
]


@dataclass(frozen=True, eq=False)
class Decomposition:
    """Per-patch contributions ``[N, P]``, the per-frame constant ``[N]`` and the frame logits
    ``[N]`` (computed from the frame feature itself, not from the contributions)."""

    contributions: torch.Tensor = field(repr=False)
    constant: torch.Tensor = field(repr=False)
    logits: torch.Tensor = field(repr=False)


def decompose_mean(
    tokens: torch.Tensor, head: FrameHead, *, norm: nn.LayerNorm | None = None
) -> Decomposition:
    """Contributions of ``tokens [N, P, D]`` to ``head(f)``, ``f = mean_p tokens``, or
    ``f = norm(mean_p tokens)`` when the encoder applies a LayerNorm after the mean."""
    import torch

    n, p, d = tokens.shape
    head.check(d, "the patch tokens")
    x = tokens.double()
    m = x.mean(dim=1)  # [N, D]
    w = torch.as_tensor(head.weight, device=x.device).double()
    if norm is None:
        f = m
        parts = x @ w / p  # [N, P]
        constant = torch.zeros(n, dtype=x.dtype, device=x.device)
    else:
        f = _layer_norm(norm, m)
        sigma = (m.var(dim=1, unbiased=False) + norm.eps).sqrt()  # [N]
        gamma = _param(norm.weight, d, x)
        beta = _param(norm.bias, d, x, zero=True)
        centred = x - x.mean(dim=2, keepdim=True)  # [N, P, D]
        parts = (centred * gamma) @ w / (p * sigma[:, None])  # [N, P]
        constant = (beta @ w).expand(n)
    scale = head.scale(f)  # [N]
    return Decomposition(
        contributions=parts * scale[:, None],
        constant=constant * scale,
        logits=head.logits(f),
    )


def decompose_weighted(values: torch.Tensor, head: FrameHead) -> Decomposition:
    """Contributions of each element of frame features ``values [N, D]`` (the frame feature
    *is* the values, e.g. pixels): ``c_i = w_i v_i / ||v||``."""
    import torch

    v = values.double()
    head.check(int(v.shape[1]), "the frame feature")
    w = torch.as_tensor(head.weight, device=v.device).double()
    scale = head.scale(v)
    return Decomposition(
        contributions=v * w * scale[:, None],
        constant=torch.zeros(v.shape[0], dtype=v.dtype, device=v.device),
        logits=head.logits(v),
    )


def _layer_norm(norm: nn.LayerNorm, m: torch.Tensor) -> torch.Tensor:
    """The module's own LayerNorm in float64 (its parameters cast, the module untouched)."""
    import torch.nn.functional as F

    d = m.shape[-1]
    return F.layer_norm(
        m, (d,), _param(norm.weight, d, m), _param(norm.bias, d, m, zero=True), norm.eps
    )


def _param(p: Any, d: int, like: torch.Tensor, *, zero: bool = False) -> torch.Tensor:
    import torch

    if p is None:
        return (torch.zeros if zero else torch.ones)(d, dtype=like.dtype, device=like.device)
    return p.detach().to(like.device, like.dtype)


@dataclass
class Captured:
    """What :func:`capture` keeps: the hooked module's last output (with its graph)."""

    output: Any = None


@contextmanager
def capture(module: nn.Module) -> Iterator[Captured]:
    """Keep ``module``'s forward output while the context is open (the Grad-CAM target).

    Only forwards run by this thread are kept: a service may run the same module
    for scoring in another thread meanwhile.
    """
    import threading

    box = Captured()
    owner = threading.get_ident()

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if threading.get_ident() == owner:
            box.output = output

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def grad_cam(activations: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K, C]`` activations and gradients -> (map ``[N, K]`` after ReLU, the map before it).

    ``alpha = mean over K of the gradients``; ``map = ReLU(sum_c alpha_c A_c)``.
    The peak is taken on the map before the ReLU, which has the same maximum when
    any position is positive and still a meaningful one when none is.
    """
    alpha = grads.mean(dim=1, keepdim=True)  # [N, 1, C]
    raw = (activations * alpha).sum(dim=-1)  # [N, K]
    return raw.clamp_min(0), raw
