"""Adam steps of the linear probe without an autograd graph (paper Eq. 1, the authors' loop).

For one video ``x [T, D]`` with frames ``phi_t = x_t / |x_t|``, the probe's frame
logits are ``z_t = w . phi_t + b``, its video logit ``s = logsumexp_t z_t`` and
its loss the cross-entropy over ``[-s, s]``: ``softplus(2 s)`` for a real video,
``softplus(-2 s)`` for a fake. The gradient is closed-form:

    dL/ds = 2 (sigmoid(2 s) - y)
    dL/dw = dL/ds * sum_t softmax(z)_t phi_t          dL/db = dL/ds

(``ds/dz_t = softmax(z)_t``, which sums to one). ``w . phi_t`` is computed as
``(w . x_t) / |x_t|`` and the gradient as ``sum_t (c_t / |x_t|) x_t`` with the
row norms computed once (:class:`featstore.trainers.sources.FeatureCache`), so no
normalised copy of the features is ever made. A step over ``B`` videos uses the
mean of their gradients (the batch loss is the mean loss). Adam then updates
the 1-D vector ``[w, b]`` as ``torch.optim.Adam``'s single-tensor code does:
float32 moments and weights, bias corrections in float64, the first moment by
``lerp``.

Two implementations of the same step, each compared with an autograd
``nn.Linear`` + ``torch.optim.Adam`` loop in tests/test_probe.py:

- :func:`train_steps` (CPU): a numba-compiled loop over a whole epoch. A
  float16 video is read from memory once (its second pass, for the gradient,
  finds it in cache) and converted to float32 in registers; nothing runs in
  Python between steps.
- :class:`TorchSteps` (any torch device, e.g. CUDA): one step per batch in
  torch operations.

Features arrive as a :class:`Packed` block: videos end to end, float16 (as its
bits, ``uint16``) or float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from featstore.trainers.checkpoints import CheckpointError

__all__ = [
    "BETA1",
    "BETA2",
    "EPS",
    "CpuSteps",
    "Packed",
    "TorchSteps",
    "adam_update",
    "half_to_float",
    "train_steps",
    "video_logits",
]

# torch.optim.Adam's defaults, which the authors' code uses (Adam(params, lr=1e-3)).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

# No "nnan"/"ninf": a NaN feature must give a NaN loss, which the fit reports.
_JIT = {
    "nogil": True,
    "cache": True,
    "boundscheck": False,
    "error_model": "numpy",
    "fastmath": {"reassoc", "contract", "nsz", "arcp"},
}


@dataclass(frozen=True)
class Packed:
    """Videos end to end: ``data [R, D]`` (float16 bits as ``uint16``, or float32),
    ``offsets [N+1]`` int64, row ``norms [R]`` float32 (ones: no normalisation),
    ``labels [N]`` float64 (1 = fake)."""

    data: np.ndarray
    offsets: np.ndarray
    norms: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def max_len(self) -> int:
        return int(np.diff(self.offsets).max(initial=1))


# ----------------------------------------------------------------------------- CPU kernels


@intrinsic
def _half_bits_to_float(typingctx, bits):  # pragma: no cover - compiled
    """float16 bits (uint16) -> float32: LLVM's ``fpext half``, one ``vcvtph2ps`` per 8 or 16
    values on x86 with F16C (every x86-64 CPU since 2012), ``fcvt`` on ARM; exact."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def _value(x):  # pragma: no cover - replaced in compiled code
    raise NotImplementedError


@overload(_value, jit_options=_JIT)
def _value_impl(x):
    """A feature value as float32: float16 bits are converted, float32 passes through."""
    if x == types.uint16:
        return lambda x: _half_bits_to_float(x)
    return lambda x: x


