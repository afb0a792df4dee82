"""Paper Fig. 3: one stored video's per-frame scores over its Mel spectrogram and frames.

``video_figure_data`` scores a stored video with a run (``featstore.trainers.explain``)
and decodes its media from the manifest's path (the span of a segment
dataset's row); ``score_figure`` draws, on one time axis, the per-frame scores
(logits on the left axis, ``P(fake) = sigmoid(2 s)`` on the right) over the
annotated fake segments (red) and the decision threshold (dashed), the audio's
Mel spectrogram, and a few frames (triangles mark their times).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.figures import (
    COLUMN_WIDTH_IN,
    FigureError,
    add_caption,
    new_figure,
    paper_style,
    save_figure,
)

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.runs import Run

log = logging.getLogger(__name__)

_P_TICKS = (1e-6, 1e-4, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-6)

__all__ = [
    "VideoFigureData",
    "default_thumbnail_times",
    "score_figure",
    "video_caption",
    "video_figure_data",
]


@dataclass(frozen=True)
class VideoFigureData:
    """Everything Fig. 3 draws for one video, with the run that scored it."""

    dataset: str
    video_id: str
    run: str
    kind: str
    label: int
    score: float
    probability: float
    threshold: float
    frame_hz: float
    frame_scores: np.ndarray = field(repr=False)  # [T] per-row logits
    truth_segments: tuple[tuple[float, float], ...] = ()
    duration_s: float = 0.0
    spectrogram: np.ndarray | None = field(default=None, repr=False)  # [n_mels, F] log energies
    spectrogram_hz: float = 100.0
    thumbnail_times_s: tuple[float, ...] = ()
    thumbnails: tuple[np.ndarray, ...] = field(default=(), repr=False)  # [H, W, 3] uint8 each

    @property
    def times_s(self) -> np.ndarray:
        return (np.arange(self.frame_scores.shape[0]) + 0.5) / self.frame_hz  # [T] row centres

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (scores included, pixels and spectrogram left out)."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("frame_scores", "spectrogram", "thumbnails")
        }
        out["frame_scores"] = self.frame_scores.tolist()
        out["truth_segments"] = [list(s) for s in self.truth_segments]
        out["thumbnail_times_s"] = list(self.thumbnail_times_s)
        return out


def _manifest_row(store: FeatureStore, dataset: str, video_id: str) -> Mapping[str, Any]:
    manifest = store.manifest(dataset)
    rows = manifest[manifest["video_id"].astype(str) == video_id]
    if rows.empty:
        raise FigureError(f"no video {video_id!r} in {dataset}")
    return rows.iloc[0].to_dict()


def _span_s(row: Mapping[str, Any]) -> tuple[float, float | None]:
    """A segment dataset's span in its source video (``start_s``, ``end_s``), else ``(0, None)``."""
    start, end = row.get("start_s"), row.get("end_s")
    finite = [isinstance(v, int | float) and math.isfinite(v) for v in (start, end)]
    return (float(start), float(end)) if all(finite) else (0.0, None)


def _decode_row(store: FeatureStore, dataset: str, row: Mapping[str, Any]) -> Any:
    from featstore import media

    root = Path(str(store.manifest_attrs(dataset).get("root", ".")))
    path = root / str(row["path"])
    start_s, end_s = _span_s(row)
    try:
        info = media.probe(path)
        decoded = media.decode(path, audio=info.audio is not None, until_s=end_s)
    except media.MediaError as exc:
        raise FigureError(f"{dataset}/{row['video_id']}: cannot decode {path}: {exc}") from None
    if start_s <= 0:
        return decoded
    first = round(start_s * decoded.fps)
    audio = None
    if decoded.audio is not None:
        audio = decoded.audio[round(start_s * decoded.sample_rate_hz) :]
    frames = decoded.frames[first:] if decoded.frames is not None else None
    return media.DecodedMedia(
        frames=frames,
        audio=audio,
        fps=decoded.fps,
        sample_rate_hz=decoded.sample_rate_hz,
        info=decoded.info,
    )


