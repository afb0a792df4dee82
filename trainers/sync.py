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
from featstore.trainers.memory import plan_cache
from featstore.trainers.sources import prefetch_reads
from featstore.trainers.sync_feed import (
    PackedPairs,
    PairList,
    PairSourceLike,
    RowsBatch,
    StreamedPairs,
    packed_nbytes,
)
from featstore.trainers.training import (
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
    "score_source",
    "video_loss",
]

TAU = 15
PROJ_DIM = 512
HIDDEN = (512, 256, 128)
NORM_EPS = 1e-12  # F.normalize's eps: a zero row stays zero


class SyncError(FeatstoreError, ValueError):
    """The sync network cannot be trained or applied on these inputs."""


class Paired(Protocol):
    """One video's audio and visual rows at the same rate (``featstore.trainers.pairs.PairedVideo``)."""

    audio: np.ndarray  # [T, Da]
    visual: np.ndarray  # [T, Dv]


@dataclass(frozen=True)
class SyncConfig:
    """Hyperparameters; the defaults are AVH-Align's (PEERS.md).

    ``proj_dim`` / ``hidden`` exist so tests can build a narrow network; the
    paper's is 512 / (512, 256, 128). ``cache_bytes`` is the memory budget
    for holding the videos (``None``: ``featstore.trainers.memory``'s default); it
    changes speed, not the network, so runs record it outside the
    hyperparameters.
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
    cache_bytes: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise SyncError(f"lr must be a positive number, got {self.lr!r}")
        if self.cache_bytes is not None and (
            isinstance(self.cache_bytes, bool)
            or not isinstance(self.cache_bytes, int)
            or self.cache_bytes < 0
        ):
            raise SyncError(
                f"cache_bytes must be None or an integer >= 0, got {self.cache_bytes!r}"
            )
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
        """The hyperparameters a run records (``cache_bytes`` is an execution detail: not here)."""
        doc = {**dataclasses.asdict(self), "hidden": list(self.hidden)}
        del doc["cache_bytes"]
        return doc

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
        return self.distinct_candidate_logits(audio_rows[uniq], inv, visual)

    def distinct_candidate_logits(
        self, audio: torch.Tensor, inverse: torch.Tensor, visual: torch.Tensor
    ) -> torch.Tensor:
        """``candidate_logits`` from the distinct candidate rows ``audio [U, Da]`` and each
        frame's candidates as rows of it, ``inverse [N, K]``."""
        w_v, w_a = self._first_split()
        dtype = w_a.dtype
        ha = self.audio_proj(_l2(audio.to(dtype))) @ w_a.T  # [U, H]
        hv = self.visual_proj(_l2(visual.to(dtype))) @ w_v.T + self.head[0].bias  # [N, H]
        return self._rest(ha[inverse] + hv[:, None, :])  # [N, K]


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


def _rows_loss(net: SyncNet, batch: RowsBatch, tau: int) -> torch.Tensor:
    """Summed loss of the frames of one batch."""
    logits = net.distinct_candidate_logits(batch.audio, batch.inverse, batch.visual)  # [N, K]
    return -F.log_softmax(logits, dim=1)[:, tau].sum()


def _pairs(pairs: Sequence[Paired] | PairSourceLike, what: str) -> PairSourceLike:
    """A pair source as given, or in-memory pairs (trimmed to the shorter, checked) as one."""
    if hasattr(pairs, "read") and hasattr(pairs, "lengths"):
        if len(pairs) == 0:
            raise SyncError(f"the {what} set holds no videos")
        return pairs  # type: ignore[return-value]
    return PairList(pairs, what, error=SyncError)  # type: ignore[arg-type]


def pairs_loss(
    net: SyncNet, pairs: Sequence[Paired], *, tau: int = TAU, batch_frames: int = 1024
) -> float:
    """Mean per-frame loss of every frame of ``pairs`` (no gradient)."""
    feed = PackedPairs(_pairs(pairs, "evaluation"), tau, _param_device(net))
    return _mean_loss(net, feed, tau, batch_frames)


def _mean_loss(
    net: SyncNet, feed: PackedPairs | StreamedPairs, tau: int, batch_frames: int
) -> float:
    """Mean per-frame loss over the frames in order, ``batch_frames`` at a time."""
    total = 0.0
    n = feed.n_frames
    batches = [np.arange(lo, min(lo + batch_frames, n)) for lo in range(0, n, batch_frames)]
    with torch.no_grad():
        for batch in feed.batches(batches):
            total += float(_rows_loss(net, batch, tau))
    return total / n


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


