"""``featstore explain clicks``: spatial explanations against human clicks (paper Fig. 4), the shell.

For every fake video of the selection that has clicks (ExDDV's ``annotations``
in the manifest), the run's spatial map is computed on each clicked frame
(:mod:`featstore.trainers.spatial`) and its maximum compared with every click on that
frame; the same clicks are compared with the baselines, in the same run: a
random position (seeded), the frame centre, the face centre (the centre of the
store's cached face box on that frame; videos without cached tracks have none,
unless ``track_faces``), and any predictions file of ``(video_id, frame, x, y)``
(e.g. the click model of ExDDV). The numbers are :mod:`featstore.trainers.clicks`'; this
module reads the store and the media and writes:

- ``clicks.csv``: one row per click (its frames, the click, the map's peak, every
  method's error, the video's score);
- ``videos.csv``: one row per video (score, each method's mean error);
- ``curve.csv`` and ``clicks_mae.png``: MAE against the minimum fakeness score,
  mean, spread and number of videos per threshold (Fig. 4, left);
- ``clicks_grid.png``: the highest-scoring videos, click (red) over explanation
  maximum (green) (Fig. 4, right);
- ``clicks.json``: the settings and a summary (each method's MAE over all videos).

The fakeness score is the run's P(fake) ``sigmoid(2 s)`` of the stored rows (a
rank score in [0, 1] for kinds that are not calibrated). Click frames are the
source video's frame indices (ExDDV's tool counts decoded frames): they become
25 fps frames through the source frame rate (``click_fps``; default the rate the
file declares).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from featstore.trainers.clicks import (
    CENTRE,
    DEFAULT_THRESHOLDS,
    FACE,
    RANDOM,
    ClickError,
    click_errors,
    clicks_of_row,
    curve,
    face_centres,
    random_points,
    video_errors,
)
from featstore.trainers.data import Selection

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.kinds import Detector
    from featstore.trainers.spatial_plots import Panel

log = logging.getLogger(__name__)

__all__ = ["EXPLANATION", "ClicksResult", "evaluate_clicks", "read_predictions"]

EXPLANATION = "explanation"
GRID_VIDEOS = 8


@dataclass(frozen=True)
class ClicksResult:
    """What :func:`evaluate_clicks` computed and wrote."""

    summary: dict[str, Any]
    clicks: pd.DataFrame
    videos: pd.DataFrame
    curve: pd.DataFrame
    files: tuple[Path, ...]


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A predictions file: CSV with ``video_id`` (or ``video``), ``frame``, ``x``, ``y``
    (frames and coordinates as the clicks have them) -> those four columns."""
    p = Path(path)
    try:
        table = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise ClickError(f"cannot read predictions {p}: {exc}") from None
    if "video_id" not in table.columns and "video" in table.columns:
        table = table.rename(columns={"video": "video_id"})
    missing = {"video_id", "frame", "x", "y"} - set(table.columns)
    if missing:
        raise ClickError(
            f"predictions {p} lack columns {sorted(missing)} (need video_id, frame, x, y)"
        )
    out = table[["video_id", "frame", "x", "y"]].copy()
    out["video_id"] = out["video_id"].astype(str)
    try:
        out["frame"] = out["frame"].astype(int)
        out[["x", "y"]] = out[["x", "y"]].astype(float)
    except (TypeError, ValueError) as exc:
        raise ClickError(
            f"predictions {p}: frame must be an integer, x and y numbers ({exc})"
        ) from None
    if out.duplicated(["video_id", "frame"]).any():
        raise ClickError(f"predictions {p} give two points for one (video_id, frame)")
    return out


