"""The cluster runner: a selection's videos scored on Dask, a partition per task.

``featstore eval`` and ``featstore syncscore`` with ``--cluster`` cut the
selection's videos into partitions of about :data:`PARTITION_VIDEOS`
consecutive videos and score each on a worker through the run kind's own
interface (``Detector.score_selection`` on the partition's videos); the
client puts the partitions back together in selection order. Partitions
start at multiples of the kind's ``score_batch_videos``, so every video is
scored in the same batch as in a local run and the numbers are the same to
the bit. (``featstore grid`` and ``featstore layers`` send a grid cell or a
layer pair per task: ``featstore.trainers.grid``, ``featstore.trainers.layers``.)

Resume: with a ``resume_dir``, every finished partition is saved there
(``<selection slug>-<fingerprint>/NNNNN.npz``, no pickle) and a re-run of the
same scoring (same run, selection, videos) skips it; the caller removes the
folder once its results are written (:func:`clear_partitions`).

>>> scored, extras = score_on_cluster(detector, store, "av1m:test", cluster="local")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.data import Selection, split_hash
from featstore.trainers.runs import RunError, Scored

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.kinds.base import Detector

log = logging.getLogger(__name__)

PARTITION_VIDEOS = 512
PARTITIONS = ".partitions"  # in a run or output folder: finished partitions, until written

__all__ = [
    "PARTITIONS",
    "PARTITION_VIDEOS",
    "PartitionScores",
    "TaskProgress",
    "clear_partitions",
    "fingerprint",
    "partition_bounds",
    "score_on_cluster",
    "score_partition",
]

Scorer = Callable[["Detector", "FeatureStore", Selection], "Scored | tuple[Scored, dict]"]


@dataclass(frozen=True)
class TaskProgress:
    """``done`` of ``total`` tasks finished (``reused`` of them from an earlier run); ``name``
    the latest."""

    done: int
    total: int
    name: str
    elapsed_s: float
    reused: int = 0


def partition_bounds(
    n: int, multiple: int = 1, target: int = PARTITION_VIDEOS
) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)``; every start a multiple of ``multiple``."""
    if multiple < 1 or target < 1:
        raise ValueError(f"multiple and target must be >= 1, got {multiple}, {target}")
    size = math.ceil(target / multiple) * multiple
    return [(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass(frozen=True)
class PartitionScores:
    """One partition's scores: video logits, per-frame scores (flat, with lengths) and extras."""

    video_ids: tuple[str, ...]
    scores: np.ndarray  # [n] float64
    probabilities: np.ndarray  # [n] float64
    frame_hz: float | None = None
    frame_lengths: np.ndarray | None = field(default=None, repr=False)  # [n]
    frames: np.ndarray | None = field(default=None, repr=False)  # [sum T]
    extras: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)  # [n] each

    @classmethod
    def of(cls, scored: Scored, extras: Mapping[str, np.ndarray] | None = None) -> PartitionScores:
        lengths = frames = None
        if scored.frame_scores is not None:
            lengths = np.array([len(f) for f in scored.frame_scores], dtype=np.int64)
            frames = (
                np.concatenate(scored.frame_scores)
                if scored.frame_scores
                else np.zeros(0, dtype=np.float32)
            )
        return cls(
            tuple(scored.video_ids),
            np.asarray(scored.scores, dtype=np.float64),
            np.asarray(scored.probabilities, dtype=np.float64),
            scored.frame_hz,
            lengths,
            frames,
            {k: np.asarray(v) for k, v in (extras or {}).items()},
        )

    def frame_list(self) -> list[np.ndarray] | None:
        if self.frames is None or self.frame_lengths is None:
            return None
        return np.split(self.frames, np.cumsum(self.frame_lengths)[:-1])

    def save(self, path: Path) -> None:
        """An ``.npz`` of plain arrays, written atomically."""
        arrays: dict[str, np.ndarray] = {
            "video_ids": np.array(self.video_ids, dtype=str),
            "scores": self.scores,
            "probabilities": self.probabilities,
            "frame_hz": np.float64(np.nan if self.frame_hz is None else self.frame_hz),
        }
        if self.frames is not None and self.frame_lengths is not None:
            arrays["frame_lengths"], arrays["frames"] = self.frame_lengths, self.frames
        arrays.update({f"extra_{k}": v for k, v in self.extras.items()})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path) -> PartitionScores:
        with np.load(path, allow_pickle=False) as data:
            hz = float(data["frame_hz"])
            return cls(
                tuple(str(v) for v in data["video_ids"]),
                data["scores"],
                data["probabilities"],
                None if np.isnan(hz) else hz,
                data.get("frame_lengths"),
                data.get("frames"),
                {k[len("extra_") :]: data[k] for k in data.files if k.startswith("extra_")},
            )


