"""Run directories: what a trained detector leaves behind (DESIGN.md, "Trainers").

```
<run>/
  model.safetensors            tensors of the model (safetensors.numpy; never pickle)
  config.json                  format, kind, the kind's typed config (features, hyperparameters),
                               learnt values, training record, datasets + split hashes,
                               package version, created time -- written LAST
  history.csv                  one row per epoch (when the kind trains by epochs)
  metrics.json                 {"<dataset>:<split>[|fakes=all]": {...}} for every evaluated
                               selection and evaluation filter (``featstore.trainers.metrics_file``)
  predictions/<dataset>_<split>.csv           video_id, label, score, probability, evaluated
                                              (1: counted by the paper's evaluation filter)
  predictions/<dataset>_<split>.frames.npz    per-frame scores (ragged: ids, offsets, scores)
  predictions/<dataset>_<split>.segments.json fake segments the frame scores imply (seconds)
  members/                     a fusion run's copies of its member runs
```

A directory without ``config.json`` is an incomplete run (a crash or a run
still training): ``load_run`` refuses it. ``config.json`` carries
``"format": FORMAT``; configs without it were written before formats were
numbered (format 1) and are read through their kind's upgrade
(``featstore.trainers.kinds``). What a run's config means, and how a run scores, is
its kind's business: ``featstore.trainers.kinds.load(path)`` gives the detector.
Scores follow one convention for every kind: a video score ``s`` is a logit,
``P(fake) = sigmoid(2 s)`` (a calibrated probability only for the kinds that
say so).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from featstore import __version__
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import pandas as pd

CONFIG = "config.json"
MODEL = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
PREDICTIONS = "predictions"
MEMBERS = "members"
FORMAT = 2
"""The run config format this version writes (1: configs without a ``format`` key)."""

__all__ = [
    "CONFIG",
    "FORMAT",
    "MODEL",
    "IncompleteRunError",
    "Run",
    "RunError",
    "RunExistsError",
    "Scored",
    "is_complete",
    "load_run",
    "parse_segments",
    "read_predictions",
    "recorded_invocation",
    "save_run",
    "write_metrics",
    "write_predictions",
]


# How the run was asked for (the command line's config file and overrides), recorded as
# ``invocation`` in every run saved while it is set (``recorded_invocation``).
_INVOCATION: ContextVar[Mapping[str, Any] | None] = ContextVar("featstore_invocation", default=None)


@contextlib.contextmanager
def recorded_invocation(doc: Mapping[str, Any] | None) -> Iterator[None]:
    """Record ``doc`` as the ``invocation`` of every run :func:`save_run` writes inside
    the block (e.g. ``featstore train --config FILE``: the file, its values and what the
    command line overrode), without every run kind passing it along."""
    token = _INVOCATION.set(None if doc is None else dict(doc))
    try:
        yield
    finally:
        _INVOCATION.reset(token)


class RunError(FeatstoreError):
    """A run directory is missing, malformed or of a kind nothing can score."""


class IncompleteRunError(RunError):
    """The run directory has no config.json: training crashed or is still running."""


class RunExistsError(RunError):
    """A complete run already exists where a new one would be written."""


@dataclass(frozen=True)
class Run:
    """A complete run directory and its config (tensors are loaded on demand)."""

    path: Path
    config: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.config["kind"])

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def interrupted(self) -> dict[str, Any] | None:
        """How training was cut short (``fit.interrupted``: signal, epochs), None if it was not.

        An interrupted run holds the best weights up to then and scores like any
        other; a grid or a resume trains it again."""
        fit = self.config.get("fit")
        return fit.get("interrupted") if isinstance(fit, Mapping) else None

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays of ``model.safetensors``."""
        from safetensors.numpy import load_file

        path = self.path / MODEL
        if not path.is_file():
            raise RunError(f"run {self.path} has no {MODEL}")
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own untyped errors
            raise RunError(f"cannot read {path}: {exc}") from exc

    def metrics(self) -> dict[str, Any]:
        """Everything in ``metrics.json`` (``{}`` before any evaluation)."""
        return _read_json(self.path / METRICS) if (self.path / METRICS).is_file() else {}

    def history(self) -> list[dict[str, float]]:
        """Rows of ``history.csv`` as floats (``[]`` when the kind has none)."""
        path = self.path / HISTORY
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@dataclass(frozen=True)
class Scored:
    """A run's predictions on one selection, row-aligned with ``manifest``.

    ``frame_scores`` holds per-frame logits (``[T_i]`` each) for kinds that
    have them, else ``None``; ``frame_hz`` is their rate.
    """

    selection: str
    manifest: pd.DataFrame = field(repr=False)  # the scored manifest rows, in order
    scores: np.ndarray  # [N] float64 video logits
    probabilities: np.ndarray  # [N] float64, sigmoid(2 s)
    frame_scores: list[np.ndarray] | None = field(default=None, repr=False)
    frame_hz: float | None = None

    @property
    def video_ids(self) -> list[str]:
        return self.manifest["video_id"].astype(str).tolist()

    @property
    def labels(self) -> np.ndarray:
        return self.manifest["label"].to_numpy().astype(np.int8)  # [N]

    def fake_segments(self) -> list[list[tuple[float, float]]]:
        """Annotated fake segments in seconds per video (``[]`` when none or unknown)."""
        if "fake_segments" not in self.manifest.columns:
            return [[] for _ in range(len(self.manifest))]
        return [parse_segments(v) for v in self.manifest["fake_segments"]]


