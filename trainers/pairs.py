"""Paired audio and visual features of the same videos, on one timebase.

Synchronisation detectors (training-free Eq. 3, AVH-Align) compare an audio
feature ``a_t`` with a visual feature ``v_t`` of the same video. This module
selects the videos that have both features (each side a stored feature or a
feature set, ``featstore.trainers.inputs``), checks that all of them run at
the same ``frame_hz`` (or resamples to a common one on request) and trims both
streams to the shorter with ``featstore.timebase.reconcile``, keeping both
original lengths.

Leading-silence trimming (AVH-Align; PEERS.md) is opt-in: it needs each
video's leading silence in seconds, which the store knows only when the
manifest has a ``leading_silence_s`` column (``featstore.media.leading_silence_s``
measures it on the decoded audio). Without the column ``trim_silence=True``
raises a ``PairingError`` rather than guessing.

>>> pairs = load_pairs(store, "av1m:test", "avhubert-a:last", "avhubert-v:last")  # doctest: +SKIP
>>> pairs[0].audio.shape, pairs[0].visual.shape  # doctest: +SKIP
((212, 1024), (212, 1024))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featstore import timebase
from featstore.timebase import Reconciled, reconcile, silence_trim_counts
from featstore.trainers.data import FeatureKey, Selection, SelectionError
from featstore.trainers.inputs import (
    AUDIO,
    SET_SEPARATOR,
    VISUAL,
    FeatureInput,
    parse_feature_set,
    read_video,
    select_videos,
)
from featstore.trainers.runs import parse_segments

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore

SILENCE_COLUMN = "leading_silence_s"

__all__ = [
    "SILENCE_COLUMN",
    "PairedVideo",
    "PairingError",
    "iter_pairs",
    "load_pairs",
    "pair_inputs",
    "pair_rows",
    "read_pairs",
    "select_pairs",
    "silences",
    "stack_rows",
]


class PairingError(SelectionError):
    """Audio and visual features cannot be paired (rates, silence lengths, empty videos)."""


@dataclass(frozen=True)
class PairedVideo:
    """One video's audio and visual features, reconciled to ``T`` rows at ``frame_hz``.

    ``n_audio`` / ``n_visual`` are the stream lengths before reconciling (after
    any resampling and silence trimming); ``fake_segments`` are in seconds from
    the start of the video as stored (``silence_skip_rows`` rows were dropped
    from the start of both streams, so row ``t`` starts at
    ``(t + silence_skip_rows) / frame_hz``).
    """

    video_id: str
    label: int  # 1 = fake
    audio: np.ndarray = field(repr=False)  # [T, Da] float32
    visual: np.ndarray = field(repr=False)  # [T, Dv] float32
    fake_segments: tuple[tuple[float, float], ...]
    frame_hz: float
    n_audio: int
    n_visual: int
    silence_skip_rows: int = 0

    @property
    def n_rows(self) -> int:
        return int(self.audio.shape[0])


def pair_inputs(
    store: FeatureStore,
    dataset: str,
    audio: FeatureKey | str | Sequence[FeatureKey | str],
    visual: FeatureKey | str | Sequence[FeatureKey | str],
    *,
    frame_hz: float | None = None,
) -> tuple[FeatureInput, FeatureInput]:
    """The ``audio`` and ``visual`` inputs (each a feature or a feature set) at one rate.

    Both are read at the features' shared rate, or at ``frame_hz`` when given
    (needed when the rates differ: the slower rows are repeated,
    ``featstore.timebase.resample_rows``).
    """
    a_keys, v_keys = parse_feature_set(audio), parse_feature_set(visual)
    rates = [float(store.encoder_info(dataset, k.encoder).frame_hz) for k in (*a_keys, *v_keys)]
    try:
        rate = timebase.common_rate(rates, frame_hz=frame_hz)
    except timebase.RateError as exc:
        audio_label = SET_SEPARATOR.join(map(str, a_keys))
        visual_label = SET_SEPARATOR.join(map(str, v_keys))
        raise PairingError(f"{audio_label} and {visual_label}: {exc}") from None
    return (
        FeatureInput.of_store(store, dataset, AUDIO, a_keys, frame_hz=rate),
        FeatureInput.of_store(store, dataset, VISUAL, v_keys, frame_hz=rate),
    )


def select_pairs(
    store: FeatureStore,
    selection: Selection | str,
    audio: FeatureKey | str | FeatureInput,
    visual: FeatureKey | str | FeatureInput,
    *,
    fakes: str | None = None,
    real_only: bool = False,
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Manifest rows of ``selection`` with committed features for both ``audio`` and ``visual``.

    Missing features are an error (as ``featstore.trainers.data.select`` reports them)
    unless ``allow_missing``, which keeps the videos that have both. Manifest
    order and attrs are kept.
    """
    keys = [*_keys(audio), *_keys(visual)]
    return select_videos(
        store,
        selection,
        list(dict.fromkeys(keys)),
        fakes=fakes,
        real_only=real_only,
        allow_missing=allow_missing,
    )