@nb.njit(**_JIT)
def _frame_logits(data, a, n, norms, params, z):  # pragma: no cover - compiled
    """``z[:n]`` = frame logits of rows ``a .. a+n``; returns their max."""
    dim = params.shape[0] - 1
    b = params[dim]
    zmax = -np.inf
    for t in range(n):
        row = data[a + t]
        acc = np.float32(0.0)
        for d in range(dim):
            acc += _value(row[d]) * params[d]
        zt = acc / norms[a + t] + b
        z[t] = zt
        if zt > zmax:
            zmax = zt
    return zmax


@nb.njit(**_JIT)
def _logsumexp(z, n, zmax):  # pragma: no cover - compiled
    if not math.isfinite(zmax):
        return zmax  # inf or NaN features: the loss says so
    total = 0.0
    for t in range(n):
        total += math.exp(np.float64(z[t]) - zmax)
    return zmax + math.log(total)


@nb.njit(**_JIT)
def _softplus(u):  # pragma: no cover - compiled
    return max(u, 0.0) + math.log1p(math.exp(-abs(u)))


@nb.njit(**_JIT)
def _sigmoid(u):  # pragma: no cover - compiled
    if u >= 0.0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)
    return e / (1.0 + e)


@nb.njit(**_JIT)
def adam_update(params, grad, m, v, step, lr, beta1, beta2, eps):  # pragma: no cover - compiled
    """Step ``step`` (1-based) of ``torch.optim.Adam`` on float32 ``params``, ``m``, ``v`` in place.

    As torch's single-tensor Adam: ``m.lerp_(g, 1 - beta1)``,
    ``v.mul_(beta2).addcmul_(g, g, value=1 - beta2)``,
    ``p.addcdiv_(m, sqrt(v) / sqrt(bc2) + eps, value=-lr / bc1)``; scalars
    rounded to float32 as torch's kernels take them.
    """
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    step_size = np.float32(lr / bc1)
    w1 = np.float32(1.0 - beta1)
    b2 = np.float32(beta2)
    w2 = np.float32(1.0 - beta2)
    c2 = np.float32(bc2_sqrt)
    e = np.float32(eps)
    for j in range(params.shape[0]):
        g = grad[j]
        mj = m[j] + w1 * (g - m[j])
        vj = v[j] * b2 + w2 * g * g
        m[j] = mj
        v[j] = vj
        params[j] = params[j] - step_size * (mj / (np.float32(math.sqrt(vj)) / c2 + e))


@nb.njit(**_JIT)
def train_steps(
    data, offsets, norms, labels, order, group, params, m, v, step, lr, z, grad
):  # pragma: no cover - compiled
    """Adam steps over the videos ``order`` in groups of ``group``; returns ``(step, loss_sum)``.

    ``params [D+1]`` (``w`` then ``b``), ``m``, ``v`` float32, updated in place;
    ``step`` is the number of steps taken before; ``lr`` the step's learning
    rate. ``loss_sum`` adds each video's loss before its step. ``z [max_len]``
    and ``grad [D+1]`` (float32) are work space. Each video is read twice: the
    frame logits, then the gradient, from cache (a 225 x 1024 float16 video is
    460 kB; the CPU's L2 holds it).
    """
    dim = params.shape[0] - 1
    n_order = order.shape[0]
    loss_sum = 0.0
    for lo in range(0, n_order, group):
        hi = min(lo + group, n_order)
        scale = 1.0 / (hi - lo)  # the batch loss is the mean over its videos
        for j in range(dim + 1):
            grad[j] = 0.0
        for k in range(lo, hi):
            i = order[k]
            a = offsets[i]
            n = offsets[i + 1] - a
            zmax = _frame_logits(data, a, n, norms, params, z)
            s = _logsumexp(z, n, zmax)
            y = labels[i]
            loss_sum += _softplus(2.0 * s * (1.0 - 2.0 * y))
            ds = 2.0 * (_sigmoid(2.0 * s) - y) * scale  # d(batch loss) / ds
            for t in range(n):
                c = np.float32(ds * math.exp(np.float64(z[t]) - s) / norms[a + t])
                row = data[a + t]
                for d in range(dim):
                    grad[d] += c * _value(row[d])
            grad[dim] += np.float32(ds)
        step += 1
        adam_update(params, grad, m, v, step, lr, BETA1, BETA2, EPS)
    return step, loss_sum