def parse_segments(value: Any) -> list[tuple[float, float]]:
    """A manifest ``fake_segments`` cell (list or JSON text) as ``[(start_s, end_s), ...]``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return [(float(s), float(e)) for s, e in value]


# ------------------------------------------------------------- read / write


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds a run's ``config.json`` (written last, so the run finished)."""
    return (Path(path) / CONFIG).is_file()


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a complete run directory."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"no run directory at {path}")
    if not is_complete(path):
        raise IncompleteRunError(
            f"{path} is an incomplete run (no {CONFIG}): training crashed or is still running; "
            "train again with overwrite"
        )
    config = _read_json(path / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise RunError(f"{path / CONFIG} has no 'kind'")
    return Run(path=path, config=config)


def save_run(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    files: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Run:
    """Write a run directory; ``config.json`` goes last, so a crash leaves an incomplete run.

    ``config`` needs ``kind``; ``format`` (unless given), ``created`` and
    ``package_version`` are added, and ``invocation`` inside
    :func:`recorded_invocation`.
    ``files(path)`` may write extra artifacts (e.g. member copies) before the
    config. An existing complete run is replaced only with ``overwrite``.
    """
    path = Path(path)
    if "kind" not in config:
        raise RunError("run config needs a 'kind'")
    check_writable(path, overwrite=overwrite)
    if path.exists():
        # Invalidate first: from here until the new config lands the run is incomplete.
        (path / CONFIG).unlink(missing_ok=True)
        for stale in (METRICS, HISTORY, MODEL):
            (path / stale).unlink(missing_ok=True)
        for stale_dir in (PREDICTIONS, MEMBERS):
            shutil.rmtree(path / stale_dir, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    if tensors is not None:
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(arrays, str(path / MODEL), metadata={"kind": str(config["kind"])})
    if history:
        _write_csv(path / HISTORY, list(history))
    if files is not None:
        files(path)
    full = {
        "format": FORMAT,
        **config,
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    invocation = _INVOCATION.get()
    if invocation is not None and "invocation" not in full:
        full["invocation"] = dict(invocation)
    _write_json(path / CONFIG, full)
    return Run(path=path, config=full)


def check_writable(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Fail early when a complete run is at ``path`` and ``overwrite`` is off."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a directory")
    if is_complete(path) and not overwrite:
        raise RunExistsError(f"{path} already holds a complete run; pass overwrite to replace it")


def write_metrics(run: Run | Path, key: str, metrics: Mapping[str, Any]) -> None:
    """Merge ``{key: metrics}`` into the run's ``metrics.json``."""
    path = (run.path if isinstance(run, Run) else Path(run)) / METRICS
    current = _read_json(path) if path.is_file() else {}
    current[key] = _jsonable(metrics)
    _write_json(path, current)


def write_predictions(
    run: Run | Path,
    scored: Scored,
    *,
    evaluated: np.ndarray | None = None,
    segments: Sequence[Sequence[Sequence[float]]] | None = None,
    slug: str,
) -> Path:
    """Write ``predictions/<slug>.csv`` (+ ``.frames.npz`` and ``.segments.json`` when given)."""
    base = (run.path if isinstance(run, Run) else Path(run)) / PREDICTIONS
    base.mkdir(parents=True, exist_ok=True)
    ids = scored.video_ids
    mask = np.ones(len(ids), dtype=bool) if evaluated is None else np.asarray(evaluated, bool)
    rows = [
        {
            "video_id": v,
            "label": int(y),
            "score": float(s),
            "probability": float(p),
            "evaluated": int(m),
        }
        for v, y, s, p, m in zip(
            ids, scored.labels, scored.scores, scored.probabilities, mask, strict=True
        )
    ]
    csv_path = base / f"{slug}.csv"
    _write_csv(csv_path, rows)
    if scored.frame_scores is not None:
        lengths = np.array([len(f) for f in scored.frame_scores], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [N + 1]
        flat = (
            np.concatenate(scored.frame_scores).astype(np.float32)
            if len(lengths)
            else np.zeros(0, dtype=np.float32)
        )  # [sum T]
        with _atomic(base / f"{slug}.frames.npz", "wb") as fh:
            np.savez(
                fh,
                video_ids=np.array(ids, dtype=str),
                offsets=offsets,
                scores=flat,
                frame_hz=np.float64(scored.frame_hz or 0.0),
            )
    if segments is not None:
        doc = {
            v: [[float(x) for x in seg] for seg in segs]
            for v, segs in zip(ids, segments, strict=True)
        }
        _write_json(base / f"{slug}.segments.json", doc)
    return csv_path


def read_predictions(run: Run | Path, slug: str) -> pd.DataFrame:
    """``predictions/<slug>.csv`` as a DataFrame."""
    import pandas as pd

    path = (run.path if isinstance(run, Run) else Path(run)) / PREDICTIONS / f"{slug}.csv"
    if not path.is_file():
        raise RunError(f"no predictions {path}")
    return pd.read_csv(path, dtype={"video_id": str})


def read_frame_scores(run: Run | Path, slug: str) -> dict[str, np.ndarray]:
    """Per-frame scores of ``predictions/<slug>.frames.npz`` by video id."""
    path = (run.path if isinstance(run, Run) else Path(run)) / PREDICTIONS / f"{slug}.frames.npz"
    if not path.is_file():
        raise RunError(f"no per-frame scores {path}")
    with np.load(path, allow_pickle=False) as data:
        ids, offsets, flat = data["video_ids"], data["offsets"], data["scores"]
        return {str(v): flat[offsets[i] : offsets[i + 1]] for i, v in enumerate(ids)}


# ------------------------------------------------------------------ helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path} is not valid JSON: {exc}") from exc


@contextlib.contextmanager
def _atomic(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path``; rename it into place only on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_json(path: Path, doc: Any) -> None:
    with _atomic(path, "w") as fh:
        json.dump(_jsonable(doc), fh, indent=2, sort_keys=False)
        fh.write("\n")


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fields = list(rows[0]) if rows else []
    with _atomic(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