def default_thumbnail_times(frame_scores: np.ndarray, frame_hz: float, k: int = 3) -> list[float]:
    """The highest- and lowest-scoring rows and the middle one (row centres, s), in time order."""
    t = frame_scores.shape[0]
    picks = [int(np.argmax(frame_scores)), int(np.argmin(frame_scores)), t // 2]
    rows = sorted(dict.fromkeys(picks))[:k]
    return [(r + 0.5) / frame_hz for r in rows]


def _thumbnail(frame: np.ndarray, max_px: int = 160) -> np.ndarray:
    """Downscale ``[H, W, 3]`` by an integer stride so the longer side is at most ``max_px``."""
    step = max(1, math.ceil(max(frame.shape[:2]) / max_px))
    return np.ascontiguousarray(frame[::step, ::step])


def video_figure_data(
    run: Run | str | os.PathLike[str],
    store: FeatureStore,
    dataset: str,
    video_id: str,
    *,
    at_s: Sequence[float] | None = None,
    threshold: float = 0.0,
    n_mels: int = 64,
) -> VideoFigureData:
    """Score ``dataset/video_id`` with ``run`` and decode its media for Fig. 3.

    ``at_s``: times of the frames to show (default: ``default_thumbnail_times``).
    """
    from featstore.encoders.fbank import logfbank
    from featstore.trainers.explain import explain_temporal
    from featstore.trainers.runs import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    explanation = explain_temporal(run, store, dataset, video_id, threshold=threshold)
    scores = np.asarray(explanation.frame_scores, dtype=np.float64)  # [T]
    decoded = _decode_row(store, dataset, _manifest_row(store, dataset, video_id))
    n_video = 0 if decoded.frames is None else int(decoded.frames.shape[0])
    duration_s = max(n_video / decoded.fps, scores.shape[0] / explanation.frame_hz)
    spectrogram = None
    if decoded.audio is not None and decoded.audio.size:
        spectrogram = logfbank(decoded.audio, decoded.sample_rate_hz, n_filters=n_mels).T
    else:
        log.info("%s/%s has no audio: no spectrogram", dataset, video_id)
    times = (
        list(at_s) if at_s is not None else default_thumbnail_times(scores, explanation.frame_hz)
    )
    for t in times:
        if not (math.isfinite(t) and 0 <= t <= duration_s):
            raise FigureError(f"frame time {t} s lies outside the video (0-{duration_s:.2f} s)")
    thumbs = []
    if n_video:
        for t in times:
            thumbs.append(_thumbnail(decoded.frames[min(int(t * decoded.fps), n_video - 1)]))
    return VideoFigureData(
        dataset=dataset,
        video_id=video_id,
        run=str(run.path),
        kind=run.kind,
        label=explanation.label,
        score=explanation.score,
        probability=explanation.probability,
        threshold=threshold,
        frame_hz=explanation.frame_hz,
        frame_scores=scores,
        truth_segments=tuple(tuple(s) for s in explanation.truth_segments),
        duration_s=duration_s,
        spectrogram=spectrogram,
        thumbnail_times_s=tuple(float(t) for t in times) if thumbs else (),
        thumbnails=tuple(thumbs),
    )


def video_caption(data: VideoFigureData) -> str:
    label = "fake" if data.label else "real"
    parts = [
        f"{data.dataset}/{data.video_id} ({label}), scored by {Path(data.run).name} "
        f"({data.kind}): video score {data.score:+.2f}, P(fake) {data.probability:.2f}.",
        "Per-frame scores (logits, left; P(fake) = sigmoid(2s), right);",
        "red: annotated fake segments;" if data.truth_segments else "no annotated fake segment;",
        f"dashed: decision threshold (score {data.threshold:g}).",
    ]
    if data.spectrogram is not None:
        parts.append("Middle: Mel spectrogram.")
    if data.thumbnails:
        parts.append("Bottom: the frames at the triangles.")
    return " ".join(parts)


def score_figure(
    data: VideoFigureData,
    path: str | os.PathLike[str],
    *,
    width_in: float = COLUMN_WIDTH_IN,
    caption: bool = True,
) -> Path:
    """Fig. 3 for one video: score curve, Mel spectrogram and frames, on one time axis."""
    panels = ["scores"]
    heights = [1.3]
    if data.spectrogram is not None:
        panels.append("spectrogram")
        heights.append(0.8)
    if data.thumbnails:
        panels.append("frames")
        heights.append(0.85)
    with paper_style():
        fig = new_figure(width_in, 0.5 + sum(heights) + (0.45 if caption else 0.0))
        grid = fig.add_gridspec(len(panels), 1, height_ratios=heights)
        ax = fig.add_subplot(grid[0])
        _draw_scores(ax, data)
        if "spectrogram" in panels:
            spec_ax = fig.add_subplot(grid[panels.index("spectrogram")], sharex=ax)
            spec = data.spectrogram
            spec_ax.imshow(
                spec, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                extent=(0.0, spec.shape[1] / data.spectrogram_hz, 0, spec.shape[0]),
            )  # fmt: skip
            spec_ax.set_ylabel("Mel band")
            spec_ax.set_yticks([0, spec.shape[0]])
            for t in data.thumbnail_times_s:
                spec_ax.axvline(t, color="white", lw=0.5, ls="--")
            ax.tick_params(labelbottom=False)
            ax.set_xlabel("")
            spec_ax.set_xlabel("time (s)")
        if "frames" in panels:
            sub = grid[panels.index("frames")].subgridspec(1, len(data.thumbnails), wspace=0.05)
            for k, (t, image) in enumerate(
                zip(data.thumbnail_times_s, data.thumbnails, strict=True)
            ):
                thumb_ax = fig.add_subplot(sub[k])
                thumb_ax.imshow(image)
                thumb_ax.set_xticks([])
                thumb_ax.set_yticks([])
                thumb_ax.set_title(f"▼ {t:.2f} s", pad=1.5)
        if caption:
            add_caption(fig, video_caption(data), width_in)
        return save_figure(fig, path)


def _draw_scores(ax: Any, data: VideoFigureData) -> None:
    times, scores = data.times_s, data.frame_scores
    for start_s, end_s in data.truth_segments:
        ax.axvspan(start_s, end_s, color="tab:red", alpha=0.25, lw=0)
    ax.plot(times, scores, color="black", lw=0.9)
    ax.axhline(data.threshold, color="grey", ls="--", lw=0.7)
    if data.thumbnail_times_s:
        top = float(scores.max()) + 0.08 * float(np.ptp(scores) or 1.0)
        marks = np.full(len(data.thumbnail_times_s), top)
        ax.plot(data.thumbnail_times_s, marks, "v", color="tab:blue", ms=4)
    ax.set_xlim(0.0, data.duration_s)
    ax.set_ylabel("score (logit)")
    ax.set_xlabel("time (s)")

    def to_probability(s: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-2.0 * np.clip(s, -350.0, 350.0)))

    def to_score(p: np.ndarray) -> np.ndarray:
        q = np.clip(p, 1e-12, 1.0 - 1e-12)
        return 0.5 * np.log(q / (1.0 - q))

    right = ax.secondary_yaxis("right", functions=(to_probability, to_score))
    right.set_ylabel("P(fake)")
    # Probabilities bunch up where the logits are far from 0: tick at round probabilities
    # whose logits lie in view, at most five of them.
    lo, hi = ax.get_ylim()
    shown = [p for p in _P_TICKS if lo <= float(to_score(np.float64(p))) <= hi]
    if len(shown) > 5:
        shown = [shown[round(i)] for i in np.linspace(0, len(shown) - 1, 5)]
    right.set_yticks(shown, labels=[f"{p:g}" for p in shown])
