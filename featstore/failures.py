"""Why videos failed: the store's ``_failures`` records, one row per video, grouped by reason.

An extraction records every video it could not process (undecodable, no
audio, no face, past a decode limit, ...) in ``<dataset>/<encoder>/_failures``
with the error's type and message (DESIGN.md "The store"). A video retried
and failed again has several records: the newest one is its reason. A video
committed since (a later run succeeded) is *resolved* and left out unless
asked for.

>>> report = collect_failures(store, dataset="av1m")  # doctest: +SKIP
>>> [(g.error_type, g.videos) for g in report.groups]  # doctest: +SKIP
[('MediaLimitError', 3), ('NoFaceError', 1)]
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from featstore.errors import CorruptStoreError, UnknownEncoderError

if TYPE_CHECKING:
    from featstore.store import FeatureStore

__all__ = ["Failure", "FailureGroup", "FailureReport", "collect_failures"]

EXAMPLES = 3  # example videos kept per reason


@dataclass(frozen=True)
class Failure:
    """The newest failure record of one video."""

    dataset: str
    encoder: str
    video_id: str
    error_type: str
    message: str
    time_ns: int
    part_id: str  # the writer task's part (or failure record) id
    resolved: bool  # committed since by a later run
    attempts: int  # failure records of this video

    @property
    def when(self) -> str:
        """The time it failed, ISO 8601 in UTC (seconds)."""
        stamp = datetime.datetime.fromtimestamp(self.time_ns / 1e9, tz=datetime.UTC)
        return stamp.isoformat(timespec="seconds")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "when": self.when}


@dataclass(frozen=True)
class FailureGroup:
    """Videos that failed with one error type: how many, a few of them, a sample message."""

    error_type: str
    videos: int
    examples: tuple[str, ...]
    message: str  # the newest message of this type


@dataclass(frozen=True)
class FailureReport:
    """Failures (newest first), their groups by error type (most common first)."""

    failures: tuple[Failure, ...]
    groups: tuple[FailureGroup, ...]
    resolved: int  # failed videos committed since (left out unless include_resolved)

    def to_dict(self) -> dict[str, Any]:
        return {
            "videos": len(self.failures),
            "resolved": self.resolved,
            "groups": [asdict(g) for g in self.groups],
            "failures": [f.to_dict() for f in self.failures],
        }


def collect_failures(
    store: FeatureStore,
    *,
    dataset: str | None = None,
    encoder: str | None = None,
    include_resolved: bool = False,
    since_ns: int | None = None,
) -> FailureReport:
    """The recorded failures of every (or one) dataset and encoder.

    ``since_ns``: only records written at or after this time (an extraction's
    own failures). ``include_resolved``: also videos committed since they failed.
    """
    store.refresh()
    datasets = [dataset] if dataset is not None else store.datasets()
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    attempts: Counter[tuple[str, str, str]] = Counter()
    for ds in datasets:
        encoders = [encoder] if encoder is not None else store.encoders(ds)
        if encoder is not None and dataset is None and encoder not in store.encoders(ds):
            continue
        for enc in encoders:
            try:
                frame = store.failures(ds, enc)
            except (CorruptStoreError, UnknownEncoderError):
                if encoder is not None and dataset is not None:
                    raise
                continue
            for row in frame.to_dict("records"):
                time_ns = int(row.get("time_ns") or 0)
                if since_ns is not None and time_ns < since_ns:
                    continue
                key = (ds, enc, str(row["video_id"]))
                attempts[key] += 1
                if key not in newest or time_ns >= int(newest[key]["time_ns"]):
                    newest[key] = {**row, "time_ns": time_ns}
    failures = sorted(
        (
            Failure(
                dataset=ds,
                encoder=enc,
                video_id=vid,
                error_type=str(row.get("error_type") or "Error"),
                message=str(row.get("message") or ""),
                time_ns=int(row["time_ns"]),
                part_id=str(row.get("part_id") or ""),
                resolved=bool(row.get("resolved", False)),
                attempts=attempts[(ds, enc, vid)],
            )
            for (ds, enc, vid), row in newest.items()
        ),
        key=lambda f: (-f.time_ns, f.dataset, f.encoder, f.video_id),
    )
    resolved = sum(f.resolved for f in failures)
    if not include_resolved:
        failures = [f for f in failures if not f.resolved]
    return FailureReport(tuple(failures), _group(failures), resolved)


def _group(failures: list[Failure]) -> tuple[FailureGroup, ...]:
    by_type: dict[str, list[Failure]] = {}
    for f in failures:  # newest first
        by_type.setdefault(f.error_type, []).append(f)
    groups = [
        FailureGroup(
            error_type=kind,
            videos=len(items),
            examples=tuple(f.video_id for f in items[:EXAMPLES]),
            message=items[0].message,
        )
        for kind, items in by_type.items()
    ]
    return tuple(sorted(groups, key=lambda g: (-g.videos, g.error_type)))
