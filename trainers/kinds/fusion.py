"""Run kind ``fusion``: late fusion of other runs (paper Tab. 3/5, "average of predictions").

A fusion run holds copies of its member runs (``members/NN-name/``: config
and weights, so it stays valid when the originals move) and the fusion's
settings. Its detector loads every member through the registry, reads the
union of their features, and fuses per video: the weighted average of the
members' ``sigmoid(2 s)`` mapped back onto the logit scale with
``logit(p) / 2`` (``featstore.trainers.fusion``). Per-frame scores are fused the same
way on a common timeline (the fastest member's rate), which the paper does
not do: they serve explanations and localization. A fusion is ``calibrated``
when all its members are.

>>> fused = fuse_runs(["runs/w2v", "runs/clip"], store, "favc:test")  # doctest: +SKIP
>>> fused.fused.scores.shape  # doctest: +SKIP
(3508,)
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.trainers.data import AUTO, Auto, FeatureKey, Selection
from featstore.trainers.inputs import FeatureInput
from featstore.trainers.kinds import load, register
from featstore.trainers.kinds.base import Detector, VideoScore, strict_fields, upgraded
from featstore.trainers.runs import (
    CONFIG,
    MEMBERS,
    MODEL,
    Run,
    RunError,
    Scored,
    check_writable,
    save_run,
)
from featstore.trainers.windows import WindowRule

if TYPE_CHECKING:
    from featstore.store import FeatureStore

KIND = "fusion"
HOW = ("intersect", "exact")

__all__ = [
    "HOW",
    "KIND",
    "FusedScores",
    "FusionDetector",
    "FusionMember",
    "FusionRunConfig",
    "member_names",
    "train",
]


@dataclass(frozen=True)
class FusionMember:
    """A member run: its name in tables, its directory (relative to the fusion run when
    stored in it), its kind and where it was copied from."""

    name: str
    path: str
    kind: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class FusionRunConfig:
    """The members, how their videos are matched, and their weights (None: equal)."""

    members: tuple[FusionMember, ...]
    how: str = "intersect"
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        members = tuple(self.members)
        if len(members) < 2:
            raise RunError("fusion needs at least two runs")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise RunError(f"fusion member names must be unique, got {names}")
        if self.how not in HOW:
            raise RunError(f"how must be one of {HOW}, got {self.how!r}")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if len(weights) != len(members):
                raise RunError(f"{len(weights)} weights for {len(members)} fusion members")
            object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "members", members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": [
                {"name": m.name, "path": m.path, "kind": m.kind, "source": m.source}
                for m in self.members
            ],
            "how": self.how,
            "weights": None if self.weights is None else list(self.weights),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FusionRunConfig:
        strict_fields(cls, doc, "a fusion run config")
        members = []
        for m in doc["members"]:
            strict_fields(FusionMember, m, "a fusion member record")
            members.append(FusionMember(**m))
        weights = doc.get("weights")
        return cls(
            members=tuple(members),
            how=str(doc.get("how", "intersect")),
            weights=None if weights is None else tuple(weights),
        )


@dataclass(frozen=True)
class FusedScores:
    """Every member's and the fusion's scores on the same videos (the members' ``how`` match)."""

    names: tuple[str, ...]
    members: tuple[Scored, ...]  # each row-aligned with ``fused``
    fused: Scored

    @property
    def probabilities(self) -> np.ndarray:
        """The members' ``sigmoid(2 s)`` ``[M, N]``."""
        return np.stack([m.probabilities for m in self.members])


@register
class FusionDetector(Detector):
    """Late fusion of loaded member detectors."""

    kind = KIND
    config_type = FusionRunConfig
    rerun = "`featstore fuse RUN_DIR RUN_DIR... --on NAME:SPLIT`"
    config: FusionRunConfig

    def __init__(
        self,
        config: FusionRunConfig,
        members: Sequence[Detector],
        *,
        run: Run | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(config, run=run, device=device)
        if len(members) != len(config.members):
            raise RunError(f"{len(members)} detectors for {len(config.members)} fusion members")
        self.members = tuple(members)

    @classmethod
    def from_run(cls, run: Run, doc: Mapping[str, Any], *, device: str = "cpu") -> FusionDetector:
        config = FusionRunConfig.from_dict(doc["config"])
        members = [load(run.path / m.path, device=device) for m in config.members]
        return cls(config, members, run=run, device=device)

    @staticmethod
    def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
        """Format 1: ``members``, ``how``, ``weights`` at the top (the layout is unchanged)."""
        config = {
            "members": [dict(m) for m in doc["members"]],
            "how": doc.get("how", "intersect"),
            "weights": doc.get("weights"),
        }
        return {**upgraded(doc, config=config), "fused_on": doc.get("fused_on")}

    @property
    def calibrated(self) -> bool:  # type: ignore[override]
        return all(m.calibrated for m in self.members)

    @property
    def inputs(self) -> tuple[FeatureInput, ...]:
        return tuple(dict.fromkeys(i for m in self.members for i in m.inputs))

    @property
    def frame_hz(self) -> float:
        return max(m.frame_hz for m in self.members)

    @property
    def needs_silence(self) -> bool:
        return any(m.needs_silence for m in self.members)

    @property
    def score_batch_videos(self) -> int:  # type: ignore[override]
        return math.lcm(*(m.score_batch_videos for m in self.members))

    @property
    def min_rows(self) -> int:
        """The most any member needs, in rows at the fusion's rate."""
        return max(math.ceil(m.min_rows * self.frame_hz / m.frame_hz - 1e-9) for m in self.members)

    @property
    def min_rows_reason(self) -> str:
        m = max(self.members, key=lambda m: m.min_rows / m.frame_hz)
        return f"member {m.name} ({m.kind}): {m.min_rows_reason}"

    @property
    def window_rule(self) -> WindowRule:
        """Windows as short as the shortest member's, minimums as long as the longest's
        (every member scores only inputs it would score alone)."""
        rules = [m.window_rule for m in self.members]
        hz = self.frame_hz
        windows = [r.window_rows * hz / r.frame_hz for r in rules if r.window_rows]
        strictest = max(rules, key=lambda r: r.min_rows / r.frame_hz)
        window = round(min(windows)) if windows else 0
        return WindowRule(
            window_rows=window,
            hop_rows=max(1, window // 2) if window else 0,
            min_rows=math.ceil(strictest.min_rows * hz / strictest.frame_hz - 1e-9),
            kind_min_rows=self.min_rows,
            frame_hz=hz,
            reason=strictest.reason,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.config.members)

    def _fuse(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Members' scores ``[M, N]`` -> fused probabilities and scores ``[N]``."""
        from featstore.trainers.fusion import fused_score, late_fusion, probabilities_from_scores

        p = late_fusion(probabilities_from_scores(scores), weights=self.config.weights)
        return p, fused_score(p)

    def _fuse_frames(self, frames: Sequence[np.ndarray | None]) -> np.ndarray | None:
        from featstore.trainers.fusion import late_fusion_frames

        if any(f is None for f in frames):
            return None
        return late_fusion_frames(
            [f for f in frames if f is not None],
            [m.frame_hz for m in self.members],
            frame_hz=self.frame_hz,
            weights=self.config.weights,
        )

    def score_rows(
        self, rows: Mapping[FeatureKey, np.ndarray], *, leading_silence_s: float | None = None
    ) -> VideoScore:
        results = [
            m.score_rows(rows, leading_silence_s=leading_silence_s if m.needs_silence else None)
            for m in self.members
        ]
        _, fused = self._fuse(np.array([[r.score] for r in results], dtype=np.float64))
        return VideoScore(float(fused[0]), self._fuse_frames([r.frame_scores for r in results]))

    def score_members(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> FusedScores:
        """Each member scores ``selection`` its own (batched) way; videos are matched by ``how``."""
        from featstore.trainers.fusion import align_predictions

        sel = Selection.parse(selection, default_split="test")
        scored = [m.score_selection(store, sel, allow_missing=allow_missing) for m in self.members]
        preds = [dict(zip(s.video_ids, s.scores.tolist(), strict=True)) for s in scored]
        ids, scores = align_predictions(preds, names=list(self.names), how=self.config.how)
        aligned = [_rows(s, ids) for s in scored]
        probs, fused_scores = self._fuse(scores)
        frames: list[np.ndarray] | None = None
        if all(s.frame_scores is not None for s in aligned):
            frames = [
                self._fuse_frames([s.frame_scores[i] for s in aligned])  # type: ignore[index]
                for i in range(len(ids))
            ]  # type: ignore[assignment]
        fused = Scored(
            selection=str(sel),
            manifest=aligned[0].manifest,
            scores=fused_scores,
            probabilities=probs,  # the average itself (sigmoid(2 s) up to the clipping of s)
            frame_scores=frames,
            frame_hz=self.frame_hz if frames is not None else None,
        )
        return FusedScores(self.names, tuple(aligned), fused)

    def score_selection(
        self, store: FeatureStore, selection: Selection | str, *, allow_missing: bool = False
    ) -> Scored:
        return self.score_members(store, selection, allow_missing=allow_missing).fused


def _rows(scored: Scored, ids: Sequence[str]) -> Scored:
    """``scored`` restricted to ``ids``, in that order."""
    index = {v: i for i, v in enumerate(scored.video_ids)}
    take = np.array([index[v] for v in ids], dtype=np.int64)
    manifest = scored.manifest.iloc[take].reset_index(drop=True)
    manifest.attrs = dict(scored.manifest.attrs)
    return Scored(
        selection=scored.selection,
        manifest=manifest,
        scores=scored.scores[take],
        probabilities=scored.probabilities[take],
        frame_scores=None
        if scored.frame_scores is None
        else [scored.frame_scores[i] for i in take],
        frame_hz=scored.frame_hz,
    )


def member_names(runs: Sequence[Run]) -> list[str]:
    """Unique, readable model names: the run directories' names (parent added on a clash)."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i}:{r.name}" for i, r in enumerate(runs)]
    return names


def in_memory(
    detectors: Sequence[Detector], *, how: str = "intersect", weights: Sequence[float] | None = None
) -> FusionDetector:
    """A fusion of loaded run detectors, without a run directory of its own."""
    runs = [d.run for d in detectors]
    if any(r is None for r in runs):
        raise RunError("fusion members must be runs with directories")
    names = member_names([r for r in runs if r is not None])
    members = tuple(
        FusionMember(n, str(r.path), r.kind, str(r.path.resolve()))
        for n, r in zip(names, runs, strict=True)
        if r is not None
    )
    config = FusionRunConfig(members, how, None if weights is None else tuple(weights))
    return FusionDetector(config, detectors)


def _copy_member(src: Run, dst: Path) -> None:
    """A member's config, model and (for nested fusions) its own members; not its outputs."""
    dst.mkdir(parents=True)
    for name in (MODEL, CONFIG):
        if (src.path / name).is_file():
            shutil.copy2(src.path / name, dst / name)
    if (src.path / MEMBERS).is_dir():
        shutil.copytree(src.path / MEMBERS, dst / MEMBERS)


def _shared_val(fusion: FusionDetector) -> Selection | None:
    """The validation selection every member was trained with, when they share one."""
    vals = {
        (m.run.config.get("val") or {}).get("selection") if m.run is not None else None
        for m in fusion.members
    }
    if len(vals) != 1 or None in vals:
        return None
    return Selection.parse(str(vals.pop()))


def _card(
    fusion: FusionDetector,
    store: FeatureStore | None,
    calibrate_on: Selection | str | Auto | None,
    *,
    allow_missing: bool,
) -> dict[str, Any]:
    """The fusion's card: its frame threshold (no lengths: windows come from the members)."""
    from featstore.trainers.calibration import calibrate_scored
    from featstore.trainers.runcard import RunCard, uncalibrated

    if isinstance(calibrate_on, Auto):
        calib = _shared_val(fusion)
        note = "its members were not validated on one shared selection (fuse --calibrate-on)"
    else:
        calib = None if calibrate_on is None else Selection.parse(calibrate_on, default_split="val")
        note = "no selection to calibrate on (fuse --calibrate-on NAME:SPLIT)"
    if store is None or calib is None:
        return RunCard(uncalibrated(note if store is not None else "no store given")).to_doc()
    scored = fusion.score_selection(store, calib, allow_missing=allow_missing)
    return RunCard(calibrate_scored(scored)).to_doc()


def train(
    fusion: FusionDetector,
    *,
    out: str | os.PathLike[str],
    store: FeatureStore | None = None,
    fused_on: Selection | str | None = None,
    calibrate_on: Selection | str | Auto | None = AUTO,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> Run:
    """Write ``fusion`` (e.g. :func:`in_memory`'s) as a run at ``out``, members copied in.

    Nothing is fitted: late fusion has no parameters but its weights, and the
    frame threshold, calibrated on ``calibrate_on`` (``AUTO``: the validation
    selection all members were trained with, when they share one).
    """
    from featstore.trainers.kinds.base import store_location

    check_writable(out, overwrite=overwrite)
    runs = [m.run for m in fusion.members]
    if any(r is None for r in runs):
        raise RunError("fusion members must be runs with directories")
    member_dirs = [f"{MEMBERS}/{i:02d}-{r.name}" for i, r in enumerate(runs) if r is not None]
    config = FusionRunConfig(
        members=tuple(
            FusionMember(m.name, rel, r.kind, str(r.path.resolve()))
            for m, rel, r in zip(fusion.config.members, member_dirs, runs, strict=True)
            if r is not None
        ),
        how=fusion.config.how,
        weights=fusion.config.weights,
    )

    def copy_members(path: Path) -> None:
        for r, rel in zip(runs, member_dirs, strict=True):
            if r is not None:
                _copy_member(r, path / rel)

    doc: dict[str, Any] = {
        "kind": KIND,
        "config": config.to_dict(),
        "fused_on": None
        if fused_on is None
        else str(Selection.parse(fused_on, default_split="test")),
        "store": None if store is None else store_location(store),
        **_card(fusion, store, calibrate_on, allow_missing=allow_missing),
    }
    n = len(runs)
    w = np.full(n, 1.0 / n) if config.weights is None else np.asarray(config.weights, float)
    return save_run(
        out,
        config=doc,
        tensors={"weights": w.astype(np.float64)},
        files=copy_members,
        overwrite=True,
    )