def _keys(side: FeatureKey | str | FeatureInput) -> tuple[FeatureKey, ...]:
    return side.keys if isinstance(side, FeatureInput) else parse_feature_set(side)


def silences(rows: pd.DataFrame) -> np.ndarray:
    """Each row's leading silence in seconds (manifest column ``leading_silence_s``), checked."""
    if SILENCE_COLUMN not in rows.columns:
        raise PairingError(
            f"trim_silence needs each video's leading silence in a manifest column "
            f"{SILENCE_COLUMN!r} (seconds), and this manifest has none: measure it with "
            "`featstore datasets silence NAME --store URL` "
            "(featstore.silence.measure_store_silence), or pair without silence trimming"
        )
    values = rows[SILENCE_COLUMN].to_numpy(dtype=np.float64)  # [N]
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        example = rows["video_id"].to_numpy()[bad][0]
        raise PairingError(
            f"{int(bad.sum())} videos have no valid {SILENCE_COLUMN!r} (e.g. {example!r})"
        )
    return values


def pair_rows(
    audio: FeatureInput,
    visual: FeatureInput,
    rows: Mapping[FeatureKey, np.ndarray],
    *,
    leading_silence_s: float | None = None,
    video_id: str = "video",
) -> tuple[Reconciled, int]:
    """One video's audio and visual rows on one timebase, and the leading rows dropped.

    Each side is assembled at its input's rate (float32), ``leading_silence_s``
    (when given) drops AVH-Align's silent rows from the start of both, and
    both are trimmed to the shorter (``featstore.timebase.reconcile``).
    """
    a = np.asarray(audio.assemble(rows), dtype=np.float32)  # [Ta, Da]
    v = np.asarray(visual.assemble(rows), dtype=np.float32)  # [Tv, Dv]
    skip = 0
    if leading_silence_s is not None:
        skip, _ = silence_trim_counts(float(leading_silence_s), frame_hz=audio.frame_hz)
        a, v = a[skip:], v[skip:]
    pair = reconcile(a, v)  # both [T, D*], T = min of the two
    if pair.n_rows == 0:
        raise PairingError(
            f"{video_id}: no rows left to pair (audio {pair.n_audio_rows}, visual "
            f"{pair.n_visual_rows} rows{f' after skipping {skip} silent rows' if skip else ''})"
        )
    return pair, skip


