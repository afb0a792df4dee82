"""Derived datasets of single-speaker segments (``featstore datasets segment``).

A segment dataset is a dataset of its own, not a view of its source: its rows are spans
of the source's videos (one source video gives zero, one or many), so no per-row column
of the source manifest could describe them. Each row is a segment:

==================  ============================================================
``video_id``        ``<source video_id>@<start_frame>-<end_frame>`` (25 fps frames)
``path``            the source video's path (same root as the source dataset)
``source_id``       the source video's id
``start_s/end_s``   the span in the source video, seconds (frame boundaries)
``start_frame``     ``end_frame``: the same at 25 fps
``duration_s``      ``end_s - start_s``
``label`` ...       label, split, modify_type, audio/visual flags and every other
                    column of the source row, inherited
``fake_segments``   the source's fake segments clipped to the span, in segment time
``track``           index of the speaking face's track in the source video
``face_px``         median side of the face box over the segment (pixels)
``asd_score``       mean per-frame speaking score over the segment
==================  ============================================================

The speaking face's track is stored per segment as the ``tracks-dlib68`` pseudo-encoder
(landmarks ``[T, 136]``, boxes ``[T, 5]``, rows relative to the segment's start), the
landmark cache that ``featstore extract`` reads for mouth and face crops: extracting a
segment needs only to decode its span (``start_s``, ``end_s``) and use those tracks.

Splits: the ``split`` column is the source row's own (official) split; the source's
views (``split.V`` columns) are not inherited, since they were drawn over source videos.
Protocols are views of the segment dataset itself (``featstore datasets protocol SEGS
--protocol dfe2024``: the published train split's segments -> train/val, whole source
videos at a time by ``source_id``; test -> test). A rerun that adds segments recomputes
the dataset's protocol views with their seed and drops views made from split files (they
named other rows); one that adds none keeps every view as it was.

Resume: the manifest attr ``segment_sources`` records each source video processed
(segments found, seconds dropped per reason); a rerun skips them. Results are saved
every ``save_every_s`` seconds and on interrupt (tracks committed first, then the
manifest). Failed videos are listed and tried again on the next run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.datasets.manifest import CORE_COLUMNS
from featstore.datasets.views import DEFAULT_VIEW_ATTR, VIEW_PREFIX, VIEWS_ATTR, views_of
from featstore.errors import ManifestError, ReadOnlyStoreError
from featstore.segments import DropReason
from featstore.timebase import frames_to_seconds

if TYPE_CHECKING:
    import pandas as pd

    from featstore.asd.analysis import AnalysisConfig, VideoAnalysis
    from featstore.asd.detectors import ActiveSpeakerDetector
    from featstore.landmarks import FaceTracks
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "SOURCES_ATTR",
    "SegmentSummary",
    "SourceResult",
    "build_segment_dataset",
    "clip_segments",
    "segment_id",
]

FORMAT = "segments"
SOURCES_ATTR = "segment_sources"
SETTINGS_ATTR = "segment_settings"
SEGMENT_COLUMNS = (
    "source_id",
    "start_s",
    "end_s",
    "start_frame",
    "end_frame",
    "track",
    "face_px",
    "asd_score",
)


def segment_id(source_id: str, start_frame: int, end_frame: int) -> str:
    return f"{source_id}@{start_frame}-{end_frame}"


def clip_segments(segments: Any, start_s: float, end_s: float) -> list[list[float]]:
    """Fake segments ``[[a, b], ...]`` of a video clipped to ``[start_s, end_s)``, shifted to 0."""
    out = []
    for a, b in segments or []:
        lo, hi = max(float(a), start_s), min(float(b), end_s)
        if hi > lo:
            out.append([round(lo - start_s, 6), round(hi - start_s, 6)])
    return out


@dataclass(frozen=True, eq=False)
class SourceResult:
    """What one source video gave: segment rows and tracks, or the error that stopped it."""

    video_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[tuple[str, FaceTracks]] = field(default_factory=list)
    duration_s: float = 0.0
    dropped_s: dict[str, float] = field(default_factory=dict)
    dropped_spans: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def log_entry(self) -> dict[str, Any]:
        return {
            "segments": len(self.rows),
            "duration_s": round(self.duration_s, 3),
            "kept_s": round(sum(r["duration_s"] for r in self.rows), 3),
            "dropped_s": {k: round(v, 3) for k, v in self.dropped_s.items()},
            "dropped_spans": self.dropped_spans,
        }


@dataclass(frozen=True)
class SegmentSummary:
    videos_in: int
    processed: int
    skipped: int  # done by an earlier run
    failed: int
    segments_out: int  # in the whole dataset after this run
    hours_in: float
    hours_kept: float
    dropped_s: dict[str, float]  # reason -> seconds, over every processed source
    dropped_spans: dict[str, int]
    failures: dict[str, str]


def _rows_for(source: Mapping[str, Any], analysis: VideoAnalysis, asd: str) -> SourceResult:
    vid = str(source["video_id"])
    rows, tracks = [], []
    for seg in analysis.result.segments:
        sid = segment_id(vid, seg.start_frame, seg.end_frame)
        row = dict(source)
        row.update(
            video_id=sid,
            source_id=vid,
            start_s=seg.start_s,
            end_s=seg.end_s,
            start_frame=seg.start_frame,
            end_frame=seg.end_frame,
            duration_s=seg.duration_s,
            fake_segments=clip_segments(source.get("fake_segments"), seg.start_s, seg.end_s),
            track=seg.track,
            face_px=analysis.segment_face_px(seg),
            asd_score=analysis.segment_asd_score(seg),
            asd=asd,
        )
        rows.append(row)
        tracks.append((sid, analysis.segment_tracks(seg)))
    spans = analysis.result.dropped
    return SourceResult(
        vid,
        rows,
        tracks,
        duration_s=float(frames_to_seconds(analysis.n_frames)),
        dropped_s=analysis.result.dropped_s(),
        dropped_spans={k: len(v) for k, v in spans.items()},
    )


def _process(
    source: Mapping[str, Any], root: Path, detector: ActiveSpeakerDetector, config: AnalysisConfig
) -> SourceResult:
    from featstore import media
    from featstore.asd.analysis import analyse_video

    vid = str(source["video_id"])
    try:
        analysis = analyse_video(root / str(source["path"]), detector, config)
    except (media.MediaError, OSError) as exc:
        return SourceResult(vid, error=str(exc))
    except Exception as exc:  # one odd video must not stop a long run
        log.exception("%s: segmentation failed", vid)
        return SourceResult(vid, error=f"unexpected {type(exc).__name__}: {exc}")
    return _rows_for(source, analysis, detector.name)


def _settings(detector: ActiveSpeakerDetector, config: AnalysisConfig) -> dict[str, Any]:
    return {
        "detector": detector.describe(),
        "rules": dataclasses.asdict(config.rules),
        "shots": dataclasses.asdict(config.shots),
        "faces": dataclasses.asdict(config.faces),
    }


def _same_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    strip = {"checkpoint"}  # the same file may move
    a = {**old, "detector": {k: v for k, v in old.get("detector", {}).items() if k not in strip}}
    b = {**new, "detector": {k: v for k, v in new.get("detector", {}).items() if k not in strip}}
    return a == b


def build_segment_dataset(
    store: FeatureStore,
    source: str,
    name: str,
    detector: ActiveSpeakerDetector,
    *,
    config: AnalysisConfig | None = None,
    workers: int = 1,
    root: str | Path | None = None,
    progress: Callable[[int, int, SourceResult], None] | None = None,
    save_every_s: float = 300.0,
) -> SegmentSummary:
    """Segment every video of dataset ``source`` into the dataset ``name`` (see module docs)."""
    from featstore.asd.analysis import AnalysisConfig

    if store.read_only:
        raise ReadOnlyStoreError(f"store {store.url} is open read-only; open it with mode='a'")
    if name == source:
        raise ManifestError("the segment dataset needs a name of its own (--as NAME)")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cfg = config or AnalysisConfig()
    manifest = store.manifest(source)
    for col in ("video_id", "path"):
        if col not in manifest.columns:
            raise ManifestError(f"manifest of {source} has no {col!r} column")
    root = Path(root if root is not None else manifest.attrs.get("root", "."))
    settings = _settings(detector, cfg)
    done, existing, previous = _previous(store, name, source, settings)
    own_views = _OwnViews.of(previous, existing)
    todo = [r for r in manifest.to_dict("records") if str(r["video_id"]) not in done]
    attrs = {
        "format": FORMAT,
        "source": source,
        "root": str(root),
        "protocol": manifest.attrs.get("protocol"),
        SETTINGS_ATTR: settings,
    }
    if _split_is_official(manifest.attrs):  # views of its own, over the official split column
        attrs.update({VIEWS_ATTR: {}, DEFAULT_VIEW_ATTR: None})
    results: dict[str, SourceResult] = {}
    unsaved: list[SourceResult] = []
    last_save = time.monotonic()

    def save() -> None:
        nonlocal existing, unsaved, last_save
        good = [r for r in unsaved if r.ok]
        if good:
            from featstore.crops import save_tracks_many

            save_tracks_many(store, name, (t for r in good for t in r.tracks))
        for r in good:
            done[r.video_id] = r.log_entry()
        existing = _merge(existing, [row for r in good for row in r.rows])
        table = _table(existing, manifest)
        table.attrs = {**attrs, SOURCES_ATTR: done}
        table = own_views.apply(table, name)
        store.write_manifest(name, table, attrs=table.attrs)
        unsaved, last_save = [], time.monotonic()

    try:
        with contextlib.closing(_run(todo, root, detector, cfg, workers)) as stream:
            for i, result in enumerate(stream, start=1):
                results[result.video_id] = result
                unsaved.append(result)
                if progress is not None:
                    progress(i, len(todo), result)
                if time.monotonic() - last_save >= save_every_s:
                    save()
    finally:
        save()
    return _summary(manifest, done, results, existing, skipped=len(manifest) - len(todo))


def _previous(
    store: FeatureStore, name: str, source: str, settings: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], pd.DataFrame | None]:
    """Sources already done, the segment rows already stored and their table (None and
    empty for a new dataset)."""
    if name not in store.datasets():
        return {}, [], None
    try:
        table = store.manifest(name)
    except ManifestError:
        return {}, [], None
    attrs = table.attrs
    if attrs.get("format") != FORMAT or attrs.get("source") != source:
        raise ManifestError(
            f"dataset {name} exists and is not a segment dataset of {source}; choose another --as"
        )
    if not _same_settings(attrs.get(SETTINGS_ATTR, {}), settings):
        raise ManifestError(
            f"segment dataset {name} was made with other settings ({attrs.get(SETTINGS_ATTR)}); "
            "choose another --as to keep both"
        )
    return dict(attrs.get(SOURCES_ATTR, {})), table.to_dict("records"), table


def _split_is_official(attrs: Mapping[str, Any]) -> bool:
    """Whether the source's ``split`` column is its official split (not a protocol's split
    assigned at import by a store written before views existed)."""
    from featstore.datasets.views import has_views

    return has_views(attrs) or attrs.get("protocol") in (None, "official")


@dataclass(frozen=True)
class _OwnViews:
    """The views a segment dataset had before this run, to carry into the table it writes."""

    views: dict[str, dict[str, Any]]
    default: str | None
    splits: dict[str, dict[str, str]]  # view -> video_id -> split

    @classmethod
    def of(cls, table: pd.DataFrame | None, rows: list[dict[str, Any]]) -> _OwnViews:
        if table is None:
            return cls({}, None, {})
        views = views_of(table.attrs)
        splits = {
            v: {str(r["video_id"]): str(r.get(VIEW_PREFIX + v) or "") for r in rows} for v in views
        }
        return cls(views, table.attrs.get(DEFAULT_VIEW_ATTR), splits)

    def apply(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        """``table`` with these views: carried as they were when the rows are the same,
        protocols recomputed (same seed) when segments were added, split-file views dropped."""
        from featstore.datasets.protocols import DEFAULT_SEED, PROTOCOLS, protocol_splits
        from featstore.datasets.views import ViewError, add_view

        if not self.views:
            return table
        ids = table["video_id"].astype(str)
        same = all(set(ids) == set(s) for s in self.splits.values())
        attrs = dict(table.attrs)
        kept: dict[str, dict[str, Any]] = {}
        for view, info in self.views.items():
            if same:
                table[VIEW_PREFIX + view] = ids.map(self.splits[view]).to_numpy(dtype=object)
                kept[view] = info
                continue
            protocol = info.get("protocol")
            if protocol not in PROTOCOLS:
                log.warning(
                    "segment dataset %s: view %r (from %s) dropped, its rows changed; add it again",
                    name,
                    view,
                    protocol,
                )
                continue
            splits = protocol_splits(protocol, table, seed=int(info.get("seed", DEFAULT_SEED)))
            made = {k: v for k, v in info.items() if k not in ("created_at", "splits")}
            try:
                table = add_view(table, view, splits, made)
            except ViewError as exc:
                log.warning("segment dataset %s: view %r dropped: %s", name, view, exc)
                continue
            kept[view] = views_of(table.attrs)[view]
            log.info("segment dataset %s: view %r recomputed over the new segments", name, view)
        attrs[VIEWS_ATTR] = kept
        attrs[DEFAULT_VIEW_ATTR] = self.default if self.default in kept else None
        table.attrs = attrs
        return table


def _merge(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {str(r["video_id"]): r for r in existing}
    by_id.update({str(r["video_id"]): r for r in new})
    return list(by_id.values())


def _table(rows: list[dict[str, Any]], source: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    from featstore.datasets.manifest import coerce_schema

    # the source's view columns are not inherited (module docs)
    extra = [c for c in source.columns if c not in CORE_COLUMNS and not c.startswith(VIEW_PREFIX)]
    columns = [
        *CORE_COLUMNS,
        *SEGMENT_COLUMNS,
        "asd",
        *(c for c in extra if c not in SEGMENT_COLUMNS),
    ]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(["source_id", "start_frame"], kind="stable").reset_index(drop=True)
    return coerce_schema(table)


def _run(
    todo: list[dict[str, Any]],
    root: Path,
    detector: ActiveSpeakerDetector,
    config: AnalysisConfig,
    workers: int,
) -> Iterator[SourceResult]:
    """Results in completion order; at most ``2 * workers`` videos in flight."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="segment")
    queue = iter(todo)
    running: set[concurrent.futures.Future[SourceResult]] = set()
    try:
        while True:
            for row in itertools.islice(queue, 2 * workers - len(running)):
                running.add(pool.submit(_process, row, root, detector, config))
            if not running:
                return
            finished, running = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _summary(
    manifest: pd.DataFrame,
    done: Mapping[str, Any],
    results: Mapping[str, SourceResult],
    rows: list[dict[str, Any]],
    *,
    skipped: int,
) -> SegmentSummary:
    dropped_s = dict.fromkeys((r.value for r in DropReason), 0.0)
    spans = dict.fromkeys((r.value for r in DropReason), 0)
    for entry in done.values():
        for k, v in entry.get("dropped_s", {}).items():
            dropped_s[k] = dropped_s.get(k, 0.0) + v
        for k, v in entry.get("dropped_spans", {}).items():
            spans[k] = spans.get(k, 0) + v
    failures = {v: str(r.error) for v, r in results.items() if not r.ok}
    return SegmentSummary(
        videos_in=len(manifest),
        processed=len(results) - len(failures),
        skipped=skipped,
        failed=len(failures),
        segments_out=len(rows),
        hours_in=sum(e.get("duration_s", 0.0) for e in done.values()) / 3600,
        hours_kept=sum(float(r["duration_s"]) for r in rows) / 3600,
        dropped_s=dropped_s,
        dropped_spans=spans,
        failures=failures,
    )
