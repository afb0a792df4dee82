"""Layer-wise analysis with the training-free synchronisation score (paper Supp. E.4, Fig. 7).

The paper scores AV-HuBERT's audio-only and visual-only features taken from
the *same* transformer layer (layers 1-24, SpeechForensics' settings: mean
pool, shift 15) and plots AUC per layer. ``sweep_layers`` does that by
default: every layer stored for both encoders, paired by equal index
(``last`` with ``last``). Naming a layer for one side (``avhubert-v:last``)
instead holds that side fixed and sweeps every stored layer of the other.

Metrics count the videos of the evaluation filter ``fakes``
(``featstore.trainers.evaluation_filter``: ``paper``, the default, keeps reals and the
fakes with both modalities manipulated where known; ``all`` every fake), as
every command's ``--fakes`` does: the same filter gives the same numbers as
``syncscore`` (and ``eval`` of its run) on that layer pair.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.layout import Layer, layer_key
from featstore.trainers.data import FeatureKey, Selection, SelectionError
from featstore.trainers.evaluation_filter import PAPER, check_fakes
from featstore.trainers.metrics import binary_metrics
from featstore.trainers.pairs import select_pairs
from featstore.trainers.syncfree import SyncConfig

if TYPE_CHECKING:
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

CSV_NAME, JSON_NAME = "layers.csv", "layers.json"
PLOT_STEM = "layers"

__all__ = ["LayerResult", "LayerSweep", "layer_pairs", "layer_result", "sweep_layers"]


@dataclass(frozen=True)
class LayerResult:
    """Detection metrics of Eq. 3 on one (audio layer, visual layer) pair."""

    audio_layer: str
    visual_layer: str
    auc: float
    ap: float
    eer: float
    n: int
    n_real: int
    n_fake: int


@dataclass(frozen=True)
class LayerSweep:
    """Every layer pair's result, in layer order, and the files written."""

    selection: str
    audio_encoder: str
    visual_encoder: str
    swept: str  # "both" (equal layers), "audio" or "visual" (the other side fixed)
    config: SyncConfig
    results: tuple[LayerResult, ...]
    files: dict[str, Path] = field(default_factory=dict)
    fakes: str = PAPER  # the evaluation filter: "paper" or "all" (every fake counted)

    @property
    def best(self) -> LayerResult:
        return max(self.results, key=lambda r: r.auc)

    def labels(self) -> list[str]:
        """X tick labels: the swept layer of each result."""
        side = "visual_layer" if self.swept == "visual" else "audio_layer"
        return [getattr(r, side) for r in self.results]


def _split(text: str) -> tuple[str, str | None]:
    """``ENCODER[:LAYER]`` -> encoder and the layer text when one was given."""
    encoder, sep, layer = str(text).strip().partition(":")
    return encoder.strip(), (layer.strip() if sep else None)


def layer_pairs(
    store: FeatureStore, dataset: str, audio: str, visual: str
) -> tuple[str, list[tuple[Layer, Layer]]]:
    """What to sweep (``both`` / ``audio`` / ``visual``) and the ``(audio, visual)`` layer pairs.

    Bare encoders pair equal layers stored by both; ``ENCODER:LAYER`` on one
    side fixes it. Fixing both sides is a single score: use ``syncscore``.
    """
    (a_enc, a_layer), (v_enc, v_layer) = _split(audio), _split(visual)
    if a_layer is not None and v_layer is not None:
        raise SelectionError(
            "both layers are fixed: name a layer for at most one side (or use syncscore)"
        )
    if a_layer is not None:
        fixed = FeatureKey.parse(audio).layer
        return "visual", [(fixed, x) for x in store.layers(dataset, v_enc)]
    if v_layer is not None:
        fixed = FeatureKey.parse(visual).layer
        return "audio", [(x, fixed) for x in store.layers(dataset, a_enc)]
    visual_layers = {layer_key(x) for x in store.layers(dataset, v_enc)}
    pairs = [(x, x) for x in store.layers(dataset, a_enc) if layer_key(x) in visual_layers]
    if not pairs:
        raise SelectionError(
            f"{a_enc} and {v_enc} share no stored layer in {dataset}; fix one side's layer "
            f"(e.g. {v_enc}:last) to sweep the other"
        )
    return "both", pairs


