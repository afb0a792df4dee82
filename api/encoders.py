"""The encoder that computes a run's stored features from new media, built as it was.

A run records, for every stored feature it reads (:class:`~featstore.trainers.inputs.StoredFeature`),
the registered encoder, checkpoint, random-init flag, preprocessing version and the
store's ``EncoderInfo.extra``: the loader options that change what a row means (FSFM's
``pooling``) and the random initialisation's scheme and seed. :func:`encoder_key` turns
that record into the loader call (:func:`featstore.encoders.stored_options`), and
:func:`check_rebuilt` compares the loaded encoder with the record the way the store
compares two writers (:meth:`~featstore.encoder_info.EncoderInfo.conflicts`): an upload
is scored only by the encoder that wrote the rows the run was trained on.

Runs written before ``extra`` was recorded fall back on the store the service opened
(the run's training dataset, when it holds the same features); where neither says, a
run whose features depend on such options (random weights, an encoder with recorded
options) is refused at start-up with the reason, never served with a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from featstore.encoders.base import CheckpointError, EncoderError
from featstore.errors import FeatstoreError
from featstore.layout import layer_key
from featstore.trainers.runs import RunError

if TYPE_CHECKING:
    from featstore.api.settings import Settings
    from featstore.encoders.base import Encoder
    from featstore.store import FeatureStore
    from featstore.trainers.inputs import StoredFeature
    from featstore.trainers.kinds import Detector

__all__ = ["EncoderKey", "check_rebuilt", "encoder_key", "training_feature"]


class EncoderKey(NamedTuple):
    """A loaded encoder: registered name, checkpoint, random_init and loader options."""

    name: str
    checkpoint: str | None
    random_init: bool
    options: tuple[tuple[str, Any], ...] = ()


def _training_datasets(detector: Detector) -> Iterator[str]:
    """The datasets a run (or each member of a fusion) was trained on."""
    config = detector.run.config if detector.run is not None else {}
    dataset = (config.get("train") or {}).get("dataset") if isinstance(config, Mapping) else None
    if dataset:
        yield str(dataset)
    for member in getattr(detector, "members", ()):
        yield from _training_datasets(member)


def training_feature(
    store: FeatureStore | None, detector: Detector, feature: StoredFeature
) -> StoredFeature | None:
    """``feature`` as ``store`` holds it in the run's training dataset, when it holds the
    same features (same width, rate, random init and checkpoint); else None."""
    from featstore.trainers.inputs import StoredFeature

    if store is None:
        return None
    for dataset in _training_datasets(detector):
        try:
            held = StoredFeature.of_store(store, dataset, feature.key)
        except FeatstoreError:
            continue  # trained on another store
        same = (
            (feature.dim is None or held.dim == feature.dim)
            and math.isclose(held.frame_hz, feature.frame_hz, rel_tol=1e-9)
            and held.random_init == feature.random_init
            and held.encoder_name == feature.encoder_name
            and not (
                feature.checkpoint_sha256
                and held.checkpoint_sha256
                and feature.checkpoint_sha256 != held.checkpoint_sha256
            )
        )
        if same:
            return held
    return None


def encoder_key(
    run: str,
    feature: StoredFeature,
    extra: Mapping[str, Any] | None,
    settings: Settings,
) -> EncoderKey:
    """The encoder to load for ``feature`` of ``run``: its checkpoint (or the one
    ``--checkpoint`` names) and the loader options ``extra`` (the stored
    ``EncoderInfo.extra``; None: unknown) records. Raises :class:`RunError` when the
    encoder cannot be built as it was."""
    from featstore.encoders import get_spec, stored_options

    name = feature.encoder_name
    checkpoint = settings.checkpoints.get(
        feature.encoder, settings.checkpoints.get(name, feature.checkpoint)
    )
    spec = get_spec(name)
    if extra is None:
        unknown = [*spec.recorded_options]
        if feature.random_init:
            unknown.append("random initialisation scheme")
        if unknown:
            raise RunError(
                f"run {run} reads {feature.key} features, and neither the run (trained before "
                f"featstore recorded them) nor this store (no training dataset holding those "
                f"features) records the {name} encoder's {', '.join(unknown)}, so the encoder "
                "that made them cannot be built again for uploads: serve it with the store it "
                "was trained on, or train it again"
            )
        return EncoderKey(name, checkpoint, bool(feature.random_init))
    try:
        options = stored_options(name, random_init=bool(feature.random_init), extra=extra)
    except EncoderError as exc:
        raise RunError(f"run {run} reads {feature.key} features: {exc}") from None
    return EncoderKey(name, checkpoint, bool(feature.random_init), tuple(sorted(options.items())))


def check_rebuilt(
    run: str,
    feature: StoredFeature,
    extra: Mapping[str, Any] | None,
    dtype: str,
    encoder: Encoder,
) -> None:
    """The loaded ``encoder`` computes ``feature`` as the run was trained on it: checkpoint,
    layer, width, rate, preprocessing, and whatever the store compares between writers
    (random init scheme and seed, pooling...). Raises :class:`CheckpointError` for another
    checkpoint, :class:`RunError` for anything else."""
    from featstore.encoder_info import EncoderInfo

    recorded, loaded = feature.checkpoint_sha256, encoder.checkpoint_sha256
    if recorded and loaded and recorded != loaded:
        raise CheckpointError(
            f"run {run} was trained on {feature.key} features of checkpoint sha256 "
            f"{recorded[:12]}..., but {encoder.checkpoint} has sha256 {loaded[:12]}...; "
            f"pass --checkpoint {feature.encoder_name}=PATH to the checkpoint it was "
            "trained with"
        )
    if feature.layer not in encoder.layer_dims:
        raise RunError(
            f"run {run} reads layer {layer_key(feature.layer)} that {encoder.name} lacks"
        )
    dim = encoder.layer_dims[feature.layer]
    if feature.dim is not None and dim != feature.dim:
        raise RunError(
            f"run {run} expects {feature.dim}-wide {feature.key} features; "
            f"{encoder.name} layer {layer_key(feature.layer)} gives {dim}"
        )
    if not math.isclose(encoder.spec.frame_hz, feature.frame_hz, rel_tol=1e-9):
        raise RunError(
            f"run {run} was trained on {feature.key} at {feature.frame_hz:g} Hz; "
            f"{encoder.name} gives {encoder.spec.frame_hz:g} Hz"
        )
    stored = EncoderInfo(
        name=feature.encoder,
        frame_hz=feature.frame_hz,
        layer_dims={feature.layer: dim},
        dtype=dtype,
        checkpoint=feature.checkpoint,
        checkpoint_sha256=feature.checkpoint_sha256,
        random_init=bool(feature.random_init),
        preprocessing_version=feature.preprocessing_version or encoder.spec.preprocessing_version,
        extra=dict(extra or {}),
    )
    problems = encoder.info(dtype=dtype, layers=[feature.layer]).conflicts(stored)
    if problems:
        raise RunError(
            f"run {run} was trained on {feature.key} features that the {encoder.name} encoder "
            f"loaded for uploads would not reproduce: {'; '.join(problems)} (given: the "
            "loaded encoder); serve it with a featstore that builds that encoder"
        )