def evaluate_clicks(
    run: Detector | str | os.PathLike[str],
    store: FeatureStore,
    on: Selection | str,
    *,
    out_dir: str | os.PathLike[str],
    predictions: Sequence[str | os.PathLike[str]] = (),
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    coords: str = "frame",
    click_fps: float | None = None,
    seed: int = 0,
    track_faces: bool = False,
    grid_videos: int = GRID_VIDEOS,
    device: str = "cpu",
    checkpoint: str | None = None,
    options: Mapping[str, Any] | None = None,
    media_root: str | os.PathLike[str] | None = None,
    allow_missing: bool = False,
) -> ClicksResult:
    """Explain the clicked frames of the selection's fake videos and score them against the
    clicks and the baselines; write the tables and figures to ``out_dir``."""
    from featstore.trainers.kinds import probability
    from featstore.trainers.spatial import load_explaining

    sel = Selection.parse(on, default_split="test")
    explaining = load_explaining(
        run, store, sel.dataset, device=device, checkpoint=checkpoint, options=options
    )
    scored = explaining.detector.score_selection(store, sel, allow_missing=allow_missing)
    rows = scored.manifest.reset_index(drop=True)
    if "annotations" not in rows.columns and "clicks" not in rows.columns:
        raise ClickError(f"{sel.dataset} has no click annotations (import ExDDV's ExDDV.csv)")
    scores = np.asarray(probability(scored.scores), dtype=np.float64)  # [N] in [0, 1]
    fake = [
        i for i in range(len(rows)) if int(rows["label"].iloc[i]) == 1 and _has_clicks(rows.iloc[i])
    ]
    if not fake:
        raise ClickError(f"no fake video of {sel} has clicks")
    named = {Path(p).stem: read_predictions(p) for p in predictions}
    methods = [EXPLANATION, RANDOM, CENTRE, FACE, *named]
    grid_set = set(sorted(fake, key=lambda i: -scores[i])[: max(0, grid_videos)])
    records: list[dict[str, Any]] = []
    panels: list[tuple[float, Panel]] = []
    dropped = 0
    rng_seed = seed
    for i in fake:
        video_id = str(rows["video_id"].iloc[i])
        got, n_dropped, panel = _video_clicks(
            explaining,
            store,
            sel.dataset,
            video_id,
            rows.iloc[i],
            score=float(scores[i]),
            logit=float(scored.scores[i]),
            coords=coords,
            click_fps=click_fps,
            seed=rng_seed,
            track_faces=track_faces,
            media_root=media_root,
            predictions=named,
            keep_panel=i in grid_set,
        )
        rng_seed += 1
        dropped += n_dropped
        records.extend(got)
        if panel is not None:
            panels.append((float(scores[i]), panel))
    if not records:
        raise ClickError(f"no click of {sel} falls on a frame the encoder gives a row for")
    table = pd.DataFrame.from_records(records)
    per_video = video_errors(table, methods)
    mae = curve(per_video, methods, thresholds=thresholds)
    summary = {
        "run": explaining.detector.name,
        "selection": str(sel),
        "encoder": explaining.encoder.name,
        "layer": str(explaining.feature.layer),
        "method": explaining.explainer.method,
        "target": explaining.explainer.target,
        "coords": coords,
        "click_fps": click_fps or "declared by each file",
        "seed": seed,
        "n_videos": int(per_video.shape[0]),
        "n_clicks": int(table.shape[0]),
        "n_clicks_dropped": int(dropped),
        "mae": {m: _mean(per_video[m]) for m in methods},
        "n_videos_per_method": {m: int(np.isfinite(per_video[m]).sum()) for m in methods},
        "score": "P(fake) = sigmoid(2 s)" if explaining.detector.calibrated else "rank score",
    }
    files = _write(out_dir, summary, table, per_video, mae, panels)
    return ClicksResult(summary, table, per_video, mae, tuple(files))


def _has_clicks(row: pd.Series) -> bool:
    for key in ("annotations", "clicks"):
        value = row.get(key)
        if (isinstance(value, list) and value) and (
            key == "clicks" or any((a or {}).get("clicks") for a in value)
        ):
            return True
    return False