def layer_result(
    store: FeatureStore,
    sel: Selection,
    audio: FeatureKey,
    visual: FeatureKey,
    *,
    config: SyncConfig,
    frame_hz: float | None = None,
    allow_missing: bool = False,
    fakes: str = PAPER,
) -> LayerResult:
    """Eq. 3's metrics on one (audio layer, visual layer) pair: one task of a sweep.

    A ``syncfree`` detector (``featstore.trainers.kinds.syncfree``) scores the videos
    the evaluation filter ``fakes`` counts, one video in memory at a time.
    """
    from featstore.trainers.kinds import syncfree

    detector = syncfree.detector(
        store, sel.dataset, audio, visual, config=config, frame_hz=frame_hz
    )
    rows = select_pairs(store, sel, audio, visual, fakes=fakes, allow_missing=allow_missing)
    scored = detector.score_selection(store, Selection.of_videos(sel.dataset, rows["video_id"]))
    m = binary_metrics(scored.labels, scored.scores)
    return LayerResult(
        audio_layer=layer_key(audio.layer),
        visual_layer=layer_key(visual.layer),
        auc=m.auc,
        ap=m.ap,
        eer=m.eer,
        n=m.n,
        n_real=m.n_real,
        n_fake=m.n_fake,
    )


def sweep_layers(
    store: FeatureStore,
    on: Selection | str,
    audio: str,
    visual: str,
    *,
    config: SyncConfig,
    out: str | os.PathLike[str] | None = None,
    allow_missing: bool = False,
    frame_hz: float | None = None,
    on_layer: Callable[[LayerResult], None] | None = None,
    fakes: str = PAPER,
    plot_format: str = "png",
    cluster: Any = None,
    n_workers: int = 2,
) -> LayerSweep:
    """Eq. 3's AUC / AP / EER for every layer pair; with ``out``, CSV, JSON and a Fig. 7
    plot (``layers.<plot_format>``: png, pdf or svg).

    Each layer pair is one task (:func:`layer_result`: a ``syncfree`` detector
    scoring the videos the evaluation filter ``fakes`` counts, one video in
    memory at a time), run here one after the other, or on Dask
    with ``cluster`` (``"local"``, ``"tcp://HOST:PORT"`` or a
    ``distributed.Client``), to the same results. With ``out`` each finished
    pair is kept in ``out/.partitions/`` until the files are written, so an
    interrupted sweep of the same store, selection and settings resumes where
    it stopped. ``on_layer`` hears each pair as it finishes (reused ones first).
    """
    from featstore.cluster import Tasks, check_cluster, connect
    from featstore.trainers.cluster import PARTITIONS, fingerprint

    fakes = check_fakes(fakes)
    if cluster is not None:
        check_cluster(cluster)
    sel = Selection.parse(on, default_split="test")
    swept, pairs = layer_pairs(store, sel.dataset, audio, visual)
    a_enc, v_enc = _split(audio)[0], _split(visual)[0]
    keys = [(FeatureKey(a_enc, a), FeatureKey(v_enc, v)) for a, v in pairs]
    results: dict[int, LayerResult] = {}
    folder = None
    if out is not None:
        digest = fingerprint(
            {
                "selection": str(sel),
                "pairs": [[str(a), str(v)] for a, v in keys],
                "config": config.to_dict(),
                "frame_hz": frame_hz,
                "allow_missing": allow_missing,
                "fakes": fakes,
                "commits": [store.snapshot(sel.dataset, e).token for e in (a_enc, v_enc)],
            }
        )
        base = Path(out) / PARTITIONS
        for stale in base.glob("layers-*"):
            if stale.name != f"layers-{digest}":
                shutil.rmtree(stale, ignore_errors=True)
        folder = base / f"layers-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (a, v) in enumerate(keys):
            path = folder / _pair_file(a, v)
            if path.is_file():
                results[i] = LayerResult(**json.loads(path.read_text()))
                if on_layer is not None:
                    on_layer(results[i])
    todo = [i for i in range(len(keys)) if i not in results]
    kwargs = {
        "config": config,
        "frame_hz": frame_hz,
        "allow_missing": allow_missing,
        "fakes": fakes,
    }
    with contextlib.ExitStack() as stack:
        client = None
        if cluster is not None and todo:
            client = stack.enter_context(connect(cluster, n_workers=n_workers))
        tasks = Tasks(client, prefix="featstore-layers")
        for i in todo:
            a, v = keys[i]
            tasks.submit(i, functools.partial(layer_result, **kwargs), store, sel, a, v)
        for i, result in tasks:
            log.info(
                "layers %s / %s: AUC %.4f", result.audio_layer, result.visual_layer, result.auc
            )
            if folder is not None:
                _write_json(folder / _pair_file(*keys[i]), asdict(result))
            if on_layer is not None:
                on_layer(result)
            results[i] = result
    sweep = LayerSweep(
        selection=str(sel),
        audio_encoder=a_enc,
        visual_encoder=v_enc,
        swept=swept,
        config=config,
        results=tuple(results[i] for i in range(len(keys))),
        fakes=fakes,
    )
    if out is None:
        return sweep
    written = replace(sweep, files=_write(sweep, Path(out), plot_format))
    shutil.rmtree(folder, ignore_errors=True)
    if not any((Path(out) / PARTITIONS).iterdir()):
        (Path(out) / PARTITIONS).rmdir()
    return written


