"""Next-token prediction anomaly detector (paper Sec. 3.2, Supp. A): the pure numeric core.

A decoder-only Transformer reads per-frame features ``x_1 .. x_t`` of a real
video and predicts ``x_{t+1}``; it is trained with the MSE to the next frame
on real videos only, so frames it cannot predict are taken as evidence of a
manipulation. The paper's architecture is the default: 4 layers of 4 heads,
width 512, feed-forward 1024, ``Linear(D -> 512)`` before and
``Linear(512 -> D)`` after the Transformer, causal attention. Adam (lr 1e-3)
with a cosine schedule over the planned steps, up to 100 epochs, early
stopping with patience 10 on the validation loss, best weights restored
(Supp. A: "similar to the linear probe ... anneal the learning rate using a
cosine scheduler").

Choices the paper leaves open, made here and recorded in every run config:

- Positions: learned absolute embeddings of the position inside a window
  (GPT style; ``positions="sinusoidal"`` for fixed ones).
- Frames are L2-normalised before the model (``l2_normalize``, default on, as
  the probe and the synchronisation model do), so errors are comparable
  across encoders of different scales. Pre-LayerNorm blocks, dropout 0.1.
- Long videos are cut into windows of at most ``max_context`` frames (256 =
  10 s at 25 Hz). Training windows start every ``max_context - 1`` frames,
  overlapping by one frame, so every transition ``t-1 -> t`` is a target
  exactly once. Scoring windows start every ``max_context // 2`` frames; a
  frame ``t >= max_context`` is scored by the window in which it has at least
  ``max_context // 2`` frames of history.
- Per-frame error ``e_t = mean_d (xhat_t - x_t)^2`` for ``t >= 1``; frame 0
  has no history and takes frame 1's error. A single-frame video has nothing
  to predict: its error is 0 (no evidence of a fake), and it adds nothing to
  the training loss.
- Video score = ``max_t e_t`` (the paper's).
- The loss is the mean of ``e_t`` over every target frame of a batch; padded
  positions are masked out of it. Windows are right-padded, so the causal
  mask alone already keeps real positions from attending to padding: a
  video's errors do not depend on the other videos of its batch.

Scores as logits (the shared convention of ``featstore.trainers.runs``): with ``tau_f``
and ``tau_v`` the ``threshold_quantile`` (0.99) quantiles of real frame
errors and real video scores (``fit_thresholds``), the frame logit is
``z_t = log(e_t / tau_f) / 2`` and the video logit ``s = log(max_t e_t / tau_v) / 2``,
so ``sigmoid(2 s) = m / (m + tau_v)``. Both are monotone in the errors (AUCs
are the paper's), 0 sits at the learnt thresholds (segments = runs of
``e_t > tau_f``), and the "probability" is **not calibrated**: it only says
how far a video is above or below the real videos' 99th percentile.

>>> result = fit_ntp(train_source, val_source, NTPConfig(d_model=64))  # doctest: +SKIP
>>> errors = frame_errors(result.model, test_source)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from featstore.errors import FeatstoreError
from featstore.trainers.memory import plan_cache
from featstore.trainers.sources import FeatureCache, VideoSource, batch_order, prefetch_batches
from featstore.trainers.training import (
    Interruption,
    StateFunctions,
    TrainingControl,
    resolve_device,
    set_torch_rng_state,
    torch_rng_state,
    train_epochs,
)

log = logging.getLogger(__name__)

__all__ = [
    "NTPConfig",
    "NTPEpochStats",
    "NTPError",
    "NTPFitResult",
    "NTPThresholds",
    "NextFrameTransformer",
    "fit_ntp",
    "fit_thresholds",
    "frame_errors",
    "frame_logits",
    "probability",
    "scoring_windows",
    "training_windows",
    "video_logits",
    "video_scores",
]

NORM_EPS = 1e-12  # as torch.nn.functional.normalize
ERROR_EPS = 1e-12  # errors are clamped here before the log of the logit mapping
POSITIONS = ("learned", "sinusoidal")


class NTPError(FeatstoreError, ValueError):
    """The next-token predictor cannot be trained or applied on these inputs."""


@dataclass(frozen=True)
class NTPConfig:
    """Architecture and training hyperparameters; the defaults are the paper's where it gives them.

    ``batch_videos`` videos make a step (cut into windows, padded together);
    the paper does not give a batch size. ``cache_bytes`` is the memory budget
    for holding the videos (``None``: ``featstore.trainers.memory``'s default); it
    changes speed, not the model, and runs record it outside the hyperparameters.
    """

    d_model: int = 512
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    positions: str = "learned"
    max_context: int = 256
    l2_normalize: bool = True
    lr: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    batch_videos: int = 16
    seed: int = 43
    threshold_quantile: float = 0.99
    cache_bytes: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NTPError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise NTPError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not isinstance(self.max_context, int) or self.max_context < 2:
            raise NTPError(f"max_context must be an integer >= 2, got {self.max_context!r}")
        if not isinstance(self.batch_videos, int) or self.batch_videos < 1:
            raise NTPError(f"batch_videos must be an integer >= 1, got {self.batch_videos!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise NTPError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.positions not in POSITIONS:
            raise NTPError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise NTPError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise NTPError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise NTPError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile!r}")
        if self.cache_bytes is not None and (
            isinstance(self.cache_bytes, bool)
            or not isinstance(self.cache_bytes, int)
            or self.cache_bytes < 0
        ):
            raise NTPError(f"cache_bytes must be None or an integer >= 0, got {self.cache_bytes!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise NTPError(f"unknown device {self.device!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters a run records (``cache_bytes`` is an execution detail: not here)."""
        doc = dataclasses.asdict(self)
        del doc["cache_bytes"]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NTPConfig:
        """The config recorded in a run (unknown keys are an error, missing ones take defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(doc) - names
        if unknown:
            raise NTPError(f"unknown NTP hyperparameters {sorted(unknown)}")
        return cls(**doc)


# ----------------------------------------------------------------------------- model


def _sinusoids(length: int, width: int) -> torch.Tensor:
    """The Transformer's fixed sinusoidal position table ``[length, width]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(1e4) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return table


class NextFrameTransformer(nn.Module):
    """``x [B, T, D] -> xhat [B, T, D]``: position ``t`` predicts frame ``t + 1`` from frames ``<= t``."""

    def __init__(self, dim: int, config: NTPConfig) -> None:
        super().__init__()
        if dim < 1:
            raise NTPError(f"feature dim must be >= 1, got {dim}")
        self.dim, self.config = int(dim), config
        self.input_proj = nn.Linear(dim, config.d_model)
        if config.positions == "learned":
            self.positions = nn.Parameter(torch.zeros(config.max_context, config.d_model))
            nn.init.normal_(self.positions, std=0.02)
        else:
            self.register_buffer(
                "positions", _sinusoids(config.max_context, config.d_model), persistent=False
            )
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_heads,
            dim_feedforward=config.d_ff,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(
            layer, config.n_layers, norm=nn.LayerNorm(config.d_model), enable_nested_tensor=False
        )
        self.output_proj = nn.Linear(config.d_model, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.config.max_context:
            raise NTPError(f"window of {t} frames exceeds max_context {self.config.max_context}")
        h = self.input_proj(x) + self.positions[:t]  # [B, T, d]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=x.device, dtype=h.dtype)
        h = self.blocks(h, mask=causal, is_causal=True)  # [B, T, d]
        return self.output_proj(h)  # [B, T, D]

    def to_state(self) -> dict[str, np.ndarray]:
        """The state dict as float32 numpy arrays (for safetensors)."""
        return {k: v.detach().cpu().float().numpy().copy() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(
        cls, state: dict[str, np.ndarray], dim: int, config: NTPConfig
    ) -> NextFrameTransformer:
        model = cls(dim, config)
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise NTPError(f"saved weights do not fit the recorded architecture: {exc}") from exc
        return model.eval()


# ----------------------------------------------------------------------------- windows


def training_windows(n_frames: int, max_context: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering every transition of a video once (overlap: one frame)."""
    if n_frames < 2:
        return []
    step = max_context - 1
    return [(a, min(a + max_context, n_frames)) for a in range(0, n_frames - 1, step)]


def scoring_windows(n_frames: int, max_context: int) -> list[tuple[int, int, int]]:
    """``[(start, stop, keep_from), ...]``: window rows, and the first target frame it scores.

    Window 0 scores frames ``1 .. C-1``; window ``k`` starts at ``k * C//2``
    and scores the last ``C//2`` frames it sees, so every scored frame past
    the first window has at least ``C//2`` frames of history.
    """
    if n_frames < 2:
        return []
    c, half = max_context, max_context // 2
    out = [(0, min(c, n_frames), 1)]
    k = 1
    while k * half + c - half < n_frames:
        a = k * half
        out.append((a, min(a + c, n_frames), a + c - half))
        k += 1
    return out


@dataclass(frozen=True)
class _WindowBatch:
    x: torch.Tensor  # [W, L, D] float32, right-padded windows
    mask: torch.Tensor  # [W, L] bool, True on target frames (position >= 1, real, kept)
    video: np.ndarray  # [W] index of each window's video in the batch
    start: np.ndarray  # [W] first row of each window in its video


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)


def _pack(
    arrays: Sequence[np.ndarray],
    windows: Sequence[Sequence[tuple[int, int, int]]],
    *,
    l2_normalize: bool,
    device: torch.device,
) -> _WindowBatch | None:
    """Right-pad the windows of a batch of videos into one tensor."""
    spans = [(i, a, b, k) for i, ws in enumerate(windows) for a, b, k in ws]
    if not spans:
        return None
    length = max(b - a for _, a, b, _ in spans)
    dim = arrays[0].shape[1]
    x = torch.zeros(len(spans), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(spans), length, dtype=torch.bool)
    for w, (i, a, b, keep) in enumerate(spans):
        x[w, : b - a] = torch.from_numpy(np.asarray(arrays[i][a:b], dtype=np.float32))
        mask[w, max(keep - a, 1) : b - a] = True
    if l2_normalize:
        x = _normalise(x)  # padding stays 0 (0 / eps)
    video = np.array([s[0] for s in spans], dtype=np.int64)
    start = np.array([s[1] for s in spans], dtype=np.int64)
    return _WindowBatch(x.to(device), mask.to(device), video, start)


def _errors(model: NextFrameTransformer, batch: _WindowBatch) -> torch.Tensor:
    """Per-position errors ``[W, L]``: ``e[:, p] = mean_d (xhat_{p} - x_p)^2`` for ``p >= 1`` (0 at p = 0)."""
    pred = model(batch.x)  # [W, L, D]; pred[:, p] predicts x[:, p + 1]
    sq = (pred[:, :-1] - batch.x[:, 1:]).pow(2).mean(dim=-1)  # [W, L-1]
    return torch.nn.functional.pad(sq, (1, 0))  # [W, L]


def _masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (errors * mask).sum() / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------- feeding


class _Feed:
    """Videos of a source as float32 arrays, from an in-memory cache or streamed with read-ahead."""

    def __init__(self, source: VideoSource, *, cached: bool) -> None:
        self.source = source
        self.cache = FeatureCache(source) if cached else None

    def batches(self, order: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        if self.cache is not None:
            off = self.cache.offsets
            for idx in order:
                yield idx, [self.cache.data[off[i] : off[i + 1]].numpy() for i in idx]
            return
        yield from prefetch_batches(self.source, order)


def _check_source(source: VideoSource, what: str, dim: int | None = None) -> None:
    if len(source) == 0:
        raise NTPError(f"the {what} source holds no videos")
    lengths = np.asarray(source.lengths)
    if lengths.shape != (len(source),) or (lengths < 1).any():
        raise NTPError(f"the {what} source has videos without frames")
    if dim is not None and source.dim != dim:
        raise NTPError(f"{what} features are {source.dim}-wide, expected {dim}")


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class NTPEpochStats:
    """One epoch (1-based): mean training and validation MSE per target frame, last lr."""

    epoch: int
    train_loss: float
    val_loss: float | None
    lr: float
    seconds: float

    @property
    def val_auc(self) -> None:
        """Validation is real-only: there is no AUC (kept for the shared progress line)."""
        return None


@dataclass(frozen=True)
class NTPFitResult:
    """The restored best model (eval mode, on CPU), the history and the schedule actually run."""

    model: NextFrameTransformer
    history: list[NTPEpochStats]
    best_epoch: int
    stopped_early: bool
    planned_steps: int
    interruption: Interruption | None = None  # set when SIGINT/SIGTERM ended the fit early
    resumed_from: int | None = None  # the checkpoint epoch the fit continued from


def _windows_of(lengths: np.ndarray, max_context: int) -> list[list[tuple[int, int, int]]]:
    return [[(a, b, 1) for a, b in training_windows(int(t), max_context)] for t in lengths]


def _mean_loss(model: NextFrameTransformer, feed: _Feed, config: NTPConfig, device) -> float:
    """Validation loss: mean error over every target frame of the source (no dropout)."""
    n = len(feed.source)
    lengths = np.asarray(feed.source.lengths)
    order = [
        np.arange(i, min(i + config.batch_videos, n)) for i in range(0, n, config.batch_videos)
    ]
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    model.eval()
    with torch.no_grad():
        for idx, arrays in feed.batches(order):
            batch = _pack(
                arrays,
                _windows_of(lengths[idx], config.max_context),
                l2_normalize=config.l2_normalize,
                device=device,
            )
            if batch is None:
                continue
            e = _errors(model, batch)
            total += (e * batch.mask).sum().double().cpu()
            count += int(batch.mask.sum())
    return float(total) / max(count, 1)


def fit_ntp(
    train: VideoSource,
    val: VideoSource | None = None,
    config: NTPConfig = NTPConfig(),  # frozen, so sharing the default is safe
    *,
    on_epoch: Callable[[NTPEpochStats], None] | None = None,
    control: TrainingControl | None = None,
) -> NTPFitResult:
    """Train the next-frame predictor on ``train`` (real videos); early-stop on ``val``'s loss.

    Labels are not read: the caller passes real videos only. Without ``val``
    all ``max_epochs`` run and the last weights are kept. The cosine schedule
    anneals from ``lr`` to 0 over ``max_epochs`` epochs of steps, whether or
    not training stops early. Weights, dropout and batch order all follow
    ``seed`` (the global torch RNG is forked, not disturbed). ``control``
    checkpoints, resumes and catches interrupts (``featstore.trainers.training``).
    """
    _check_source(train, "training")
    lengths = np.asarray(train.lengths, dtype=np.int64)
    if (lengths < 2).all():
        raise NTPError("every training video has a single frame: there is no next frame to predict")
    if val is not None:
        _check_source(val, "validation", train.dim)
    device = resolve_device(config.device, error=NTPError)
    train_cached, val_cached = plan_cache(
        config.cache_bytes,
        train_bytes=int(train.nbytes),
        val_bytes=None if val is None else int(val.nbytes),
    )
    feed = _Feed(train, cached=train_cached)
    val_feed = None if val is None else _Feed(val, cached=val_cached)
    steps_per_epoch = math.ceil(len(train) / config.batch_videos)
    planned = steps_per_epoch * config.max_epochs
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(config.seed)
        model = NextFrameTransformer(train.dim, config).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, planned) / planned))
        )
        rng = np.random.default_rng(config.seed)

        def run_epoch(epoch: int) -> tuple[NTPEpochStats, float | None]:
            start = time.perf_counter()
            model.train()
            total = torch.zeros((), dtype=torch.float64)
            count = 0
            for idx, arrays in feed.batches(batch_order(len(train), config.batch_videos, rng)):
                batch = _pack(
                    arrays,
                    _windows_of(lengths[idx], config.max_context),
                    l2_normalize=config.l2_normalize,
                    device=device,
                )
                if batch is not None:  # a batch of single-frame videos has no targets
                    loss = _masked_mean(_errors(model, batch), batch.mask)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    n_targets = int(batch.mask.sum())
                    total += loss.detach().double().cpu() * n_targets
                    count += n_targets
                sched.step()
            train_loss = float(total) / max(count, 1)
            if not math.isfinite(train_loss):
                raise NTPError(
                    f"training loss is {train_loss} at epoch {epoch}: check the features for "
                    "NaN/inf or lower the learning rate"
                )
            val_loss = None if val_feed is None else _mean_loss(model, val_feed, config, device)
            stats = NTPEpochStats(
                epoch,
                train_loss,
                val_loss,
                float(sched.get_last_lr()[0]),
                time.perf_counter() - start,
            )
            return stats, val_loss

        def save_state() -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch_rng_state(device),  # dropout
            }

        def load_state(state: Mapping[str, Any]) -> None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
            rng.bit_generator.state = state["rng"]
            set_torch_rng_state(device, state["torch_rng"])

        loop = train_epochs(
            run_epoch,
            max_epochs=config.max_epochs,
            patience=config.patience,
            snapshot=lambda: _snapshot(model),
            state=StateFunctions(save_state, load_state),
            stats_type=NTPEpochStats,
            on_epoch=on_epoch,
            control=control,
        )
    model = model.cpu()
    model.load_state_dict(loop.best)
    return NTPFitResult(
        model.eval(),
        loop.history,
        loop.best_epoch,
        loop.stopped_early,
        planned,
        interruption=loop.interruption,
        resumed_from=loop.resumed_from,
    )


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- scoring


def frame_errors(
    model: NextFrameTransformer,
    source: VideoSource,
    *,
    batch_videos: int = 32,
    device: str = "cpu",
) -> list[np.ndarray]:
    """Per-frame errors ``[T_i]`` (float32) of every video of ``source``, in source order.

    ``e_t`` for ``t >= 1`` is the MSE of the prediction of frame ``t`` from
    its history; ``e_0 = e_1``; a single-frame video gets ``[0.0]``.
    Padding-safe: a video's errors do not depend on its batch.
    """
    if len(source) == 0:
        return []
    _check_source(source, "scoring", model.dim)
    if batch_videos < 1:
        raise NTPError(f"batch_videos must be >= 1, got {batch_videos}")
    dev = resolve_device(device, error=NTPError)
    model = model.to(dev).eval()
    cfg = model.config
    n = len(source)
    lengths = np.asarray(source.lengths, dtype=np.int64)
    out: list[np.ndarray] = [np.zeros(int(t), dtype=np.float32) for t in lengths]
    order = [np.arange(i, min(i + batch_videos, n)) for i in range(0, n, batch_videos)]
    with torch.no_grad():
        for idx, arrays in _Feed(source, cached=False).batches(order):
            windows = [scoring_windows(int(t), cfg.max_context) for t in lengths[idx]]
            batch = _pack(arrays, windows, l2_normalize=cfg.l2_normalize, device=dev)
            if batch is None:
                continue
            e = _errors(model, batch).float().cpu().numpy()  # [W, L]
            mask = batch.mask.cpu().numpy()  # [W, L]
            for w in range(e.shape[0]):
                pos = np.flatnonzero(mask[w])
                out[int(idx[batch.video[w]])][batch.start[w] + pos] = e[w, pos]
    for errors in out:
        if errors.shape[0] >= 2:
            errors[0] = errors[1]
    return out


def video_scores(errors: Sequence[np.ndarray]) -> np.ndarray:
    """The paper's video score ``max_t e_t`` of each video -> ``[N]`` float64."""
    return np.array([float(np.max(e)) for e in errors], dtype=np.float64)


@dataclass(frozen=True)
class NTPThresholds:
    """Quantiles of real errors: ``frame`` of frame errors, ``video`` of video scores."""

    frame: float
    video: float
    quantile: float
    n_videos: int
    n_frames: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_thresholds(errors: Sequence[np.ndarray], quantile: float = 0.99) -> NTPThresholds:
    """Thresholds from the per-frame errors of real videos (frames ``t >= 1`` only).

    Frame 0 copies frame 1 and is left out, as are single-frame videos
    (nothing was predicted in them).
    """
    if not 0.0 < quantile < 1.0:
        raise NTPError(f"quantile must be in (0, 1), got {quantile!r}")
    scored = [np.asarray(e, dtype=np.float64) for e in errors if len(e) >= 2]
    if not scored:
        raise NTPError("thresholds need at least one real video of two or more frames")
    frames = np.concatenate([e[1:] for e in scored])
    frame = float(np.quantile(frames, quantile))
    video = float(np.quantile(video_scores(scored), quantile))
    return NTPThresholds(
        frame=max(frame, ERROR_EPS),
        video=max(video, ERROR_EPS),
        quantile=float(quantile),
        n_videos=len(scored),
        n_frames=int(frames.size),
    )


def frame_logits(errors: np.ndarray, thresholds: NTPThresholds) -> np.ndarray:
    """``z_t = log(e_t / tau_f) / 2`` ``[T]``: 0 at the frame threshold, monotone in ``e_t``."""
    e = np.maximum(np.asarray(errors, dtype=np.float64), ERROR_EPS)
    return 0.5 * np.log(e / thresholds.frame)


def video_logits(scores: np.ndarray, thresholds: NTPThresholds) -> np.ndarray:
    """``s = log(m / tau_v) / 2`` ``[N]`` for video scores ``m = max_t e_t``."""
    m = np.maximum(np.asarray(scores, dtype=np.float64), ERROR_EPS)
    return 0.5 * np.log(m / thresholds.video)


def probability(logits: np.ndarray) -> np.ndarray:
    """``sigmoid(2 s) = m / (m + tau_v)``: monotone, 0.5 at the threshold, **not calibrated**."""
    from scipy.special import expit

    return expit(2.0 * np.asarray(logits, dtype=np.float64))
