"""The front door: :func:`extract` (local or on a Dask cluster) and :func:`plan_extraction`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from featstore.extract.plan import (
    DEFAULT_BATCH_FRAMES,
    DEFAULT_NUM_WORKERS,
    ExtractError,
    ExtractPlan,
    ExtractTask,
    check_options,
    check_store_as,
    check_stored_info,
    check_stored_spec,
    compute_dtype,
    estimate_plan,
    freeze_options,
    pending_videos,
    select_videos,
    stored_info,
)
from featstore.extract.progress import ExtractSummary, ProgressCallback
from featstore.layout import Layer, normalize_layer

if TYPE_CHECKING:
    from featstore.decode_limits import DecodeLimits
    from featstore.encoders.base import Encoder
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

Layers = str | Sequence[Layer]


def extract(
    store: str | os.PathLike[str] | FeatureStore,
    *,
    dataset: str,
    encoder: str | Encoder,
    checkpoint: str | None = None,
    random_init: bool = False,
    layers: Layers = "last",
    dtype: str = "float16",
    device: str = "cpu",
    batch_frames: int = DEFAULT_BATCH_FRAMES,
    num_workers: int = DEFAULT_NUM_WORKERS,
    split: str | None = None,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
    cluster: Any = None,
    n_workers: int = 2,
    store_as: str | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    decode_limits: DecodeLimits | None = None,
) -> ExtractSummary:
    """Extract ``encoder``'s features of ``dataset``'s videos into the store.

    ``layers``: "last", "all", "0,6,12" or a list. ``dtype``: the stored dtype (on CUDA
    also the autocast compute dtype). ``batch_frames``: the padded 25 fps frames of one
    forward pass. ``num_workers``: decode threads. ``split``/``limit``: which manifest
    rows (the first ``limit`` of the split). Videos already committed for these layers
    are skipped, so re-running resumes. ``cluster``: None (this process), ``"local"``
    (a Dask LocalCluster of ``n_workers`` processes), a ``tcp://`` scheduler address or
    a ``distributed.Client``. ``store_as``: store the features under this encoder name
    (e.g. "clip-random" for a random-init baseline beside the trained "clip");
    resume looks there. ``encoder_options``: extra :func:`~featstore.encoders.load_encoder`
    options (e.g. ``{"trust_checkpoint": True}``), also on Dask workers.
    ``decode_limits``: the bounds on decoding each video (None:
    :data:`~featstore.decode_limits.EXTRACT_LIMITS`, 600 s, 3840x2160 pixels, 4 GiB of
    decoded arrays); a video past them fails alone, recorded in ``_failures``.

    >>> summary = extract("features.zarr", dataset="av1m", encoder="clip")  # doctest: +SKIP
    >>> summary.videos_done, summary.frames_per_s  # doctest: +SKIP
    (1200, 410.3)
    >>> extract("features.zarr", dataset="av1m", encoder="clip", random_init=True,
    ...         store_as="clip-random")  # doctest: +SKIP
    """
    from featstore.encoders.base import Encoder

    start = time.perf_counter()
    check_options(dtype=dtype, device=device, batch_frames=batch_frames, num_workers=num_workers)
    options = freeze_options(encoder_options)
    _check_instance(encoder, options)
    name = encoder.name if isinstance(encoder, Encoder) else encoder
    check_store_as(store_as, name)
    store_as = None if store_as == name else store_as
    store = _open(store)
    selected, _ = select_videos(store, dataset, split=split, limit=limit)
    common = {
        "store": store,
        "dataset": dataset,
        "dtype": dtype,
        "device": device,
        "batch_frames": batch_frames,
        "num_workers": num_workers,
        "limits": _limits(decode_limits),
    }
    if cluster is not None:
        if isinstance(encoder, Encoder):
            raise ExtractError(
                "a distributed run loads the encoder on each worker: pass its registered name"
            )
        from featstore.encoders import get_spec
        from featstore.extract.distributed import run_distributed

        enc_spec = get_spec(encoder)  # an unknown name fails here, not on every worker
        stored_name = store_as or encoder
        check_stored_spec(
            store, dataset, stored_name, enc_spec, dtype=dtype, random_init=random_init
        )
        spec = _layers_spec(layers)
        todo = selected
        if spec != "all":  # the client can skip finished videos without loading the model
            todo = pending_videos(store, dataset, stored_name, spec, selected)
        task = ExtractTask(
            encoder=encoder,
            checkpoint=checkpoint,
            random_init=random_init,
            layers=spec,
            videos=tuple(todo),
            store_as=store_as,
            options=options,
            **common,
        )
        summaries = run_distributed(
            task, cluster=cluster, n_workers=n_workers, on_progress=on_progress
        )
        merged = ExtractSummary.merge(summaries, seconds=time.perf_counter() - start)
        return dataclasses.replace(
            merged, videos_skipped=merged.videos_skipped + len(selected) - len(todo)
        )

    from featstore.extract.worker import run_task

    enc = _load(
        encoder, checkpoint, random_init=random_init, dtype=dtype, device=device, options=options
    )
    resolved = tuple(enc.resolve_layers(layers))
    info = stored_info(enc.info(dtype=dtype, layers=resolved), encoder=enc.name, store_as=store_as)
    check_stored_info(store, dataset, info)  # before resuming: see check_stored_info
    todo = pending_videos(store, dataset, info.name, resolved, selected)
    task = ExtractTask(
        encoder=enc.name,
        checkpoint=enc.checkpoint,
        random_init=enc.random_init,
        layers=resolved,
        videos=tuple(todo),
        store_as=store_as,
        options=options,
        **common,
    )
    summary = run_task(task, encoder=enc, on_progress=on_progress)
    return dataclasses.replace(
        summary,
        videos_skipped=summary.videos_skipped + len(selected) - len(todo),
        seconds=time.perf_counter() - start,
    )


def plan_extraction(
    store: str | os.PathLike[str] | FeatureStore,
    *,
    dataset: str,
    encoder: str | Encoder,
    checkpoint: str | None = None,
    random_init: bool = False,
    layers: Layers = "last",
    dtype: str = "float16",
    split: str | None = None,
    limit: int | None = None,
    store_as: str | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    decode_limits: DecodeLimits | None = None,
) -> ExtractPlan:
    """What :func:`extract` would do, without decoding or writing anything.

    A named encoder is loaded on the CPU to learn its layers' dims at this checkpoint.
    ``store_as``, ``encoder_options`` and ``decode_limits`` as in :func:`extract` (the
    plan warns about videos that last longer than ``decode_limits.max_duration_s``).
    """
    from featstore.encoders.base import Encoder

    check_options(dtype=dtype, device="cpu", batch_frames=1, num_workers=0)
    options = freeze_options(encoder_options)
    _check_instance(encoder, options)
    name = encoder.name if isinstance(encoder, Encoder) else encoder
    check_store_as(store_as, name)
    store = _open(store, mode="r")
    enc = _load(
        encoder, checkpoint, random_init=random_init, dtype=dtype, device="cpu", options=options
    )
    resolved = enc.resolve_layers(layers)
    return estimate_plan(
        store,
        dataset=dataset,
        encoder=enc,
        layers=resolved,
        dtype=dtype,
        split=split,
        limit=limit,
        store_as=None if store_as == name else store_as,
        limits=_limits(decode_limits),
    )


def _limits(limits: DecodeLimits | None) -> DecodeLimits:
    from featstore.decode_limits import EXTRACT_LIMITS, DecodeLimits

    if limits is None:
        return EXTRACT_LIMITS
    if not isinstance(limits, DecodeLimits):
        raise ExtractError(f"decode_limits must be a DecodeLimits, got {type(limits).__name__}")
    return limits


def _open(store: Any, mode: str = "a") -> FeatureStore:
    from featstore.store import FeatureStore, open_store

    if isinstance(store, FeatureStore):
        return store
    return open_store(store, mode=mode)


def _check_instance(encoder: str | Encoder, options: tuple[tuple[str, Any], ...]) -> None:
    if options and not isinstance(encoder, str):
        raise ExtractError(
            "encoder_options apply when extract() loads the encoder: pass its registered name"
        )


def _load(
    encoder: str | Encoder,
    checkpoint: str | None,
    *,
    random_init: bool,
    dtype: str,
    device: str,
    options: tuple[tuple[str, Any], ...] = (),
) -> Encoder:
    from featstore.encoders import load_encoder

    if not isinstance(encoder, str):
        return encoder
    return load_encoder(
        encoder,
        checkpoint,
        device=device,
        dtype=compute_dtype(dtype, device),
        random_init=random_init,
        **dict(options),
    )


def _layers_spec(layers: Layers) -> tuple[Layer, ...] | str:
    """Layers the client can name without the model: a tuple, or "all" (resolved on workers)."""
    if isinstance(layers, str):
        text = layers.strip()
        if text == "all":
            return "all"
        layers = [x.strip() for x in text.split(",") if x.strip()]
    out = tuple(dict.fromkeys(normalize_layer(x) for x in layers))
    if not out:
        raise ExtractError("no layers chosen")
    return out