def _pair_file(audio: FeatureKey, visual: FeatureKey) -> str:
    return f"{layer_key(audio.layer)}-{layer_key(visual.layer)}.json"


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _write(sweep: LayerSweep, out: Path, plot_format: str) -> dict[str, Path]:
    from featstore.trainers.figures import filter_text
    from featstore.trainers.plots import layers_png

    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in sweep.results]
    with (out / CSV_NAME).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    doc = {
        "selection": sweep.selection,
        "audio": sweep.audio_encoder,
        "visual": sweep.visual_encoder,
        "swept": sweep.swept,
        "shift": sweep.config.shift,
        "pool": sweep.config.pool,
        "padding": sweep.config.padding,
        "fakes": sweep.fakes,
        "best": asdict(sweep.best),
        "results": rows,
    }
    (out / JSON_NAME).write_text(json.dumps(doc, indent=2) + "\n")
    fixed = "" if sweep.swept == "both" else f"; the other side fixed at layer {_fixed(sweep)}"
    ns = sorted({(r.n, r.n_real, r.n_fake) for r in sweep.results})
    counts = "; ".join(f"n = {n} videos ({real} real / {fake} fake)" for n, real, fake in ns)
    share = [100 * r.n_fake / r.n for r in sweep.results if r.n]
    path = layers_png(
        out / f"{PLOT_STEM}.{plot_format}",
        layers=sweep.labels(),
        series={
            "AUC": [100 * r.auc for r in sweep.results],
            "AP": [100 * r.ap for r in sweep.results],
        },
        chance={"AUC": 50.0, **({"AP": share[0]} if len(set(share)) == 1 else {})},
        ylabel="%",
        title=f"{sweep.audio_encoder} vs {sweep.visual_encoder}: Eq. 3 per layer",
        caption=(
            f"AUC and AP (%) of Eq. 3 (shift {sweep.config.shift}, {sweep.config.pool} pool, "
            f"padding {sweep.config.padding}) per {_swept_text(sweep)} layer{fixed}, on "
            f"{sweep.selection}, {counts}, {filter_text(sweep.fakes)}. Star: best layer; "
            "dotted: chance."
        ),
    )
    return {"csv": out / CSV_NAME, "json": out / JSON_NAME, plot_format: path}


def _swept_text(sweep: LayerSweep) -> str:
    return {"both": "audio = visual", "audio": "audio", "visual": "visual"}[sweep.swept]


def _fixed(sweep: LayerSweep) -> str:
    first = sweep.results[0]
    return first.audio_layer if sweep.swept == "visual" else first.visual_layer
