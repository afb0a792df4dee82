"""Audio-visual synchronisation (AVH-Align, paper Sec. 3.2): an anomaly detector trained on reals.

The alignment network ``Phi(a, v)`` scores how well an audio frame ``a``
matches a visual frame ``v`` (PEERS.md, "AVH-Align"):

- inputs L2-normalised per frame; ``visual_proj`` Linear(Dv->512) and
  ``audio_proj`` Linear(Da->512); concatenated ``[visual, audio]`` (1024) ->
  Linear 512, LayerNorm, ReLU -> 256, LN, ReLU -> 128, LN, ReLU -> 1;
- loss: for each visual frame ``i`` the ``2 tau + 1 = 31`` audio candidates
  ``i - tau .. i + tau`` of its own video (out of range = zero vectors, kept
  as negatives); ``-log_softmax`` over the candidates at the true offset
  (index ``tau``), summed over the frames of a batch;
- Adam lr 1e-5, batches of 1024 frames, up to 500 epochs,
  ReduceLROnPlateau(factor 0.1, patience 5), early stopping with patience 10
  on validation loss, best weights restored;
- score: per-frame ``-Phi(a_t, v_t)``, video ``logsumexp_t``; higher = more fake.

A batch is 1024 consecutive frames of the epoch's shuffled video order, so it
holds a few whole videos (and the ends of two). Its candidates are built
without a loop over frames: every audio row the batch needs is projected once
(``torch.unique`` over the ``[N, 31]`` candidate indices), and since the first
head layer is affine, ``W [pv; pa] + b = W_v pv + W_a pa + b`` is computed per
unique row and broadcast to ``[N, 31, 512]``. This is exactly the maths of
projecting the ``[N, 31, Da]`` candidate tensor (``candidates``), at a
fraction of the cost (bench/sync.py).

>>> result = fit_sync(train_pairs, val_pairs, SyncConfig(max_epochs=50))  # doctest: +SKIP
>>> scores, frames = score_pairs(result.net, test_pairs)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featstore.errors import FeatstoreError
from featstore.timebase import reconcile
from trainers.training import (
    Interruption,
    StateFunctions,
    TrainingControl,
    resolve_device,
    train_epochs,
)

log = logging.getLogger(__name__)

__all__ = [
    "EpochStats",
    "FitResult",
    "Paired",
    "SyncConfig",
    "SyncError",
    "SyncNet",
    "candidates",
    "fit_sync",
    "frame_scores",
    "net_from_state",
    "net_to_state",
    "pairs_loss",
    "score_pairs",
    "video_loss",
]

TAU = 15
PROJ_DIM = 512
HIDDEN = (512, 256, 128)
NORM_EPS = 1e-12  # F.normalize's eps: a zero row stays zero


class SyncError(FeatstoreError, ValueError):
    """The sync network cannot be trained or applied on these inputs."""


class Paired(Protocol):
    """One video's audio and visual rows at the same rate (``trainers.pairs.PairedVideo``)."""

    audio: np.ndarray  # [T, Da]
    visual: np.ndarray  # [T, Dv]