def read_pairs(
    store: FeatureStore,
    dataset: str,
    rows: pd.DataFrame,
    audio: FeatureKey | str | FeatureInput,
    visual: FeatureKey | str | FeatureInput,
    *,
    trim_silence: bool = False,
    frame_hz: float | None = None,
) -> Iterator[PairedVideo]:
    """Yield the ``PairedVideo`` of each manifest row, in order, reading one video at a time.

    ``audio`` / ``visual`` are feature keys or sets (read at a common rate,
    ``frame_hz`` when given) or ready ``FeatureInput`` objects.
    """
    if not isinstance(audio, FeatureInput) or not isinstance(visual, FeatureInput):
        audio, visual = pair_inputs(store, dataset, _keys(audio), _keys(visual), frame_hz=frame_hz)
    keys = list(dict.fromkeys([*audio.keys, *visual.keys]))
    silence = silences(rows) if trim_silence else None
    segments = rows["fake_segments"] if "fake_segments" in rows.columns else None
    for i, (video_id, label) in enumerate(
        zip(rows["video_id"].astype(str), rows["label"].to_numpy(), strict=True)
    ):
        pair, skip = pair_rows(
            audio,
            visual,
            read_video(store, dataset, video_id, keys),
            leading_silence_s=None if silence is None else float(silence[i]),
            video_id=video_id,
        )
        yield PairedVideo(
            video_id=video_id,
            label=int(label),
            audio=np.ascontiguousarray(pair.audio),
            visual=np.ascontiguousarray(pair.visual),
            fake_segments=tuple(parse_segments(segments.iat[i])) if segments is not None else (),
            frame_hz=audio.frame_hz,
            n_audio=pair.n_audio_rows,
            n_visual=pair.n_visual_rows,
            silence_skip_rows=skip,
        )


def iter_pairs(
    store: FeatureStore,
    selection: Selection | str,
    audio: FeatureKey | str,
    visual: FeatureKey | str,
    *,
    fakes: str | None = None,
    real_only: bool = False,
    allow_missing: bool = False,
    trim_silence: bool = False,
    frame_hz: float | None = None,
) -> Iterator[PairedVideo]:
    """``load_pairs`` one video at a time (for selections too large to hold in memory).

    Selection errors and rate mismatches are raised before the first video is read.
    """
    selection = Selection.parse(selection)
    rows = select_pairs(
        store,
        selection,
        audio,
        visual,
        fakes=fakes,
        real_only=real_only,
        allow_missing=allow_missing,
    )
    audio_in, visual_in = pair_inputs(store, selection.dataset, audio, visual, frame_hz=frame_hz)
    if trim_silence:
        silences(rows)
    return read_pairs(
        store, selection.dataset, rows, audio_in, visual_in, trim_silence=trim_silence
    )


def load_pairs(
    store: FeatureStore,
    selection: Selection | str,
    audio: FeatureKey | str,
    visual: FeatureKey | str,
    *,
    fakes: str | None = None,
    real_only: bool = False,
    allow_missing: bool = False,
    trim_silence: bool = False,
    frame_hz: float | None = None,
) -> list[PairedVideo]:
    """Every video of ``selection`` with both features, reconciled to a common length.

    ``fakes`` (the evaluation filter) / ``real_only`` / ``allow_missing`` filter as
    ``featstore.trainers.data.select`` does; both encoders must share ``frame_hz`` unless
    ``frame_hz`` names a common rate to resample to; ``trim_silence`` drops
    the leading silence (manifest column ``leading_silence_s``) from both
    streams as AVH-Align does.
    """
    return list(
        iter_pairs(
            store,
            selection,
            audio,
            visual,
            fakes=fakes,
            real_only=real_only,
            allow_missing=allow_missing,
            trim_silence=trim_silence,
            frame_hz=frame_hz,
        )
    )


def stack_rows(pairs: Sequence[PairedVideo]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of ``pairs`` concatenated: ``audio [sum T, Da]``, ``visual [sum T, Dv]``, offsets ``[N + 1]``."""
    if not pairs:
        raise PairingError("no paired videos to stack")
    lengths = np.array([p.n_rows for p in pairs], dtype=np.int64)  # [N]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [N + 1]
    audio = np.concatenate([p.audio for p in pairs], axis=0)  # [sum T, Da]
    visual = np.concatenate([p.visual for p in pairs], axis=0)  # [sum T, Dv]
    return audio, visual, offsets
