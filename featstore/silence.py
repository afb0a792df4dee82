"""Measure each video's leading silence and store it in the dataset's manifest.

AVH-Align (PEERS.md) optionally drops each video's leading silence before
training and scoring: the silence is the time until the first audio sample
with ``|x| > 0.0005``, on the 16 kHz mono audio as ``featstore.media`` decodes
it (aligned to the first video frame, like the features). ``featstore.trainers.pairs``
reads it from the manifest column ``leading_silence_s`` (``--trim-silence``);
this module fills that column.

Only audio is decoded (``media.iter_audio``; the first video frame is decoded
once to align the timeline), and decoding stops at the first loud sample. A
video without audio, or one that cannot be decoded, gets NaN and its reason is
logged and counted; it never stops the run. Audio that never exceeds the
threshold is silent throughout: its silence is its whole length.

>>> summary = measure_store_silence(store, "av1m", workers=8)  # doctest: +SKIP
>>> summary.measured, summary.failed, summary.mean_s  # doctest: +SKIP
(1000, 2, 0.183)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featstore import media, timebase
from featstore.errors import ManifestError, ReadOnlyStoreError

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore

logger = logging.getLogger(__name__)

SILENCE_COLUMN = "leading_silence_s"  # the column featstore.trainers.pairs reads
THRESHOLD_ATTR = "leading_silence_threshold"  # manifest attr: the threshold the column used
_CHUNK_SAMPLES = timebase.SAMPLE_RATE_HZ  # decode 1 s at a time, stop at the first loud sample

__all__ = [
    "SILENCE_COLUMN",
    "SilenceResult",
    "SilenceSummary",
    "measure_leading_silence",
    "measure_manifest",
    "measure_store_silence",
    "measure_videos",
]

ProgressCallback = Callable[[int, int, "SilenceResult"], None]


@dataclass(frozen=True)
class SilenceResult:
    """One video's leading silence in seconds; NaN and ``error`` set when it failed."""

    video_id: str
    silence_s: float
    silent_throughout: bool = False  # no sample above the threshold at all
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SilenceSummary:
    """What a run measured, skipped (already had a value) and failed (NaN, with reasons)."""

    measured: int
    skipped: int
    failed: int
    silent_throughout: int  # measured videos with no sample above the threshold
    mean_s: float  # over every valid value in the column after the run; NaN when none
    max_s: float
    failures: dict[str, str] = field(default_factory=dict)  # video_id -> reason


def measure_leading_silence(
    path: str | os.PathLike[str],
    *,
    threshold: float = media.SILENCE_THRESHOLD,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    limits: media.DecodeLimits = media.DEFAULT_LIMITS,
) -> tuple[float, bool]:
    """``(seconds until the first |sample| > threshold, silent throughout?)`` of a file's audio.

    Equals ``media.leading_silence_s(media.decode(path).audio)`` but decodes only
    up to the first loud sample. Raises the ``media.MediaError`` family
    (``NoAudioStreamError`` for a file without audio; a ``MediaLimitError`` for
    media past ``limits``, as extraction would).
    """
    _check_threshold(threshold)
    n = 0
    for chunk in media.iter_audio(
        path, sample_rate_hz=sample_rate_hz, chunk_samples=_CHUNK_SAMPLES, limits=limits
    ):  # chunk: [n] float32
        loud = np.flatnonzero(np.abs(chunk) > threshold)
        if loud.size:
            return (n + int(loud[0])) / sample_rate_hz, False
        n += int(chunk.shape[0])
    return n / sample_rate_hz, True


def _measure_one(video_id: str, path: str, threshold: float) -> SilenceResult:
    try:
        silence, silent = measure_leading_silence(path, threshold=threshold)
    except (media.MediaError, OSError) as exc:
        reason = str(exc)
    except Exception as exc:  # one odd file must not stop a million-video run
        logger.exception("%s: unexpected error measuring leading silence", path)
        reason = f"{path}: unexpected {type(exc).__name__}: {exc}"
    else:
        if silent:
            logger.warning("%s: no audio sample above %g; silent throughout", path, threshold)
        return SilenceResult(video_id, silence, silent_throughout=silent)
    logger.warning("%s: leading silence not measured: %s", video_id, reason)
    return SilenceResult(video_id, math.nan, error=reason)


