"""Spatial explanations of a run on stored videos (paper Sec. 3.1, Fig. 4): the shell.

A run whose detector has a per-frame linear head on one visual feature
(``Detector.spatial_head()``: the probe) is explained spatially by re-running
that feature's encoder on the frames being explained
(:mod:`featstore.spatial`). This module binds the pieces: it loads the encoder
the run was trained on (checked against the store's record), picks the frames
(``top``: the highest-scoring rows of the stored per-frame scores, the paper's
qualitative choice; ``all``; or a list), decodes only the frames the explainer
needs (:func:`featstore.seek.read_frames`; the whole clip for encoders whose
rows mix frames), takes the face tracks from the store's cache (tracking the
video when they are missing), and writes what ``featstore explain spatial``
shows: one ``.npz`` and one ``.json`` per video, an overlay PNG per frame and a
contact sheet.

>>> out = explain_spatial("runs/clip", store, "exddv", ["000_003"], out_dir="expl")  # doctest: +SKIP
>>> out.videos[0].maps.peaks  # doctest: +SKIP
array([[0.52, 0.31], ...])
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.layout import layer_key
from featstore.spatial import FrameHead, SpatialError, SpatialMaps, VideoFrames
from featstore.spatial.geometry import long_side_hw
from featstore.trainers.data import Selection, SelectionError
from featstore.trainers.runs import RunError

if TYPE_CHECKING:
    from featstore.encoders.base import Encoder
    from featstore.landmarks import FaceTracks
    from featstore.spatial import SpatialExplainer
    from featstore.store import FeatureStore
    from featstore.trainers.inputs import StoredFeature
    from featstore.trainers.kinds import Detector

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TOP_K",
    "Explaining",
    "SpatialExplanation",
    "SpatialRun",
    "choose_frames",
    "explain_frames",
    "explain_spatial",
    "explain_video",
    "frames_of_rows",
    "load_explaining",
    "media_path",
    "slug",
    "video_tracks",
    "write_explanation",
]

DEFAULT_TOP_K = 8
NPZ_LONG_SIDE = 128  # the frame-space maps kept in the .npz
PNG_LONG_SIDE = 256  # the heat maps drawn over frames (stretched bilinearly)


@dataclass(frozen=True, eq=False)
class Explaining:
    """A run ready to explain: its detector, the feature and head it reads, the encoder."""

    detector: Detector
    feature: StoredFeature
    head: FrameHead
    encoder: Encoder
    explainer: SpatialExplainer

    @property
    def frame_hz(self) -> float:
        return float(self.feature.frame_hz)


@dataclass(frozen=True, eq=False)
class SpatialExplanation:
    """One stored video explained: its maps, and the stored scores they sit beside."""

    dataset: str
    video_id: str
    label: int | None
    score: float  # the video logit from the stored rows
    frame_hz: float
    frame_scores: np.ndarray = field(repr=False)  # [T] stored per-row logits
    maps: SpatialMaps = field(repr=False)
    frames: np.ndarray = field(repr=False)  # [N, H, W, 3] the explained frames (for figures)

    @property
    def stored_logits(self) -> np.ndarray:
        """``[N]`` the stored rows' logits of the explained frames."""
        return self.frame_scores[np.minimum(self.maps.rows, len(self.frame_scores) - 1)]

    def to_dict(self) -> dict[str, Any]:
        m = self.maps
        return {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "label": self.label,
            "score": self.score,
            **m.summary(),
            "frames": [
                {
                    "frame": int(f),
                    "time_s": float(timebase.frames_to_seconds(int(f))),
                    "row": int(r),
                    "stored_logit": float(s),
                    "logit": float(z),
                    "peak": [float(p[0]), float(p[1])],
                }
                for f, r, s, z, p in zip(
                    m.frames, m.rows, self.stored_logits, m.logits, m.peaks, strict=True
                )
            ],
        }


@dataclass(frozen=True)
class SpatialRun:
    """What :func:`explain_spatial` explained and wrote."""

    videos: tuple[SpatialExplanation, ...]
    files: tuple[Path, ...] = ()


