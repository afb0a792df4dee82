"""The experiment grid: train on each dataset, test on every dataset (paper Tab. 2 / 4).

A TOML file says what to run:

```toml
store = "features.zarr"          # a path (relative to this file) or an fsspec URL
out = "grid-out"                 # relative to this file

[[datasets]]
name = "favc"                    # train = "train", val = "val", test = "test" by default
fakes = "paper"                  # the evaluation filter, or "all": count every fake
[[datasets]]
name = "av1m@av1m"               # NAME@VIEW: the splits of one view of the dataset
[[datasets]]
name = "avlips"
train = false                    # test-only (also when the store has no such split)
[[datasets]]
name = "dfe2024"
cross = false                    # its probe is tested in-domain only (paper Tab. 2 column G)

[[features]]
encoder = "wav2vec2"
layer = "last"                   # default "last"
label = "Wav2Vec2"               # optional row label

[probe]                          # optional: featstore.trainers.probe.ProbeConfig fields
max_epochs = 100
```

One probe per (feature, training dataset) goes to
``out/runs/<encoder>-<layer>/<dataset>``; each is evaluated on every
dataset's test split with that dataset's evaluation filter (``fakes``: ``paper``,
the default, or ``all``, as every command's ``--fakes``; ``run_grid``'s
``fakes`` overrides every dataset's), only on its own with ``cross = false``. Complete runs and their stored metrics are reused, so an
interrupted grid resumes where it stopped. Results go to ``out/results.csv``,
``out/grid.{md,csv,json}`` (a row per feature and training set) and the
paper's layout, ``out/grid_paper_auc.*`` (Tab. 2) and ``out/grid_paper_ap.*``
(Tab. 4), with column J as the paper averages it (``featstore.trainers.report``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.errors import FeatstoreError
from featstore.trainers.data import FeatureKey, Selection, has_split, select, split_hash
from featstore.trainers.evaluation_filter import FAKES, PAPER, FilterError, check_fakes
from featstore.trainers.metrics_file import find_metrics
from featstore.trainers.report import GridResult, grid_table, write_paper_grids
from featstore.trainers.runs import Run, is_complete, load_run

if TYPE_CHECKING:
    from featstore.store import FeatureStore
    from featstore.trainers.probe import EpochStats, ProbeConfig
    from featstore.trainers.report import GridTable

log = logging.getLogger(__name__)

__all__ = [
    "GridConfig",
    "GridConfigError",
    "GridDataset",
    "GridError",
    "GridEvent",
    "GridFeature",
    "GridOutcome",
    "load_config",
    "run_grid",
]

_TOP_KEYS = {"store", "out", "datasets", "features", "probe", "allow_missing"}
_DATASET_KEYS = {"name", "train", "val", "test", "fakes", "cross"}
_FEATURE_KEYS = {"encoder", "layer", "label"}
_RUNTIME = {"device", "cache_bytes"}  # probe settings that change speed, not the model


class GridError(FeatstoreError):
    """The grid cannot run as configured (e.g. a reused run disagrees with the config)."""


class GridConfigError(GridError, ValueError):
    """The grid's TOML file is malformed; the message names the key."""


@dataclass(frozen=True)
class GridDataset:
    """One dataset of the grid; ``train=None`` makes it test-only."""

    name: str
    train: str | None = "train"
    val: str | None = "val"
    test: str = "test"
    fakes: str = PAPER  # the evaluation filter: "paper" (the paper's) or "all" (every fake)
    cross: bool = True  # False: its probe is tested on itself only (the paper's DFE-2024)

    def selection(self, split: str) -> Selection:
        """``split`` of this dataset (``name`` may name a view: ``av1m@av1m-real``)."""
        return Selection.parse(f"{self.name}:{split}")


@dataclass(frozen=True)
class GridFeature:
    key: FeatureKey
    label: str

    @property
    def run_name(self) -> str:
        return self.key.slug


@dataclass(frozen=True)
class GridConfig:
    store: str
    out: Path
    datasets: tuple[GridDataset, ...]
    features: tuple[GridFeature, ...]
    probe: Mapping[str, Any] = field(default_factory=dict)
    allow_missing: bool = False

    def probe_config(self) -> ProbeConfig:
        import dataclasses

        from featstore.trainers.probe import ProbeConfig

        _unknown(self.probe, {f.name for f in dataclasses.fields(ProbeConfig)}, "probe.")
        try:
            return ProbeConfig(**self.probe)
        except (TypeError, ValueError) as exc:
            raise GridConfigError(f"[probe]: {exc}") from None