@nb.njit(**_JIT)
def video_logits(data, offsets, norms, params, z, out):  # pragma: no cover - compiled
    """``out[i]`` = the video logit ``s`` of every video (float64)."""
    for i in range(offsets.shape[0] - 1):
        a = offsets[i]
        n = offsets[i + 1] - a
        zmax = _frame_logits(data, a, n, norms, params, z)
        out[i] = _logsumexp(z, n, zmax)


@nb.njit(**_JIT)
def _half_to_float(bits, out):  # pragma: no cover - compiled
    for r in range(bits.shape[0]):
        for d in range(bits.shape[1]):
            out[r, d] = _value(bits[r, d])


def half_to_float(bits: np.ndarray) -> np.ndarray:
    """float16 values given as their bits ``[n, D]`` (uint16) -> float32, as the kernels read them."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    _half_to_float(bits, out)
    return out


class CpuSteps:
    """:func:`train_steps` with its state: ``params [D+1]`` (``w`` then ``b``), Adam's moments."""

    def __init__(self, params: np.ndarray) -> None:
        self.params = np.array(params, dtype=np.float32)  # [D+1]
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        self.step = 0

    def train(self, packed: Packed, order: np.ndarray, group: int, lr: float) -> float:
        """Adam steps over ``order`` in groups of ``group``; returns the sum of the videos' losses."""
        z = np.empty(packed.max_len, dtype=np.float32)
        grad = np.empty_like(self.params)
        self.step, loss_sum = train_steps(
            packed.data,
            packed.offsets,
            packed.norms,
            packed.labels,
            np.ascontiguousarray(order, dtype=np.int64),
            int(group),
            self.params,
            self.m,
            self.v,
            self.step,
            float(lr),
            z,
            grad,
        )
        return float(loss_sum)

    def logits(self, packed: Packed) -> np.ndarray:
        """Video logits ``[N]`` (float64) of every video of ``packed``."""
        z = np.empty(packed.max_len, dtype=np.float32)
        out = np.empty(len(packed), dtype=np.float64)
        video_logits(packed.data, packed.offsets, packed.norms, self.params, z, out)
        return out

    def weights(self) -> np.ndarray:
        return self.params.copy()

    def state_dict(self) -> dict[str, Any]:
        """Weights, Adam's moments and step count (a checkpoint's trainer state)."""
        return {
            "params": self.params.copy(),
            "m": self.m.copy(),
            "v": self.v.copy(),
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("params", "m", "v"):
            value = np.asarray(state[name], dtype=np.float32)
            if value.shape != self.params.shape:
                raise CheckpointError(
                    f"{name} is {value.shape}, the probe's state {self.params.shape}"
                )
            getattr(self, name)[...] = value
        self.step = int(state["step"])


# ----------------------------------------------------------------------------- any torch device


class TorchSteps:
    """The same steps in torch operations on ``device`` (one step per batch, no autograd)."""

    def __init__(self, params: np.ndarray, device: object) -> None:
        import torch

        self.torch, self.device = torch, device
        self.params = torch.from_numpy(np.asarray(params, np.float32).copy()).to(device)
        self.m = torch.zeros_like(self.params)
        self.v = torch.zeros_like(self.params)
        self.step = 0

    def _batch(self, packed: Packed, idx: np.ndarray) -> tuple[object, object, object]:
        """Rows of videos ``idx`` end to end on the device: ``x [n, D]``, ``norms [n]``, ``lengths [B]``."""
        torch = self.torch
        spans = [(int(packed.offsets[i]), int(packed.offsets[i + 1])) for i in idx]
        data = packed.data.view(np.float16) if packed.data.dtype == np.uint16 else packed.data
        x = torch.from_numpy(np.concatenate([data[a:b] for a, b in spans]))
        norms = torch.from_numpy(np.concatenate([packed.norms[a:b] for a, b in spans]))
        lengths = torch.tensor([b - a for a, b in spans], device=self.device)
        return x.to(self.device).float(), norms.to(self.device), lengths

    def _video_logits(self, x: object, norms: object, lengths: object) -> tuple[object, object]:
        """Frame logits ``z [n]`` and video logits ``s [B]`` (float64)."""
        torch = self.torch
        dim = self.params.shape[0] - 1
        z = torch.mv(x, self.params[:dim]) / norms + self.params[dim]  # [n]
        mask = torch.arange(int(lengths.max()), device=self.device)[None, :] < lengths[:, None]
        zp = z.new_full(mask.shape, float("-inf")).masked_scatter(mask, z)  # [B, T]
        return z, torch.logsumexp(zp.double(), dim=1)  # [n], [B]

    def train(self, packed: Packed, order: np.ndarray, group: int, lr: float) -> float:
        """Adam steps over ``order`` in groups of ``group``; returns the sum of the videos' losses."""
        torch = self.torch
        dim = self.params.shape[0] - 1
        labels = torch.from_numpy(np.asarray(packed.labels, np.float64)).to(self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for lo in range(0, len(order), group):
            idx = order[lo : lo + group]
            x, norms, lengths = self._batch(packed, idx)
            z, s = self._video_logits(x, norms, lengths)
            y = labels[torch.from_numpy(np.asarray(idx, np.int64)).to(self.device)]
            loss_sum += torch.nn.functional.softplus(2.0 * s * (1.0 - 2.0 * y)).sum()
            ds = 2.0 * (torch.sigmoid(2.0 * s) - y) / len(idx)  # [B]
            rep = torch.repeat_interleave(torch.arange(len(idx), device=self.device), lengths)
            c = (ds[rep] * torch.exp(z.double() - s[rep]) / norms).float()  # [n]
            grad = torch.empty_like(self.params)
            grad[:dim] = c @ x
            grad[dim] = ds.sum().float()
            self.step += 1
            self._adam(grad, lr)
        return float(loss_sum)

    def _adam(self, grad: object, lr: float) -> None:
        bc1 = 1.0 - BETA1**self.step
        bc2_sqrt = math.sqrt(1.0 - BETA2**self.step)
        self.m.lerp_(grad, 1.0 - BETA1)
        self.v.mul_(BETA2).addcmul_(grad, grad, value=1.0 - BETA2)
        denom = (self.v.sqrt() / bc2_sqrt).add_(EPS)
        self.params.addcdiv_(self.m, denom, value=-lr / bc1)

    def logits(self, packed: Packed, *, chunk: int = 64) -> np.ndarray:
        """Video logits ``[N]`` (float64) of every video of ``packed``."""
        out = []
        for lo in range(0, len(packed), chunk):
            idx = np.arange(lo, min(lo + chunk, len(packed)))
            _, s = self._video_logits(*self._batch(packed, idx))
            out.append(s.cpu().numpy())
        return np.concatenate(out) if out else np.empty(0)

    def weights(self) -> np.ndarray:
        return self.params.detach().cpu().numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        """Weights, Adam's moments and step count (a checkpoint's trainer state)."""
        return {
            "params": self.params.detach().clone(),
            "m": self.m.detach().clone(),
            "v": self.v.detach().clone(),
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch = self.torch
        for name in ("params", "m", "v"):
            value = torch.as_tensor(state[name], dtype=torch.float32)
            target = getattr(self, name)
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{name} is {tuple(value.shape)}, the probe's state {tuple(target.shape)}"
                )
            target.copy_(value.to(self.device))
        self.step = int(state["step"])
