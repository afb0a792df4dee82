"""A run's card: how to read its scores, learnt when it is written, shown wherever it is used.

Two optional keys of a run's ``config.json``, written by every kind's
``train`` through :func:`record` and read for every kind by
``featstore.trainers.kinds.load`` (kinds themselves never look at them):

```
"localization": {"chosen": "segment_f1", "threshold": 0.83,
                 "thresholds": {"paper": 0.0, "real_videos": 1.12, "segment_f1": 0.83},
                 "rules": {"smooth_s": 0.2, "min_segment_s": 0.2, "merge_gap_s": 0.2},
                 "calibrated_on": {"selection": "av1m:val", "n_real": ..., ...},
                 "calibrated": true, "description": "..."}      (featstore.trainers.calibration)
"lengths":      {"frame_hz": 25.0, "n_videos": ..., "min_rows": ..., "p5_rows": ...,
                 "median_rows": ..., "p95_rows": ..., "max_rows": ...,
                 "selection": "av1m:train", "seconds": {...}}   (featstore.trainers.windows)
```

Runs written before (format 2 without these keys, format 1) get
:data:`LEGACY`: the paper's reading of frame scores (threshold 0, no
post-processing) and no windows, which every report names as such. The
keys are additions a reader of format 2 ignores, so the format number is
unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.calibration import LEGACY_CARD, PAPER, LocalizationCard, calibrate_scored
from featstore.trainers.localization import DEFAULT_RULES, SegmentRules
from featstore.trainers.windows import LengthProfile

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore
    from featstore.trainers.data import Selection
    from featstore.trainers.kinds.base import Detector

log = logging.getLogger(__name__)

__all__ = ["LEGACY", "RunCard", "input_lengths", "record", "uncalibrated"]


@dataclass(frozen=True)
class RunCard:
    """The localization card and the length profile of a run."""

    localization: LocalizationCard = LEGACY_CARD
    lengths: LengthProfile | None = field(default=None)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> RunCard:
        """The card of a run config (current format); absent keys: the legacy reading."""
        loc, lengths = doc.get("localization"), doc.get("lengths")
        return cls(
            localization=LEGACY_CARD if loc is None else LocalizationCard.from_dict(loc),
            lengths=None if lengths is None else LengthProfile.from_dict(lengths),
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "localization": self.localization.to_dict(),
            "lengths": None if self.lengths is None else self.lengths.to_dict(),
        }


LEGACY = RunCard()


def uncalibrated(note: str, post: SegmentRules = DEFAULT_RULES) -> LocalizationCard:
    """A new run's card when there is nothing to calibrate on: the paper's 0 with
    ``post``-processing, and why."""
    return LocalizationCard(
        rules=post.with_(threshold=0.0),
        chosen=PAPER,
        thresholds={PAPER: 0.0},
        calibrated_on={"note": note},
    )


def input_lengths(
    detector: Detector, store: FeatureStore, dataset: str, rows: pd.DataFrame
) -> np.ndarray:
    """``[N]`` rows of the detector's input for each video of ``rows`` (from the commit
    index: nothing is read), the shortest of its inputs."""
    ids = rows["video_id"].astype(str).tolist()
    out = np.full(len(ids), np.iinfo(np.int64).max, dtype=np.int64)
    for inp in detector.inputs:
        per_feature = [
            [store.locate(dataset, f.encoder, v, f.layer).n_frames for v in ids]
            for f in inp.features
        ]
        lengths = [inp.n_rows(ns) for ns in zip(*per_feature, strict=True)]
        out = np.minimum(out, np.asarray(lengths, dtype=np.int64))
    return out


def record(
    detector: Detector,
    store: FeatureStore,
    *,
    lengths_of: tuple[Selection, pd.DataFrame],
    calibrate_on: Selection | None,
    allow_missing: bool = False,
    post: SegmentRules = DEFAULT_RULES,
    no_calibration: str = "no validation selection to calibrate on",
) -> dict[str, Any]:
    """The card of a freshly written run, as ``config.json`` keys.

    ``lengths_of``: the selection and manifest rows of its training videos;
    ``calibrate_on``: the selection whose videos (reals and annotated fakes)
    the frame threshold is learnt on (None: the paper's 0, with
    ``no_calibration`` as the reason).
    """
    sel, rows = lengths_of
    lengths = LengthProfile.of(
        input_lengths(detector, store, sel.dataset, rows), detector.frame_hz, selection=str(sel)
    )
    if calibrate_on is None:
        card = uncalibrated(no_calibration, post)
    else:
        scored = detector.score_selection(store, calibrate_on, allow_missing=allow_missing)
        card = calibrate_scored(scored, post=post)
    log.info("frame threshold of %s: %s", detector.name, card.describe())
    return RunCard(card, lengths).to_doc()