# ------------------------------------------------------------------ binding a run


def load_explaining(
    run: Detector | str | os.PathLike[str],
    store: FeatureStore,
    dataset: str,
    *,
    device: str = "cpu",
    checkpoint: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Explaining:
    """The run's detector, head and encoder, checked against what ``dataset`` stores.

    The encoder is the one the run's feature records (registered name, checkpoint,
    random init); ``checkpoint`` overrides the path, ``options`` are loader options
    (e.g. ``{"pooling": "cls"}``). What the store recorded of the extraction
    (checkpoint digest, the family's settings such as FSFM's pooling) must match the
    loaded encoder: a mismatch would explain another model than the one scored.
    """
    from featstore.encoders import load_encoder
    from featstore.trainers.kinds import Detector, load

    detector = run if isinstance(run, Detector) else load(run)
    feature, head = detector.spatial_head()
    info = store.encoder_info(dataset, feature.encoder)
    encoder = load_encoder(
        feature.encoder_name,
        checkpoint or feature.checkpoint,
        device=device,
        random_init=bool(feature.random_init),
        **dict(options or {}),
    )
    _check_encoder(encoder, feature, info, dataset)
    explainer = encoder.spatial(feature.layer)
    head.check(encoder.layer_dims[feature.layer], f"{feature.key} of {encoder.name}")
    return Explaining(detector, feature, head, encoder, explainer)


def _check_encoder(encoder: Encoder, feature: StoredFeature, info: Any, dataset: str) -> None:
    """The loaded encoder computes the rows ``dataset`` stores (``EncoderInfo.conflicts``:
    checkpoint digest, rate, random-init scheme, settings such as FSFM's pooling)."""
    recorded = feature.checkpoint_sha256
    if recorded and encoder.checkpoint_sha256 and recorded != encoder.checkpoint_sha256:
        raise SpatialError(
            f"the run was trained on {feature.key} of checkpoint sha256 {recorded[:12]}..., but "
            f"{encoder.checkpoint} has sha256 {encoder.checkpoint_sha256[:12]}...; pass "
            "--checkpoint PATH to the checkpoint the run was trained with"
        )
    problems = encoder.info(dtype=info.dtype, layers=[feature.layer]).conflicts(info)
    if problems:
        raise SpatialError(
            f"the loaded {encoder.name} does not compute the {feature.key} rows {dataset} "
            f"stores ({'; '.join(problems)}); pass --checkpoint PATH or --option KEY=VALUE "
            "(e.g. pooling=cls) as they were extracted"
        )


# ------------------------------------------------------------------ frames and media


def choose_frames(
    frames: str | Sequence[int],
    *,
    frame_scores: np.ndarray,
    frame_hz: float,
    last_frame: int,
    top_k: int = DEFAULT_TOP_K,
) -> list[int]:
    """25 fps frame indices to explain.

    ``"top"``: the first frame of each of the ``top_k`` highest-scoring rows (in
    decreasing score); ``"all"``: every frame with a row; a list: those frames.
    """
    if isinstance(frames, str) and frames == "top":
        if top_k < 1:
            raise SpatialError(f"top_k must be at least 1, got {top_k}")
        order = np.argsort(-np.asarray(frame_scores, dtype=np.float64), kind="stable")
        picked = [int(r * timebase.FRAME_HZ / frame_hz) for r in order[:top_k]]
        return [f for f in picked if f < last_frame]
    if isinstance(frames, str) and frames == "all":
        return list(range(last_frame))
    if isinstance(frames, str):
        raise SpatialError(
            f"frames must be 'top', 'all' or a list of frame indices, got {frames!r}"
        )
    out = [int(f) for f in frames]
    if not out:
        raise SpatialError("no frames to explain")
    return list(dict.fromkeys(out))


def media_path(
    store: FeatureStore, dataset: str, video_id: str, *, media_root: str | os.PathLike[str] | None
) -> Path:
    """The video file of a stored video: the manifest's path under ``media_root`` (default:
    the root recorded at import)."""
    manifest = store.manifest(dataset)
    hit = manifest[manifest["video_id"].astype(str) == str(video_id)]
    if hit.empty:
        raise SelectionError(f"no video {video_id!r} in the manifest of {dataset}")
    root = Path(media_root) if media_root is not None else None
    if root is None:
        root = Path(str(store.manifest_attrs(dataset).get("root", ".")))
    path = root / str(hit["path"].iloc[0])
    if not path.exists():
        raise SpatialError(
            f"the video file of {dataset}/{video_id} is not at {path}; spatial explanations "
            "re-run the encoder on the media: pass --media-root DIR"
        )
    return path


def video_tracks(store: FeatureStore, dataset: str, video_id: str, path: Path) -> FaceTracks:
    """The video's cached face tracks, or tracked now (whole decode) when the store lacks them."""
    from featstore.crops import load_tracks

    tracks = load_tracks(store, dataset, video_id)
    if tracks is not None:
        return tracks
    from featstore.landmarks import track_faces
    from featstore.media import decode

    log.info("%s/%s has no cached face tracks: tracking its faces", dataset, video_id)
    return track_faces(decode(path, audio=False).frames)


def explain_frames(
    explaining: Explaining,
    path: Path,
    frames: Sequence[int],
    *,
    n_frames: int,
    tracks: FaceTracks | None,
) -> tuple[SpatialMaps, np.ndarray]:
    """(maps of ``frames``, the frames ``[N, H, W, 3]``): decode what the explainer needs, explain."""
    from featstore.media import decode
    from featstore.seek import read_frames

    explainer = explaining.explainer
    context = explainer.context(frames, n_frames)
    audio = None
    if len(context) == n_frames:  # the whole clip: one sequential decode
        media = decode(path, audio=explainer.needs_audio)
        decoded, audio = media.frames[:n_frames], media.audio
        if len(decoded) < n_frames:
            raise SpatialError(f"{path} decodes to {len(decoded)} frames, expected {n_frames}")
    else:
        decoded = read_frames(path, context)
        if explainer.needs_audio:
            audio = decode(path, video=False).audio
    video = VideoFrames(
        indices=np.asarray(context), frames=decoded, n_frames=n_frames, tracks=tracks, audio=audio
    )
    return explainer.explain(video, frames, explaining.head), video.take(frames)


def explain_video(
    explaining: Explaining,
    store: FeatureStore,
    dataset: str,
    video_id: str,
    *,
    frames: str | Sequence[int] = "top",
    top_k: int = DEFAULT_TOP_K,
    media_root: str | os.PathLike[str] | None = None,
) -> SpatialExplanation:
    """Explain one stored video (scores from its stored rows, maps from its media)."""
    scored = explaining.detector.score_selection(store, Selection.of_videos(dataset, [video_id]))
    if scored.frame_scores is None:
        raise RunError(f"{explaining.detector.where()} gives no per-frame scores")
    frame_scores = np.asarray(scored.frame_scores[0], dtype=np.float64)  # [T]
    path = media_path(store, dataset, video_id, media_root=media_root)
    tracks = (
        video_tracks(store, dataset, video_id, path) if explaining.explainer.needs_tracks else None
    )
    n_frames = (
        tracks.n_frames
        if tracks is not None
        else frames_of_rows(len(frame_scores), explaining.frame_hz)
    )
    last = explaining.explainer.last_frame(n_frames)
    chosen = choose_frames(
        frames,
        frame_scores=frame_scores,
        frame_hz=explaining.frame_hz,
        last_frame=last,
        top_k=top_k,
    )
    maps, images = explain_frames(explaining, path, chosen, n_frames=n_frames, tracks=tracks)
    label = scored.manifest["label"].iloc[0] if "label" in scored.manifest.columns else None
    return SpatialExplanation(
        dataset=dataset,
        video_id=video_id,
        label=None
        if label is None or (isinstance(label, float) and math.isnan(label))
        else int(label),
        score=float(scored.scores[0]),
        frame_hz=explaining.frame_hz,
        frame_scores=frame_scores,
        maps=maps,
        frames=images,
    )


def frames_of_rows(n_rows: int, frame_hz: float) -> int:
    """Video frames covered by ``n_rows`` rows at ``frame_hz`` (the frames with a row)."""
    return math.floor(n_rows * timebase.FRAME_HZ / frame_hz + 1e-9)


# ------------------------------------------------------------------ outputs


def slug(video_id: str) -> str:
    """A file name for a video id (ids are root-relative paths)."""
    return str(video_id).replace("/", "__").replace("\\", "__")


def write_explanation(e: SpatialExplanation, out_dir: str | os.PathLike[str]) -> list[Path]:
    """``<video>.npz`` (maps, peaks, geometry, frame-space maps), ``<video>.json`` and an
    overlay PNG per frame; returns the files written."""
    from featstore.trainers.spatial_plots import Panel, overlay_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = e.maps
    base = slug(e.video_id)
    small = m.frame_maps(long_side_hw(m.frame_hw, NPZ_LONG_SIDE))
    npz = out / f"{base}.npz"
    np.savez_compressed(
        npz,
        frames=m.frames,
        rows=m.rows,
        logits=m.logits,
        stored_logits=e.stored_logits,
        maps=m.maps,
        constant=np.zeros(len(m.frames)) if m.constant is None else m.constant,
        peaks=m.peaks,
        peak_cells=m.peak_cells,
        to_frame=m.to_frame,
        input_hw=np.asarray(m.input_hw),
        frame_hw=np.asarray(m.frame_hw),
        frame_maps=small,
    )
    doc = out / f"{base}.json"
    doc.write_text(json.dumps(e.to_dict(), indent=2))
    files = [npz, doc]
    full = m.frame_maps(long_side_hw(m.frame_hw, PNG_LONG_SIDE))
    for i, f in enumerate(m.frames):
        caption = f"frame {int(f)}  logit {m.logits[i]:+.2f}"
        files.append(
            overlay_png(
                out / f"{base}_f{int(f):05d}.png",
                Panel(e.frames[i], full[i], tuple(m.peaks[i]), caption=caption),
                title=f"{e.dataset}/{e.video_id}",
            )
        )
    return files


def explain_spatial(
    run: Detector | str | os.PathLike[str],
    store: FeatureStore,
    dataset: str,
    video_ids: Sequence[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    frames: str | Sequence[int] = "top",
    top_k: int = DEFAULT_TOP_K,
    device: str = "cpu",
    checkpoint: str | None = None,
    options: Mapping[str, Any] | None = None,
    media_root: str | os.PathLike[str] | None = None,
) -> SpatialRun:
    """Explain stored videos of ``dataset`` with a run; write them to ``out_dir`` when given
    (per video its files, and ``contact_sheet.png`` over all of them)."""
    from featstore.trainers.spatial_plots import Panel, contact_sheet_png

    if not video_ids:
        raise SpatialError("no videos to explain")
    explaining = load_explaining(
        run, store, dataset, device=device, checkpoint=checkpoint, options=options
    )
    videos, files = [], []
    for vid in video_ids:
        e = explain_video(
            explaining, store, dataset, vid, frames=frames, top_k=top_k, media_root=media_root
        )
        videos.append(e)
        if out_dir is not None:
            files.extend(write_explanation(e, out_dir))
    if out_dir is not None:
        rows = []
        for e in videos:
            m = e.maps
            heat = m.frame_maps(long_side_hw(m.frame_hw, PNG_LONG_SIDE))
            panels = [
                Panel(e.frames[i], heat[i], tuple(m.peaks[i]), caption=f"f{int(m.frames[i])}")
                for i in range(len(m.frames))
            ]
            rows.append((f"{e.video_id}\n{e.score:+.2f}", panels))
        files.append(
            contact_sheet_png(
                Path(out_dir) / "contact_sheet.png",
                rows,
                title=f"{explaining.detector.name}: {m.method} on {layer_key(m.layer)} of {m.encoder}",
            )
        )
    return SpatialRun(videos=tuple(videos), files=tuple(files))