def _mean(values: pd.Series) -> float | None:
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _video_clicks(
    explaining: Any,
    store: FeatureStore,
    dataset: str,
    video_id: str,
    row: pd.Series,
    *,
    score: float,
    logit: float,
    coords: str,
    click_fps: float | None,
    seed: int,
    track_faces: bool,
    media_root: str | os.PathLike[str] | None,
    predictions: Mapping[str, pd.DataFrame],
    keep_panel: bool,
) -> tuple[list[dict[str, Any]], int, Panel | None]:
    """Every click of one video with each method's point and error."""
    from featstore.crops import load_tracks
    from featstore.media import probe
    from featstore.spatial.geometry import long_side_hw
    from featstore.trainers.spatial import explain_frames, frames_of_rows, media_path, video_tracks
    from featstore.trainers.spatial_plots import Panel

    path = media_path(store, dataset, video_id, media_root=media_root)
    info = probe(path).video
    if info is None:
        raise ClickError(f"{path} has no video stream")
    frame_hw = (int(info.height), int(info.width))
    fps = click_fps or info.fps
    if not fps:
        raise ClickError(
            f"{path} declares no frame rate: pass the clicks' frame rate (--click-fps)"
        )
    clicks = clicks_of_row(
        video_id, row.to_dict(), source_fps=fps, coords=coords, frame_hw=frame_hw
    )
    needs = explaining.explainer.needs_tracks
    tracks = load_tracks(store, dataset, video_id)
    if tracks is None and (needs or track_faces):
        tracks = video_tracks(store, dataset, video_id, path)
    if tracks is not None:
        n_frames = tracks.n_frames
    else:
        feature = explaining.feature
        n_rows = store.locate(dataset, feature.encoder, video_id, feature.layer).n_frames
        n_frames = frames_of_rows(n_rows, explaining.frame_hz)
    last = explaining.explainer.last_frame(n_frames)
    kept = [c for c in clicks if 0 <= c.frame < last]
    if not kept:
        return [], len(clicks), None
    frames = sorted({c.frame for c in kept})
    maps, images = explain_frames(explaining, path, frames, n_frames=n_frames, tracks=tracks)
    peak = {int(f): maps.peaks[j] for j, f in enumerate(maps.frames)}
    click_xy = np.array([[c.x, c.y] for c in kept])  # [K, 2]
    points = {
        EXPLANATION: np.array([peak[c.frame] for c in kept]),
        RANDOM: random_points(len(kept), seed=seed),
        CENTRE: np.full((len(kept), 2), 0.5),
        FACE: (
            face_centres(tracks.boxes[[c.frame for c in kept]], frame_hw)
            if tracks is not None
            else np.full((len(kept), 2), np.nan)
        ),
    }
    for name, table in predictions.items():
        lookup = table[table["video_id"] == video_id].set_index("frame")
        points[name] = np.array(
            [
                lookup.loc[c.source_frame, ["x", "y"]].to_numpy(dtype=np.float64)
                if c.source_frame in lookup.index
                else [np.nan, np.nan]
                for c in kept
            ]
        ).reshape(len(kept), 2)
    errors = {m: click_errors(p, click_xy) for m, p in points.items()}
    records = []
    for k, c in enumerate(kept):
        rec: dict[str, Any] = {
            "video_id": video_id,
            "annotator": c.annotator,
            "source_frame": c.source_frame,
            "frame": c.frame,
            "click_x": c.x,
            "click_y": c.y,
            "peak_x": float(points[EXPLANATION][k, 0]),
            "peak_y": float(points[EXPLANATION][k, 1]),
            "score": score,
            "logit": logit,
        }
        rec.update({m: float(e[k]) for m, e in errors.items()})
        records.append(rec)
    panel = None
    if keep_panel:
        j = frames.index(kept[0].frame)
        heat = maps.select([j]).frame_maps(long_side_hw(frame_hw, 256))[0]
        panel = Panel(
            images[j],
            heat,
            peak=tuple(maps.peaks[j]),
            click=(kept[0].x, kept[0].y),
            caption=f"{video_id[-24:]}\n{score:.2f}",
        )
    return records, len(clicks) - len(kept), panel


def _write(
    out_dir: str | os.PathLike[str],
    summary: dict[str, Any],
    table: pd.DataFrame,
    per_video: pd.DataFrame,
    mae: pd.DataFrame,
    panels: list[tuple[float, Panel]],
) -> list[Path]:
    from featstore.trainers.spatial_plots import clicks_grid_png, mae_curve_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, frame in (("clicks.csv", table), ("videos.csv", per_video), ("curve.csv", mae)):
        frame.to_csv(out / name, index=False)
        files.append(out / name)
    doc = out / "clicks.json"
    doc.write_text(json.dumps({**summary, "curve": _records(mae)}, indent=2))
    files.append(doc)
    files.append(
        mae_curve_png(
            out / "clicks_mae.png",
            mae,
            main=EXPLANATION,
            title=f"{summary['run']} on {summary['selection']}: explanation vs clicks",
        )
    )
    if panels:
        ordered = [p for _, p in sorted(panels, key=lambda sp: -sp[0])]
        files.append(
            clicks_grid_png(
                out / "clicks_grid.png", ordered, title="click (red) vs map maximum (green)"
            )
        )
    return files


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in frame.to_dict("records"):
        out.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        )
    return out