@dataclass(frozen=True)
class GridEvent:
    """Progress of a grid: ``kind`` is train | trained (on a cluster) | reuse | epoch |
    evaluate | result."""

    kind: str
    feature: str
    train: str
    test: str | None = None
    run_dir: Path | None = None
    epoch: EpochStats | None = None
    result: GridResult | None = None


@dataclass(frozen=True)
class GridOutcome:
    results: tuple[GridResult, ...]
    table: GridTable
    files: Mapping[str, Path]


# ------------------------------------------------------------------ config


def _str(value: Any, key: str, *, allow_false: bool = False) -> str | None:
    if allow_false and value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        extra = " or false" if allow_false else ""
        raise GridConfigError(f"{key} must be a non-empty string{extra}, got {value!r}")
    return value.strip()


def _fakes(value: Any, key: str) -> str:
    """A dataset's evaluation filter (``paper`` or ``all``; older files' ``filter`` = ``paper``)."""
    try:
        return check_fakes(_str(value, key) or "")
    except FilterError:
        raise GridConfigError(f"{key} must be one of {', '.join(FAKES)}, got {value!r}") from None


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise GridConfigError(
            f"unknown key {where}{extra[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _resolve(value: str, base: Path) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str(base / value)


def parse_config(doc: Mapping[str, Any], *, base_dir: Path = Path(".")) -> GridConfig:
    """Validate a parsed TOML document; relative paths are taken from ``base_dir``."""
    _unknown(doc, _TOP_KEYS, "")
    for key in ("store", "out", "datasets", "features"):
        if key not in doc:
            raise GridConfigError(f"missing key {key!r}")
    store = _resolve(_str(doc["store"], "store"), base_dir)
    out = Path(_resolve(_str(doc["out"], "out"), base_dir))
    raw_datasets = doc["datasets"]
    if not isinstance(raw_datasets, list) or not raw_datasets:
        raise GridConfigError("datasets must be a non-empty array of tables ([[datasets]])")
    datasets = []
    for i, item in enumerate(raw_datasets):
        where = f"datasets[{i}]"
        if not isinstance(item, dict):
            raise GridConfigError(f"{where} must be a table")
        _unknown(item, _DATASET_KEYS, f"{where}.")
        if "name" not in item:
            raise GridConfigError(f"missing key {where}.name")
        try:
            named = Selection.parse(_str(item["name"], f"{where}.name"))
        except FeatstoreError as exc:
            raise GridConfigError(f"{where}.name: {exc}") from None
        if named.split is not None:
            raise GridConfigError(f"{where}.name is NAME or NAME@VIEW, without a split")
        datasets.append(
            GridDataset(
                name=_str(item["name"], f"{where}.name"),
                train=_str(item.get("train", "train"), f"{where}.train", allow_false=True),
                val=_str(item.get("val", "val"), f"{where}.val", allow_false=True),
                test=_str(item.get("test", "test"), f"{where}.test"),
                fakes=_fakes(item.get("fakes", PAPER), f"{where}.fakes"),
                cross=item.get("cross", True),
            )
        )
        if not isinstance(datasets[-1].cross, bool):
            raise GridConfigError(
                f"{where}.cross must be true or false, got {datasets[-1].cross!r}"
            )
    names = [d.name for d in datasets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GridConfigError(f"datasets: {dupes[0]!r} is listed twice")
    raw_features = doc["features"]
    if not isinstance(raw_features, list) or not raw_features:
        raise GridConfigError("features must be a non-empty array of tables ([[features]])")
    features = []
    for i, item in enumerate(raw_features):
        where = f"features[{i}]"
        if not isinstance(item, dict):
            raise GridConfigError(f"{where} must be a table")
        _unknown(item, _FEATURE_KEYS, f"{where}.")
        if "encoder" not in item:
            raise GridConfigError(f"missing key {where}.encoder")
        layer = item.get("layer", "last")
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise GridConfigError(f"{where}.layer must be an index or a name, got {layer!r}")
        try:
            key = FeatureKey(_str(item["encoder"], f"{where}.encoder"), layer)
        except FeatstoreError as exc:
            raise GridConfigError(f"{where}: {exc}") from None
        label = _str(item.get("label", str(key)), f"{where}.label")
        features.append(GridFeature(key=key, label=label))
    labels = [f.label for f in features]
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise GridConfigError(f"features: {dupes[0]!r} is listed twice")
    probe = doc.get("probe", {})
    if not isinstance(probe, dict):
        raise GridConfigError("probe must be a table ([probe])")
    allow_missing = doc.get("allow_missing", False)
    if not isinstance(allow_missing, bool):
        raise GridConfigError(f"allow_missing must be true or false, got {allow_missing!r}")
    if not any(d.train for d in datasets):
        raise GridConfigError("datasets: no dataset has a train split; nothing to train")
    return GridConfig(
        store=store,
        out=out,
        datasets=tuple(datasets),
        features=tuple(features),
        probe=dict(probe),
        allow_missing=allow_missing,
    )


def load_config(path: str | os.PathLike[str]) -> GridConfig:
    """Read and validate a grid TOML file (also checks the ``[probe]`` hyperparameters)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GridConfigError(f"no grid config at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridConfigError(f"{path} is not valid TOML: {exc}") from None
    config = parse_config(doc, base_dir=path.resolve().parent)
    config.probe_config()
    return config


# --------------------------------------------------------------------- run


def _has_split(store: FeatureStore, dataset: GridDataset, split: str | None) -> bool:
    return split is not None and has_split(store, dataset.selection(split))


def _check_reused(
    run: Run, feature: GridFeature, train_hash: str, hyper: Mapping[str, Any]
) -> None:
    """A complete run found where the grid would train one must be that very probe."""
    from featstore.trainers.kinds import load
    from featstore.trainers.kinds.probe import ProbeDetector

    problems = []
    detector = load(run)
    if not isinstance(detector, ProbeDetector):
        raise GridError(
            f"run {run.path} is a {detector.kind} run, not a probe; remove it or choose "
            "another 'out'"
        )
    if detector.config.features.keys != (feature.key,):
        problems.append(f"features {detector.config.features.label}")
    if (run.config.get("train") or {}).get("split_hash") != train_hash:
        problems.append("training videos")
    recorded = detector.config.hyperparameters.to_dict()
    stored = {k: v for k, v in recorded.items() if k not in _RUNTIME}
    if stored != {k: v for k, v in hyper.items() if k not in _RUNTIME}:
        problems.append("hyperparameters")
    if problems:
        raise GridError(
            f"run {run.path} differs from the grid config ({', '.join(problems)}); "
            "remove it or choose another 'out'"
        )


def _older_protocol(metrics: Mapping[str, Any]) -> bool:
    """Stored metrics from before the temporal AUC followed the evaluation filter, or before
    AP/AR recorded their semantics and followed the filter: evaluate again rather than mix
    protocols in a table."""
    temporal, localization = metrics.get("temporal"), metrics.get("localization")
    return bool(temporal and "fakes" not in temporal) or bool(
        localization and ("semantics" not in localization or "fakes" not in localization)
    )


@dataclass
class _Cell:
    """One probe of the grid: a feature trained on a dataset, and its evaluations."""

    feature: GridFeature
    dataset: GridDataset
    run_dir: Path
    train_hash: str
    tests: list[tuple[GridDataset, Selection]]
    pending: dict[int, Any] = field(default_factory=dict)  # test index -> Evaluation
    waiting: set[int] = field(default_factory=set)
    metrics: dict[str, Any] = field(default_factory=dict)


def train_probe_files(
    store: FeatureStore,
    key: FeatureKey,
    train: Selection,
    val: Selection | None,
    config: ProbeConfig,
    allow_missing: bool,
) -> dict[str, bytes]:
    """A cluster task: train one probe in a scratch folder of the worker and return its
    files (``{relative path: bytes}``), which the client writes into the grid's ``out``."""
    from featstore.trainers.kinds import probe

    with tempfile.TemporaryDirectory(prefix="featstore-grid-") as tmp:
        run = probe.train(
            store,
            features=key,
            train=train,
            val=val,
            out=Path(tmp) / "run",
            config=config,
            overwrite=True,
            allow_missing=allow_missing,
        )
        return {
            p.relative_to(run.path).as_posix(): p.read_bytes()
            for p in sorted(run.path.rglob("*"))
            if p.is_file()
        }


def _write_run(run_dir: Path, files: Mapping[str, bytes]) -> Run:
    """A run directory from a task's files: an incomplete one there is replaced, config last."""
    from featstore.trainers.runs import CONFIG

    if run_dir.exists():
        shutil.rmtree(run_dir)
    for name in sorted(files, key=lambda n: n == CONFIG):
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(files[name])
        os.replace(tmp, path)
    return load_run(run_dir)


def run_grid(
    config: GridConfig,
    *,
    store: FeatureStore | None = None,
    on_event: Callable[[GridEvent], None] | None = None,
    fakes: str | None = None,
    cluster: Any = None,
    n_workers: int = 2,
) -> GridOutcome:
    """Train what is missing, evaluate what is not yet evaluated, write the tables.

    ``fakes`` (``paper`` or ``all``) is the evaluation filter of every test
    set; ``None`` keeps each dataset's own (``fakes`` in the TOML). Results
    under another filter are stored beside, never reused for this one.

    Every probe to train and every evaluation is a task, run here one after
    the other or, with ``cluster`` (``"local"``, ``"tcp://HOST:PORT"`` or a
    ``distributed.Client``), on Dask: a probe per task (trained in a scratch
    folder of the worker; the client writes the run under ``out``), then its
    evaluations, a (probe, test set) per task, recorded into the run in the
    order a local run records them. The files are the same either way.
    """
    from featstore import open_store
    from featstore.cluster import Tasks, check_cluster, connect
    from featstore.trainers.evaluate import evaluation, record
    from featstore.trainers.kinds import load

    fakes = None if fakes is None else check_fakes(fakes)  # before training: a typo fails at once
    if cluster is not None:
        check_cluster(cluster)
    store = store or open_store(config.store)
    probe_config = config.probe_config()
    hyper = probe_config.to_dict()
    emit = on_event or (lambda event: None)
    trains = [d for d in config.datasets if _has_split(store, d, d.train)]
    for d in config.datasets:
        if d.train and d not in trains:
            log.info("dataset %s has no %r split: test-only", d.name, d.train)
    tests = [(d, d.selection(d.test)) for d in config.datasets]
    test_hashes: dict[tuple[FeatureKey, Selection], str] = {}  # what a stored evaluation covered

    def test_hash(feature: GridFeature, test: Selection) -> str:
        if (feature.key, test) not in test_hashes:
            ids = select(store, test, feature.key, allow_missing=config.allow_missing)
            test_hashes[feature.key, test] = split_hash(ids["video_id"])
        return test_hashes[feature.key, test]

    cells: list[_Cell] = []
    for feature in config.features:
        for d in trains:
            train_rows = select(
                store, d.selection(d.train), feature.key, allow_missing=config.allow_missing
            )
            cell_tests = [(t, sel) for t, sel in tests if d.cross or t.name == d.name]
            run_dir = config.out / "runs" / feature.run_name / d.name
            cells.append(_Cell(feature, d, run_dir, split_hash(train_rows["video_id"]), cell_tests))

    with contextlib.ExitStack() as stack:
        client = (
            None if cluster is None else stack.enter_context(connect(cluster, n_workers=n_workers))
        )
        tasks = Tasks(client, prefix="featstore-grid")

        def evaluate_cell(i: int, run: Run) -> None:
            """Submit the cell's missing evaluations (reuse the stored, up to date ones)."""
            cell = cells[i]
            stored = run.metrics()
            for j, (tested, test) in enumerate(cell.tests):
                test_fakes = check_fakes(fakes or tested.fakes)
                metrics = find_metrics(stored, str(test), test_fakes)
                if (
                    metrics is None
                    or metrics.get("split_hash") != test_hash(cell.feature, test)
                    or _older_protocol(metrics)
                ):
                    label, name = cell.feature.label, cell.dataset.name
                    emit(GridEvent("evaluate", label, name, test=tested.name, run_dir=cell.run_dir))
                    cell.waiting.add(j)
                    tasks.submit(
                        ("evaluate", i, j),
                        functools.partial(
                            evaluation, allow_missing=config.allow_missing, fakes=test_fakes
                        ),
                        load(run),
                        store,
                        test,
                    )
            if not cell.waiting:
                cell.metrics = stored

        for i, cell in enumerate(cells):
            label, name = cell.feature.label, cell.dataset.name
            if is_complete(cell.run_dir) and not load_run(cell.run_dir).interrupted:
                run = load_run(cell.run_dir)
                _check_reused(run, cell.feature, cell.train_hash, hyper)
                emit(GridEvent("reuse", label, name, run_dir=cell.run_dir))
                evaluate_cell(i, run)
                continue
            train_sel = cell.dataset.selection(cell.dataset.train)
            val = cell.dataset.selection(cell.dataset.val)
            val = val if _has_split(store, cell.dataset, cell.dataset.val) else None
            args = (store, cell.feature.key, train_sel, val, probe_config, config.allow_missing)
            if client is None:
                tasks.submit(("train", i, None), _train_here, cell, emit, *args)
            else:
                emit(GridEvent("train", label, name, run_dir=cell.run_dir))
                tasks.submit(("train", i, None), train_probe_files, *args)

        for (what, i, j), result in tasks:
            cell = cells[i]
            if what == "train":
                run = result if isinstance(result, Run) else _write_run(cell.run_dir, result)
                if client is not None:
                    emit(GridEvent("trained", cell.feature.label, cell.dataset.name,
                                   run_dir=cell.run_dir))  # fmt: skip
                evaluate_cell(i, run)
                continue
            cell.pending[j] = result
            cell.waiting.discard(j)
            if not cell.waiting:  # every evaluation is in: record them in test order
                run = load_run(cell.run_dir)
                for k in sorted(cell.pending):
                    record(run, cell.pending[k])
                cell.pending.clear()
                cell.metrics = run.metrics()

    results: list[GridResult] = []
    rows: list[dict[str, Any]] = []
    for cell in cells:
        label = cell.feature.label
        for tested, test in cell.tests:
            test_fakes = check_fakes(fakes or tested.fakes)
            metrics = find_metrics(cell.metrics, str(test), test_fakes)
            if metrics is None:  # recorded just above: a store changing under the grid
                raise GridError(f"run {cell.run_dir} has no result on {test} ({test_fakes})")
            binary = metrics["binary"]
            result = GridResult(
                feature=label,
                train=cell.dataset.name,
                test=tested.name,
                auc=binary["auc"],
                ap=binary["ap"],
                n=int(binary["n"]),
                fakes=test_fakes,
                n_real=int(binary["n_real"]),
                n_fake=int(binary["n_fake"]),
            )
            results.append(result)
            temporal = metrics.get("temporal") or {}
            rows.append(
                {
                    "feature": label,
                    "encoder": cell.feature.key.encoder,
                    "layer": str(cell.feature.key.layer),
                    "train": cell.dataset.name,
                    "test": tested.name,
                    "test_split": test.split,
                    "auc": binary["auc"],
                    "ap": binary["ap"],
                    "eer": binary["eer"],
                    "n": binary["n"],
                    "n_real": binary["n_real"],
                    "n_fake": binary["n_fake"],
                    "fakes": test_fakes,
                    "temporal_auc": temporal.get("mean"),
                    "run_dir": str(cell.run_dir),
                }
            )
            emit(GridEvent("result", label, cell.dataset.name, test=tested.name, result=result))
    table = grid_table(
        results,
        features_order=[f.label for f in config.features],
        train_order=[d.name for d in trains],
        test_order=[d.name for d in config.datasets],
    )
    config.out.mkdir(parents=True, exist_ok=True)
    files = dict(table.write(config.out, stem="grid"))
    files.update(write_paper_grids(table, config.out, stem="grid"))
    results_path = config.out / "results.csv"
    with results_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    files["results"] = results_path
    return GridOutcome(results=tuple(results), table=table, files=files)


def _train_here(
    cell: _Cell,
    emit: Callable[[GridEvent], None],
    store: FeatureStore,
    key: FeatureKey,
    train: Selection,
    val: Selection | None,
    config: ProbeConfig,
    allow_missing: bool,
) -> Run:
    """Train one probe in this process, straight into its run directory (epochs reported)."""
    from featstore.trainers.kinds import probe

    label, name = cell.feature.label, cell.dataset.name
    emit(GridEvent("train", label, name, run_dir=cell.run_dir))

    def on_epoch(stats: EpochStats) -> None:
        emit(GridEvent("epoch", label, name, epoch=stats))

    return probe.train(
        store,
        features=key,
        train=train,
        val=val,
        out=cell.run_dir,
        config=config,
        on_epoch=on_epoch,
        overwrite=True,  # an incomplete run left by a crash
        allow_missing=allow_missing,
    )
