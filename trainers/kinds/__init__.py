"""Run kinds: one module per detector, registered by name (DESIGN.md "Run kinds").

- ``probe`` (``featstore.trainers.kinds.probe``): the linear probe (paper Eq. 1) on one
  feature set, trained on real and fake videos; calibrated.
- ``ntp`` (``featstore.trainers.kinds.ntp``): next-frame prediction error (Sec. 3.2) on
  one feature set, trained on real videos only.
- ``sync`` (``featstore.trainers.kinds.sync``): AVH-Align's ``-Phi(a_t, v_t)`` on an
  audio and a visual feature set, trained on real videos only.
- ``syncfree`` (``featstore.trainers.kinds.syncfree``): the training-free Eq. 3 on an
  audio and a visual feature set (``featstore syncscore``).
- ``fusion`` (``featstore.trainers.kinds.fusion``): late fusion of other runs.

Every caller (``featstore eval``, ``fuse``, ``correlate``, ``explain``,
``grid``, ``layers``, the API) goes through :func:`load` and the
:class:`~featstore.trainers.kinds.base.Detector` interface; none branches on a kind's
name. Adding a kind is a module with a run config, ``train`` and a
``Detector`` subclass decorated with :func:`register`, plus its line in
``KIND_MODULES`` (README "Run kinds").

>>> detector = load("runs/w2v")  # doctest: +SKIP
>>> detector.kind, [i.label for i in detector.required_features]  # doctest: +SKIP
('probe', ['wav2vec2:last'])
>>> detector.score_rows({FeatureKey("wav2vec2", "last"): rows}).score  # doctest: +SKIP
1.93
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, TypeVar

from featstore.trainers.kinds.base import Detector, RunFormatError, VideoScore, probability
from featstore.trainers.runcard import RunCard
from featstore.trainers.runs import FORMAT, Run, RunError, load_run

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.data import Selection
    from featstore.trainers.runs import Scored

__all__ = [
    "KIND_MODULES",
    "Detector",
    "RunFormatError",
    "UnknownKindError",
    "VideoScore",
    "current_config",
    "get",
    "kinds",
    "load",
    "probability",
    "register",
    "score",
]

# Kind modules, imported on first use of the registry.
KIND_MODULES = (
    "featstore.trainers.kinds.probe",
    "featstore.trainers.kinds.ntp",
    "featstore.trainers.kinds.sync",
    "featstore.trainers.kinds.syncfree",
    "featstore.trainers.kinds.fusion",
)

_REGISTRY: dict[str, type[Detector]] = {}
_loaded = False
K = TypeVar("K", bound=type[Detector])


class UnknownKindError(RunError):
    """A run's kind is not registered (no module can load or score it)."""


def register(kind: K) -> K:
    """Register a :class:`Detector` subclass under ``kind.kind`` (a class decorator)."""
    _REGISTRY[kind.kind] = kind
    return kind


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        for module in KIND_MODULES:
            importlib.import_module(module)
        _loaded = True


def kinds() -> dict[str, type[Detector]]:
    """Every registered kind, by name."""
    _load_modules()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Detector]:
    """The registered kind ``name``."""
    _load_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownKindError(
            f"no run kind {name!r} is registered (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def current_config(run: Run) -> dict[str, Any]:
    """``run``'s config in the current format (format-1 configs upgraded in memory)."""
    kind = get(run.kind)
    fmt = run.config.get("format", 1)
    written = run.config.get("package_version", "an older version")
    if fmt == FORMAT:
        return dict(run.config)
    if fmt == 1:
        try:
            return kind.upgrade_v1(run.config)
        except RunFormatError as exc:
            raise RunFormatError(f"{run.path}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFormatError(
                f"{run.path} is a {run.kind} run written by featstore {written} that this "
                f"version cannot read ({type(exc).__name__}: {exc}); re-run {kind.rerun} "
                f"--out {run.path} --overwrite"
            ) from None
    raise RunFormatError(
        f"{run.path} was written by featstore {written} in run format {fmt!r}; this version "
        f"reads formats 1 to {FORMAT}: use a newer featstore"
    )


def load(run: Run | str | os.PathLike[str], *, device: str = "cpu") -> Detector:
    """The detector of a complete run directory, whatever its kind and format."""
    run = run if isinstance(run, Run) else load_run(run)
    doc = current_config(run)
    kind = get(run.kind)
    try:
        detector = kind.from_run(run, doc, device=device)
        detector.card = RunCard.from_doc(doc)
        return detector
    except RunError as exc:
        if str(run.path) in str(exc):
            raise
        raise type(exc)(f"{run.path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:  # MetricError of a bad card is one too
        raise RunError(
            f"{run.path}: malformed {run.kind} run config ({type(exc).__name__}: {exc}); "
            f"re-run {kind.rerun} --out {run.path} --overwrite"
        ) from None


def score(
    run: Run | Detector | str | os.PathLike[str],
    store: FeatureStore,
    selection: Selection | str,
    *,
    allow_missing: bool = False,
) -> Scored:
    """Score ``selection`` with a run of any kind (a bare dataset name means its test split)."""
    detector = run if isinstance(run, Detector) else load(run)
    return detector.score_selection(store, selection, allow_missing=allow_missing)