def score_partition(
    detector: Detector, store: FeatureStore, selection: Selection, scorer: Scorer | None = None
) -> PartitionScores:
    """The task: ``selection``'s videos scored by the kind's own ``score_selection`` (or
    ``scorer``, returning ``Scored`` or ``(Scored, {name: [n] array})``)."""
    out = (scorer or _score_selection)(detector, store, selection)
    scored, extras = out if isinstance(out, tuple) else (out, {})
    return PartitionScores.of(scored, extras)


def _score_selection(detector: Detector, store: FeatureStore, selection: Selection) -> Scored:
    return detector.score_selection(store, selection)


def fingerprint(doc: Any) -> str:
    """A short digest of a JSON-able description of a computation."""
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe(detector: Detector) -> Any:
    """What identifies a detector's scores: its run's config (written last, with its time)."""
    if detector.run is not None:
        return dict(detector.run.config)
    return {"kind": detector.kind, "config": detector.config.to_dict()}


def clear_partitions(resume_dir: Path | None, selection: Selection) -> None:
    """Remove the saved partitions of ``selection`` (and ``resume_dir`` when left empty)."""
    if resume_dir is None or not resume_dir.is_dir():
        return
    for stale in resume_dir.glob(f"{selection.slug}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if not any(resume_dir.iterdir()):
        resume_dir.rmdir()


def score_on_cluster(
    detector: Detector,
    store: FeatureStore,
    on: Selection | str,
    *,
    cluster: Any,
    n_workers: int = 2,
    allow_missing: bool = False,
    scorer: Scorer | None = None,
    resume_dir: Path | None = None,
    partition_videos: int | None = None,
    on_progress: Callable[[TaskProgress], None] | None = None,
) -> tuple[Scored, dict[str, np.ndarray]]:
    """``detector.score_selection(store, on)``, a partition of videos per Dask task.

    Returns the selection's ``Scored`` (as the detector would give it) and
    the scorer's extras concatenated in selection order.
    """
    from featstore.cluster import check_cluster, connect, run_tasks

    check_cluster(cluster)
    sel, rows = detector.select(store, on, allow_missing=allow_missing)
    ids = rows["video_id"].astype(str).tolist()
    target = PARTITION_VIDEOS if partition_videos is None else partition_videos
    bounds = partition_bounds(len(ids), detector.score_batch_videos, target)
    parts: dict[int, PartitionScores] = {}
    folder = None
    if resume_dir is not None:
        digest = fingerprint(
            {"detector": _describe(detector), "selection": str(sel), "videos": split_hash(ids),
             "bounds": bounds, "scorer": getattr(scorer, "__qualname__", None)}
        )  # fmt: skip
        folder = resume_dir / f"{sel.slug}-{digest}"
        for stale in resume_dir.glob(f"{sel.slug}-*"):
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(bounds)):
            path = folder / f"{i:05d}.npz"
            if path.is_file():
                parts[i] = PartitionScores.load(path)
    reused = len(parts)
    if reused:
        log.info("%s: %d of %d partitions reused from %s", sel, reused, len(bounds), folder)
    tasks = {
        str(i): (
            score_partition,
            [detector, store, Selection(sel.dataset, sel.split, tuple(ids[a:b]), sel.view), scorer],
        )
        for i, (a, b) in enumerate(bounds)
        if i not in parts
    }
    start = time.perf_counter()
    if tasks:
        with connect(cluster, n_workers=n_workers) as client:
            for name, part in run_tasks(client, tasks, prefix="featstore-score"):
                i = int(name)
                a, b = bounds[i]
                if part.video_ids != tuple(ids[a:b]):
                    raise RunError(f"partition {i} of {sel} came back with other videos")
                if folder is not None:
                    part.save(folder / f"{i:05d}.npz")
                parts[i] = part
                if on_progress is not None:
                    on_progress(
                        TaskProgress(
                            len(parts), len(bounds), f"videos {a}-{b}", time.perf_counter() - start,
                            reused,
                        )
                    )  # fmt: skip
    ordered = [parts[i] for i in range(len(bounds))]
    scores = np.concatenate([p.scores for p in ordered]) if ordered else np.zeros(0)
    probabilities = np.concatenate([p.probabilities for p in ordered]) if ordered else np.zeros(0)
    frames: list[np.ndarray] | None = []
    for p in ordered:
        chunk = p.frame_list()
        if chunk is None:
            frames = None
            break
        frames.extend(chunk)  # type: ignore[union-attr]
    names = set().union(*(p.extras for p in ordered)) if ordered else set()
    extras = {k: np.concatenate([p.extras[k] for p in ordered]) for k in sorted(names)}
    scored = Scored(
        selection=str(sel),
        manifest=rows,
        scores=scores,
        probabilities=probabilities,
        frame_scores=frames,
        frame_hz=ordered[0].frame_hz if ordered and frames is not None else None,
    )
    return scored, extras
