"""What ``GET /v1/models`` and ``GET /v1/datasets`` say about runs and datasets.

- :func:`evaluation_summaries`: each entry of a run's ``metrics.json`` (written by
  ``featstore eval``, ``fuse --out``, ``syncscore --out``: ``binary``, ``temporal`` and
  ``localization`` nested under the selection's key) as its headline numbers.
- :func:`dataset_info`: a stored dataset's videos, labels, official splits, views
  (the manifest's ``split.<VIEW>`` columns, :mod:`featstore.datasets.views`) and
  stored encoders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from featstore.api.models import DatasetEncoder, DatasetInfo, EvaluationSummary, ViewInfo
from featstore.layout import layer_key
from featstore.trainers.evaluation_filter import recorded_fakes

if TYPE_CHECKING:
    import pandas as pd

    from featstore.store import FeatureStore

__all__ = ["dataset_info", "evaluation_summaries"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = _number(value[0]), _number(value[1])
        if low is not None and high is not None:
            return low, high
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def evaluation_summaries(metrics: Mapping[str, Any]) -> dict[str, EvaluationSummary]:
    """``metrics.json`` as ``{key: summary}``: AUC, AP, EER (and their intervals) from each
    entry's ``binary``, the temporal AUC from ``temporal.mean``, AP/AR from
    ``localization``; entries that are not evaluations (not a mapping) are left out."""
    out: dict[str, EvaluationSummary] = {}
    for key, entry in metrics.items():
        if not isinstance(entry, Mapping):
            continue
        binary = entry.get("binary")
        binary = binary if isinstance(binary, Mapping) else {}
        temporal = entry.get("temporal")
        localization = entry.get("localization")
        numbers = (
            {
                str(k): v
                for k, v in ((k, _number(v)) for k, v in localization.items())
                if v is not None and k != "n_videos"
            }
            if isinstance(localization, Mapping)
            else {}
        )
        out[str(key)] = EvaluationSummary(
            selection=_text(entry.get("selection")) or str(key),
            view=_text(entry.get("view")),
            fakes=recorded_fakes(entry),
            n_scored=_count(entry.get("n_scored")),
            n_evaluated=_count(entry.get("n_evaluated", binary.get("n"))),
            n_real=_count(binary.get("n_real")),
            n_fake=_count(binary.get("n_fake")),
            auc=_number(binary.get("auc")),
            ap=_number(binary.get("ap")),
            eer=_number(binary.get("eer")),
            auc_ci=_interval(binary.get("auc_ci")),
            ap_ci=_interval(binary.get("ap_ci")),
            temporal_auc=(_number(temporal.get("mean")) if isinstance(temporal, Mapping) else None),
            localization=numbers or None,
            threshold=_number(entry.get("threshold")),
            split_hash=_text(entry.get("split_hash")),
        )
    return out


def _labels(manifest: pd.DataFrame, rows: Any = None) -> tuple[int, int]:
    if "label" not in manifest.columns:
        return 0, 0
    labels = manifest["label"] if rows is None else manifest["label"][rows]
    return int((labels == 0).sum()), int((labels == 1).sum())


def _views(manifest: pd.DataFrame) -> list[ViewInfo]:
    """Each view's splits, counted from its column (what selections will read)."""
    from featstore.datasets.views import DEFAULT_VIEW_ATTR, OUTSIDE, resolve_view, views_of

    default = manifest.attrs.get(DEFAULT_VIEW_ATTR)
    out = []
    for name, info in sorted(views_of(manifest.attrs).items()):
        splits = resolve_view(manifest, name).splits
        inside = (splits != OUTSIDE).to_numpy()
        n_real, n_fake = _labels(manifest, inside)
        seed = info.get("seed")
        out.append(
            ViewInfo(
                name=name,
                default=name == default,
                protocol=_text(info.get("protocol")),
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                n_videos=int(inside.sum()),
                n_real=n_real,
                n_fake=n_fake,
                splits={str(k): int(v) for k, v in splits[inside].value_counts().items()},
            )
        )
    return out


def dataset_info(store: FeatureStore, name: str) -> DatasetInfo:
    """What the store holds of dataset ``name``."""
    from featstore.datasets.views import DEFAULT_VIEW_ATTR

    manifest = store.manifest(name)
    splits = (
        {str(k): int(v) for k, v in manifest["split"].value_counts().items()}
        if "split" in manifest.columns
        else {}
    )
    encoders = []
    for enc in store.encoders(name):
        info = store.encoder_info(name, enc)
        layers = store.layers(name, enc)
        encoders.append(
            DatasetEncoder(
                name=enc,
                frame_hz=float(info.frame_hz),
                layers=[layer_key(x) for x in layers],
                checkpoint=info.checkpoint,
                n_videos=len(store.video_ids(name, enc, layers[0])) if layers else 0,
            )
        )
    n_real, n_fake = _labels(manifest)
    return DatasetInfo(
        name=name,
        n_videos=len(manifest),
        n_real=n_real,
        n_fake=n_fake,
        splits=splits,
        default_view=_text(manifest.attrs.get(DEFAULT_VIEW_ATTR)),
        views=_views(manifest),
        encoders=encoders,
    )