def _feed(
    source: PairSourceLike, cached: bool, tau: int, device: torch.device
) -> PackedPairs | StreamedPairs:
    return PackedPairs(source, tau, device) if cached else StreamedPairs(source, tau, device)


def fit_sync(
    train: Sequence[Paired] | PairSourceLike,
    val: Sequence[Paired] | PairSourceLike | None = None,
    config: SyncConfig = SyncConfig(),  # frozen, so sharing the default is safe
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    control: TrainingControl | None = None,
) -> FitResult:
    """Train ``Phi`` on real videos ``train``; schedule and early-stop on ``val``'s loss.

    ``train`` / ``val`` are paired videos in memory (audio and visual rows of
    each trimmed to the shorter, ``featstore.timebase.reconcile``) or pair
    sources (``featstore.trainers.streams.PairSource``: read from the store). A set
    whose packed rows fit ``config.cache_bytes`` (training first; default
    ``featstore.trainers.memory``) is held in memory, the rest is streamed batch by
    batch (``featstore.trainers.sync_feed``): the same batches and arithmetic, so the
    same network. Without ``val`` the plateau schedule follows the training
    loss, all ``max_epochs`` run and the last weights are returned. Seeded:
    the same inputs and config give the same weights on the CPU (on CUDA the
    scatter-adds of the candidate gather may differ in the last bits between
    runs). ``control`` checkpoints, resumes and catches interrupts
    (``featstore.trainers.training``).
    """
    train_src = _pairs(train, "training")
    da, dv = train_src.audio_dim, train_src.visual_dim
    device = resolve_device(config.device, error=SyncError)
    val_src = None
    if val is not None:
        val_src = _pairs(val, "validation")
        if (val_src.audio_dim, val_src.visual_dim) != (da, dv):
            raise SyncError(
                f"validation features are {val_src.audio_dim}/{val_src.visual_dim}-"
                f"wide (audio/visual), training features {da}/{dv}-wide"
            )
    train_cached, val_cached = plan_cache(
        config.cache_bytes,
        train_bytes=packed_nbytes(train_src, config.tau),
        val_bytes=None if val_src is None else packed_nbytes(val_src, config.tau),
    )
    feed = _feed(train_src, train_cached, config.tau, device)
    val_feed = None if val_src is None else _feed(val_src, val_cached, config.tau, device)
    net = _init_net(da, dv, config).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    rng = np.random.default_rng(config.seed)
    log.info(
        "sync: %d videos, %d frames, %s, %s",
        len(train_src),
        feed.n_frames,
        device,
        "cached" if train_cached else "streamed",
    )

    def run_epoch(epoch: int) -> tuple[EpochStats, float | None]:
        start = time.perf_counter()
        lr = float(opt.param_groups[0]["lr"])
        net.train()
        rows = _epoch_rows(feed.offsets, rng)  # [R]
        batches = [
            rows[i : i + config.batch_frames] for i in range(0, len(rows), config.batch_frames)
        ]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in feed.batches(batches):
            loss = _rows_loss(net, batch, config.tau)  # summed over frames
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = float(total) / feed.n_frames
        if not math.isfinite(train_loss):
            raise SyncError(
                f"training loss is {train_loss} at epoch {epoch}: check the features for NaN/inf"
            )
        net.eval()
        val_loss = None
        if val_feed is not None:
            val_loss = _mean_loss(net, val_feed, config.tau, config.batch_frames)
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
    a, v = np.asarray(audio), np.asarray(visual)
    if a.ndim != 2 or v.ndim != 2:
        raise SyncError(f"scored video: expected [T, D] rows, got {a.shape} and {v.shape}")
    pair = reconcile(a, v)
    if pair.n_rows == 0:
        raise SyncError("scored video has no frames with both audio and visual rows")
    a, v = pair.audio, pair.visual
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
    return _video_scores(frames), frames


def score_source(
    net: SyncNet, source: PairSourceLike, *, chunk_videos: int = 64
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``score_pairs`` over a pair source, read ``chunk_videos`` at a time (with read-ahead)."""
    net.eval()
    chunks = [
        np.arange(i, min(i + chunk_videos, len(source)))
        for i in range(0, len(source), chunk_videos)
    ]
    frames = [
        frame_scores(net, a, v)
        for _, pairs in prefetch_reads(source.read, chunks)
        for a, v in pairs
    ]
    return _video_scores(frames), frames


def _video_scores(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.array(
        [float(torch.logsumexp(torch.from_numpy(f).double(), dim=0)) for f in frames],
        dtype=np.float64,
    )