def measure_videos(
    videos: Sequence[tuple[str, str | os.PathLike[str]]],
    *,
    workers: int = 4,
    threshold: float = media.SILENCE_THRESHOLD,
    progress: ProgressCallback | None = None,
) -> dict[str, SilenceResult]:
    """Measure ``(video_id, path)`` pairs on a thread pool; results keyed by video id.

    ``progress(done, total, result)`` is called in the calling thread after each
    video. On an interrupt (Ctrl-C) the videos not yet started are cancelled and
    the exception propagates; ``measure_store_silence`` saves what was done first.
    """
    results: dict[str, SilenceResult] = {}
    with contextlib.closing(_iter_measure(videos, workers, threshold)) as stream:
        for done, result in enumerate(stream, start=1):
            results[result.video_id] = result
            if progress is not None:
                progress(done, len(videos), result)
    return results


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")


def _iter_measure(
    videos: Sequence[tuple[str, str | os.PathLike[str]]], workers: int, threshold: float
) -> Iterator[SilenceResult]:
    """Results in completion order; checks its arguments before the first video starts."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _check_threshold(threshold)
    return _run_pool(videos, workers, threshold)


def _run_pool(
    videos: Sequence[tuple[str, str | os.PathLike[str]]], workers: int, threshold: float
) -> Iterator[SilenceResult]:
    """At most ``4 * workers`` videos are queued at a time, so memory does not grow with N."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="silence")
    queue = iter(videos)
    running: set[concurrent.futures.Future[SilenceResult]] = set()
    try:
        while True:
            for vid, path in itertools.islice(queue, 4 * workers - len(running)):
                running.add(pool.submit(_measure_one, vid, str(path), threshold))
            if not running:
                return
            done, running = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _as_seconds(values: pd.Series) -> np.ndarray:
    """The stored silence column as float64 seconds ``[N]`` (NaN where missing)."""
    import pandas as pd

    try:
        return pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ManifestError(
            f"manifest column {SILENCE_COLUMN!r} holds non-numeric values ({exc}); "
            "rewrite it with overwrite=True (--overwrite)"
        ) from exc


def _has_value(values: pd.Series) -> np.ndarray:
    v = _as_seconds(values)  # [N]
    return np.isfinite(v) & (v >= 0)


def _pending(manifest: pd.DataFrame, root: Path, overwrite: bool) -> list[tuple[str, str]]:
    for col in ("video_id", "path"):
        if col not in manifest.columns:
            raise ManifestError(f"manifest has no {col!r} column; cannot locate the videos")
    todo = np.ones(len(manifest), dtype=bool)
    if not overwrite and SILENCE_COLUMN in manifest.columns:
        todo = ~_has_value(manifest[SILENCE_COLUMN])
    ids = manifest["video_id"].astype(str).to_numpy()[todo]
    paths = manifest["path"].astype(str).to_numpy()[todo]
    return [(v, str(root / p)) for v, p in zip(ids, paths, strict=True)]


def _with_column(manifest: pd.DataFrame, values: Mapping[str, float]) -> pd.DataFrame:
    """A copy of ``manifest`` with ``values`` (by video id) in the silence column."""
    import pandas as pd

    out = manifest.copy()
    old = (
        _as_seconds(out[SILENCE_COLUMN])
        if SILENCE_COLUMN in out.columns
        else np.full(len(out), np.nan)
    )
    new = out["video_id"].astype(str).map(values).to_numpy(dtype=np.float64, na_value=np.nan)
    has_new = out["video_id"].astype(str).isin(values.keys()).to_numpy()
    out[SILENCE_COLUMN] = pd.Series(np.where(has_new, new, old), index=out.index, dtype="float64")
    return out