@dataclass(frozen=True)
class SyncConfig:
    """Hyperparameters; the defaults are AVH-Align's (PEERS.md).

    ``proj_dim`` / ``hidden`` exist so tests can build a narrow network; the
    paper's is 512 / (512, 256, 128).
    """

    lr: float = 1e-5
    max_epochs: int = 500
    patience: int = 10
    lr_patience: int = 5
    lr_factor: float = 0.1
    batch_frames: int = 1024
    tau: int = TAU
    proj_dim: int = PROJ_DIM
    hidden: tuple[int, ...] = HIDDEN
    seed: int = 43
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise SyncError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 < self.lr_factor < 1:
            raise SyncError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")
        for name in ("max_epochs", "patience", "lr_patience", "batch_frames", "proj_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SyncError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.tau, int) or self.tau < 0:
            raise SyncError(f"tau must be an integer >= 0, got {self.tau!r}")
        hidden = tuple(self.hidden)
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise SyncError(f"hidden must be a non-empty tuple of widths >= 1, got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SyncError(f"seed must be a non-negative integer, got {self.seed!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise SyncError(f"unknown device {self.device!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SyncConfig:
        """The config recorded in a run (unknown keys are an error, missing ones take defaults)."""
        unknown = set(doc) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SyncError(f"unknown sync hyperparameters {sorted(unknown)}")
        return cls(**{**doc, **({"hidden": tuple(doc["hidden"])} if "hidden" in doc else {})})


@dataclass(frozen=True)
class EpochStats:
    """One epoch (1-based): mean per-frame losses, the lr it ran at, seconds."""

    epoch: int
    train_loss: float
    val_loss: float | None
    lr: float
    seconds: float


@dataclass(frozen=True)
class FitResult:
    """The restored best network (on the CPU, eval mode) and the per-epoch history."""

    net: SyncNet
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    interruption: Interruption | None = None  # set when SIGINT/SIGTERM ended the fit early
    resumed_from: int | None = None  # the checkpoint epoch the fit continued from


# ----------------------------------------------------------------------------- network


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=NORM_EPS)


class SyncNet(nn.Module):
    """``Phi(a, v)``: projections, then an MLP over ``[visual; audio]`` to one logit."""

    def __init__(
        self,
        audio_dim: int,
        visual_dim: int,
        *,
        proj_dim: int = PROJ_DIM,
        hidden: Sequence[int] = HIDDEN,
    ) -> None:
        super().__init__()
        if audio_dim < 1 or visual_dim < 1:
            raise SyncError(
                f"feature dims must be >= 1, got audio {audio_dim}, visual {visual_dim}"
            )
        self.audio_dim, self.visual_dim = int(audio_dim), int(visual_dim)
        self.proj_dim = int(proj_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.visual_proj = nn.Linear(visual_dim, proj_dim)
        self.audio_proj = nn.Linear(audio_dim, proj_dim)
        layers: list[nn.Module] = []
        width = 2 * proj_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``Phi(a, v)`` of raw (un-normalised) rows ``[..., Da]``, ``[..., Dv]`` -> ``[...]``."""
        pv = self.visual_proj(_l2(visual))  # [..., P]
        pa = self.audio_proj(_l2(audio))  # [..., P]
        return self.head(torch.cat([pv, pa], dim=-1)).squeeze(-1)

    def _first_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first head layer's weight as ``(W_v [H, P], W_a [H, P])``."""
        w = self.head[0].weight  # [H, 2P]
        return w[:, : self.proj_dim], w[:, self.proj_dim :]

    def _rest(self, h: torch.Tensor) -> torch.Tensor:
        """The head after its first Linear: ``[..., H] -> [...]``."""
        return self.head[1:](h).squeeze(-1)

    def candidate_logits(
        self, audio_rows: torch.Tensor, cand_idx: torch.Tensor, visual: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[N, K]`` of ``visual [N, Dv]`` against ``audio_rows[cand_idx]`` (``[N, K]`` indices).

        Each audio row is projected once, whatever the number of candidates
        that use it; the first head layer is split so nothing of width
        ``2 P`` is formed per candidate.
        """
        uniq, inv = torch.unique(cand_idx, return_inverse=True)  # [U], [N, K]
        w_v, w_a = self._first_split()
        dtype = w_a.dtype
        ha = self.audio_proj(_l2(audio_rows[uniq].to(dtype))) @ w_a.T  # [U, H]
        hv = self.visual_proj(_l2(visual.to(dtype))) @ w_v.T + self.head[0].bias  # [N, H]
        return self._rest(ha[inv] + hv[:, None, :])  # [N, K]


def net_to_state(net: SyncNet) -> dict[str, np.ndarray]:
    """The network's tensors as float32 numpy arrays (for safetensors)."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}


def net_from_state(state: dict[str, np.ndarray]) -> SyncNet:
    """Rebuild a network from ``net_to_state``'s arrays; dims and widths come from their shapes."""
    try:
        proj_dim, visual_dim = np.shape(state["visual_proj.weight"])
        audio_dim = np.shape(state["audio_proj.weight"])[1]
        linears = sorted(
            (int(k.split(".")[1]), np.shape(v))
            for k, v in state.items()
            if k.startswith("head.") and k.endswith(".weight") and np.ndim(v) == 2
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise SyncError(f"sync network state is malformed: {exc}") from None
    hidden = [shape[0] for _, shape in linears[:-1]]
    net = SyncNet(int(audio_dim), int(visual_dim), proj_dim=int(proj_dim), hidden=hidden)
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise SyncError(f"sync network state does not fit its architecture: {exc}") from None
    return net.eval()


# ----------------------------------------------------------------------------- candidates and loss


def candidates(audio: torch.Tensor, tau: int = TAU) -> torch.Tensor:
    """The ``2 tau + 1`` audio candidates of every frame: ``[T, Da] -> [T, 2 tau + 1, Da]``.

    Candidate ``k`` of frame ``i`` is audio row ``i - tau + k``; rows outside
    the video are zero vectors (AVH-Align keeps them as negatives). The result
    is a strided view of the padded rows; ``.contiguous()`` it before heavy use.
    """
    padded = F.pad(audio, (0, 0, tau, tau))  # [T + 2 tau, Da]
    return padded.unfold(0, 2 * tau + 1, 1).transpose(1, 2)  # [T, K, Da]


def video_loss(
    net: SyncNet, audio: torch.Tensor, visual: torch.Tensor, tau: int = TAU
) -> torch.Tensor:
    """Summed loss of one video through the explicit ``[T, 31, Da]`` candidate tensor."""
    dtype = next(net.parameters()).dtype
    cand = candidates(audio.to(dtype), tau)  # [T, K, Da]
    v = visual.to(dtype)[:, None, :].expand(-1, cand.shape[1], -1)  # [T, K, Dv]
    logits = net(cand, v)  # [T, K]
    return -F.log_softmax(logits, dim=1)[:, tau].sum()


@dataclass(frozen=True)
class _Packed:
    """Videos end to end: audio with ``tau`` zero rows before, between and after the videos."""

    audio: torch.Tensor  # [tau + sum(T_i + tau), Da], source dtype
    visual: torch.Tensor  # [R, Dv], source dtype
    audio_pos: torch.Tensor  # [R] int64: row of frame r's own audio in ``audio``
    offsets: np.ndarray  # [N + 1] frame offsets of the videos

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])


def _reconciled(pairs: Sequence[Paired], what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(pairs) == 0:
        raise SyncError(f"the {what} set holds no videos")
    out = []
    for i, p in enumerate(pairs):
        a, v = np.asarray(p.audio), np.asarray(p.visual)
        if a.ndim != 2 or v.ndim != 2:
            raise SyncError(f"{what} video {i}: expected [T, D] rows, got {a.shape} and {v.shape}")
        r = reconcile(a, v)
        if r.n_rows == 0:
            raise SyncError(f"{what} video {i} has no frames with both audio and visual rows")
        out.append((r.audio, r.visual))
    da, dv = {a.shape[1] for a, _ in out}, {v.shape[1] for _, v in out}
    if len(da) > 1 or len(dv) > 1:
        raise SyncError(
            f"{what} videos mix feature widths: audio {sorted(da)}, visual {sorted(dv)}"
        )
    return out


def _pack(videos: Sequence[tuple[np.ndarray, np.ndarray]], tau: int) -> _Packed:
    lengths = np.array([a.shape[0] for a, _ in videos], dtype=np.int64)  # [N]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [N + 1]
    starts = tau + np.concatenate([[0], np.cumsum(lengths + tau)[:-1]]).astype(np.int64)  # [N]
    dtype = np.float16 if all(a.dtype == np.float16 for a, _ in videos) else np.float32
    audio = np.zeros((tau + int((lengths + tau).sum()), videos[0][0].shape[1]), dtype=dtype)
    for (a, _), s in zip(videos, starts, strict=True):
        audio[s : s + a.shape[0]] = a
    visual = np.concatenate([v for _, v in videos]).astype(dtype, copy=False)  # [R, Dv]
    audio_pos = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])  # [R]
    return _Packed(
        torch.from_numpy(audio), torch.from_numpy(visual), torch.from_numpy(audio_pos), offsets
    )


def _rows_loss(net: SyncNet, packed: _Packed, rows: torch.Tensor, tau: int) -> torch.Tensor:
    """Summed loss of the frames ``rows [N]`` of a packed set."""
    shifts = torch.arange(-tau, tau + 1, device=rows.device)  # [K]
    cand_idx = packed.audio_pos[rows][:, None] + shifts  # [N, K]
    logits = net.candidate_logits(packed.audio, cand_idx, packed.visual[rows])  # [N, K]
    return -F.log_softmax(logits, dim=1)[:, tau].sum()


def pairs_loss(
    net: SyncNet, pairs: Sequence[Paired], *, tau: int = TAU, batch_frames: int = 1024
) -> float:
    """Mean per-frame loss of every frame of ``pairs`` (no gradient)."""
    packed = _to(_pack(_reconciled(pairs, "evaluation"), tau), _param_device(net))
    return _mean_loss(net, packed, tau, batch_frames)


def _mean_loss(net: SyncNet, packed: _Packed, tau: int, batch_frames: int) -> float:
    total = 0.0
    device = packed.audio_pos.device
    with torch.no_grad():
        for lo in range(0, packed.n_frames, batch_frames):
            rows = torch.arange(lo, min(lo + batch_frames, packed.n_frames), device=device)
            total += float(_rows_loss(net, packed, rows, tau))
    return total / packed.n_frames


def _to(packed: _Packed, device: torch.device) -> _Packed:
    if device.type == "cpu":
        return packed
    return _Packed(
        packed.audio.to(device),
        packed.visual.to(device),
        packed.audio_pos.to(device),
        packed.offsets,
    )


def _param_device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def _epoch_rows(offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frames of every video, videos in a fresh random order: ``[R]``."""
    order = rng.permutation(len(offsets) - 1)
    lengths = (offsets[1:] - offsets[:-1])[order]
    starts = np.repeat(
        offsets[:-1][order] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths
    )
    return starts + np.arange(int(lengths.sum()))  # [R]


# ----------------------------------------------------------------------------- training


def _init_net(audio_dim: int, visual_dim: int, config: SyncConfig) -> SyncNet:
    """torch's default init drawn from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SyncNet(audio_dim, visual_dim, proj_dim=config.proj_dim, hidden=config.hidden)


def fit_sync(
    train: Sequence[Paired],
    val: Sequence[Paired] | None = None,
    config: SyncConfig = SyncConfig(),  # frozen, so sharing the default is safe
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    control: TrainingControl | None = None,
) -> FitResult:
    """Train ``Phi`` on real videos ``train``; schedule and early-stop on ``val``'s loss.

    Audio and visual rows of each video are trimmed to the shorter
    (``featstore.timebase.reconcile``). Without ``val`` the plateau schedule
    follows the training loss, all ``max_epochs`` run and the last weights are
    returned. Seeded: the same inputs and config give the same weights on the
    CPU (on CUDA the scatter-adds of the candidate gather may differ in the
    last bits between runs). ``control`` checkpoints, resumes and catches
    interrupts (``trainers.training``).
    """
    train_videos = _reconciled(train, "training")
    da, dv = train_videos[0][0].shape[1], train_videos[0][1].shape[1]
    device = resolve_device(config.device, error=SyncError)
    packed = _to(_pack(train_videos, config.tau), device)
    val_packed = None
    if val is not None:
        val_videos = _reconciled(val, "validation")
        if (val_videos[0][0].shape[1], val_videos[0][1].shape[1]) != (da, dv):
            raise SyncError(
                f"validation features are {val_videos[0][0].shape[1]}/{val_videos[0][1].shape[1]}-"
                f"wide (audio/visual), training features {da}/{dv}-wide"
            )
        val_packed = _to(_pack(val_videos, config.tau), device)
    net = _init_net(da, dv, config).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    rng = np.random.default_rng(config.seed)
    log.info("sync: %d videos, %d frames, %s", len(train_videos), packed.n_frames, device)

    def run_epoch(epoch: int) -> tuple[EpochStats, float | None]:
        start = time.perf_counter()
        lr = float(opt.param_groups[0]["lr"])
        net.train()
        rows = torch.from_numpy(_epoch_rows(packed.offsets, rng)).to(device)  # [R]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in rows.split(config.batch_frames):
            loss = _rows_loss(net, packed, batch, config.tau)  # summed over frames
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = float(total) / packed.n_frames
        if not math.isfinite(train_loss):
            raise SyncError(
                f"training loss is {train_loss} at epoch {epoch}: check the features for NaN/inf"
            )
        net.eval()
        val_loss = None
        if val_packed is not None:
            val_loss = _mean_loss(net, val_packed, config.tau, config.batch_frames)
        plateau.step(train_loss if val_loss is None else val_loss)
        return EpochStats(epoch, train_loss, val_loss, lr, time.perf_counter() - start), val_loss

    def save_state() -> dict[str, Any]:
        return {
            "net": net.state_dict(),
            "optimizer": opt.state_dict(),
            "plateau": plateau.state_dict(),
            "rng": rng.bit_generator.state,
        }

    def load_state(state: Mapping[str, Any]) -> None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        plateau.load_state_dict(state["plateau"])
        rng.bit_generator.state = state["rng"]

    loop = train_epochs(
        run_epoch,
        max_epochs=config.max_epochs,
        patience=config.patience,
        snapshot=lambda: copy.deepcopy(net.state_dict()),
        state=StateFunctions(save_state, load_state),
        stats_type=EpochStats,
        on_epoch=on_epoch,
        control=control,
    )
    net.load_state_dict(loop.best)
    return FitResult(
        net.cpu().eval(),
        loop.history,
        loop.best_epoch,
        loop.stopped_early,
        interruption=loop.interruption,
        resumed_from=loop.resumed_from,
    )


# ----------------------------------------------------------------------------- scoring


def frame_scores(net: SyncNet, audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """Per-frame fakeness ``-Phi(a_t, v_t)`` ``[T]`` of one video (rows trimmed to the shorter)."""
    ((a, v),) = _reconciled([_Pair(audio, visual)], "scored")
    if a.shape[1] != net.audio_dim or v.shape[1] != net.visual_dim:
        raise SyncError(
            f"features are {a.shape[1]}/{v.shape[1]}-wide (audio/visual); "
            f"the network expects {net.audio_dim}/{net.visual_dim}"
        )
    device = _param_device(net)
    with torch.no_grad():
        at = torch.from_numpy(np.ascontiguousarray(a)).to(device).float()  # [T, Da]
        vt = torch.from_numpy(np.ascontiguousarray(v)).to(device).float()  # [T, Dv]
        return (-net(at, vt)).cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class _Pair:
    audio: np.ndarray
    visual: np.ndarray


def score_pairs(net: SyncNet, pairs: Sequence[Paired]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Video scores ``logsumexp_t(-Phi(a_t, v_t))`` ``[N]`` and per-frame scores ``[T_i]``."""
    net.eval()
    frames = [frame_scores(net, p.audio, p.visual) for p in pairs]
    scores = np.array(
        [float(torch.logsumexp(torch.from_numpy(f).double(), dim=0)) for f in frames],
        dtype=np.float64,
    )
    return scores, frames