def measure_manifest(
    manifest: pd.DataFrame,
    root: str | os.PathLike[str],
    *,
    workers: int = 4,
    overwrite: bool = False,
    threshold: float = media.SILENCE_THRESHOLD,
    progress: ProgressCallback | None = None,
) -> tuple[pd.DataFrame, SilenceSummary]:
    """A copy of ``manifest`` with ``leading_silence_s`` filled, and a summary.

    Paths are ``root / manifest.path``. Without ``overwrite`` rows that already
    hold a valid value are skipped; failed rows get NaN (and are tried again on
    the next run).
    """
    _check_resume(manifest, dict(manifest.attrs), threshold, overwrite)
    todo = _pending(manifest, Path(root), overwrite)
    results = measure_videos(todo, workers=workers, threshold=threshold, progress=progress)
    out = _with_column(manifest, {v: r.silence_s for v, r in results.items()})
    out.attrs = {**manifest.attrs, THRESHOLD_ATTR: float(threshold)}
    summary = _summary(results.values(), skipped=len(manifest) - len(todo), manifest=out)
    return out, summary


def _check_resume(
    manifest: pd.DataFrame, attrs: Mapping[str, object], threshold: float, overwrite: bool
) -> None:
    """Refuse to mix values measured with different thresholds in one column."""
    previous = attrs.get(THRESHOLD_ATTR)
    if overwrite or previous is None or SILENCE_COLUMN not in manifest.columns:
        return
    if not math.isclose(float(previous), threshold, rel_tol=1e-12, abs_tol=0.0):
        raise ManifestError(
            f"{SILENCE_COLUMN!r} was measured with threshold {previous}, not {threshold}; "
            "measure again with overwrite=True (--overwrite) to replace every value"
        )


def _summary(
    results: Iterable[SilenceResult], *, skipped: int, manifest: pd.DataFrame
) -> SilenceSummary:
    results = list(results)
    ok = [r for r in results if r.ok]
    failures = {r.video_id: str(r.error) for r in results if not r.ok}
    values = _as_seconds(manifest[SILENCE_COLUMN])
    values = values[np.isfinite(values)]  # [videos with a value]
    return SilenceSummary(
        measured=len(ok),
        skipped=skipped,
        failed=len(failures),
        silent_throughout=sum(r.silent_throughout for r in ok),
        mean_s=float(values.mean()) if values.size else math.nan,
        max_s=float(values.max()) if values.size else math.nan,
        failures=failures,
    )


def measure_store_silence(
    store: FeatureStore,
    dataset: str,
    *,
    workers: int = 4,
    overwrite: bool = False,
    threshold: float = media.SILENCE_THRESHOLD,
    root: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    save_every_s: float = 300.0,
) -> SilenceSummary:
    """Measure a stored dataset's videos and write ``leading_silence_s`` into its manifest.

    Every other column and the manifest attrs are kept (the attr
    ``leading_silence_threshold`` records the threshold). Files are found under
    ``root`` (default: the ``root`` the import recorded). Results are saved
    every ``save_every_s`` seconds and when interrupted, so a re-run without
    ``overwrite`` resumes. Each save merges by video id into the manifest as
    stored then, so columns written meanwhile are kept.
    """
    if store.read_only:
        raise ReadOnlyStoreError(f"store {store.url} is open read-only; open it with mode='a'")
    manifest = store.manifest(dataset)
    _check_resume(manifest, dict(manifest.attrs), threshold, overwrite)
    if root is None:
        root = str(manifest.attrs.get("root", "."))
    todo = _pending(manifest, Path(root), overwrite)
    stream = _iter_measure(todo, workers, threshold)
    results: dict[str, SilenceResult] = {}
    unsaved = 0
    last_save = time.monotonic()

    def save() -> None:
        nonlocal unsaved, last_save
        if unsaved:
            _save(store, dataset, {v: r.silence_s for v, r in results.items()}, threshold)
        unsaved, last_save = 0, time.monotonic()

    try:
        with contextlib.closing(stream):
            for done, result in enumerate(stream, start=1):
                results[result.video_id] = result
                unsaved += 1
                if progress is not None:
                    progress(done, len(todo), result)
                if time.monotonic() - last_save >= save_every_s:
                    save()
    except BaseException:
        save()  # keep what was measured, then let the interrupt or error through
        raise
    save()
    after = _with_column(manifest, {v: r.silence_s for v, r in results.items()})
    return _summary(results.values(), skipped=len(manifest) - len(todo), manifest=after)


def _save(store: FeatureStore, dataset: str, values: Mapping[str, float], threshold: float) -> None:
    current = store.manifest(dataset)
    attrs = {**current.attrs, THRESHOLD_ATTR: float(threshold)}
    store.write_manifest(dataset, _with_column(current, values), attrs=attrs)
