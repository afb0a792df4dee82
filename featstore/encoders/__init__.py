"""Encoder registry: one module per family, registered by name (DESIGN.md "Encoders").

Family modules declare an :class:`EncoderSpec` and a loader without importing torch;
the loader imports torch/transformers when called.

>>> from featstore.encoders import load_encoder, specs
>>> sorted(specs())[:2]  # doctest: +SKIP
['clip', 'logfbank']
>>> enc = load_encoder("wav2vec2", checkpoint="path/to/xls-r", device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from featstore.encoders.base import (
    COMPUTE_DTYPES,
    CheckpointError,
    Clip,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
    Loader,
    UnknownEncoderNameError,
)

__all__ = [
    "COMPUTE_DTYPES",
    "CheckpointError",
    "Clip",
    "ClipError",
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "UnknownEncoderNameError",
    "get_spec",
    "load_encoder",
    "register",
    "specs",
    "stored_options",
]

# Family modules, imported on first use of the registry (each is torch-free at import).
FAMILIES = (
    "featstore.encoders.wav2vec2",
    "featstore.encoders.clip",
    "featstore.encoders.videomae",
    "featstore.encoders.baselines",
    "featstore.encoders.avhubert",
    "featstore.encoders.autoavsr",
    "featstore.encoders.fsfm",
)

_REGISTRY: dict[str, tuple[EncoderSpec, Loader]] = {}
_loaded = False


def register(spec: EncoderSpec, loader: Loader) -> None:
    """Register an encoder under ``spec.name`` (re-registering the same name replaces it)."""
    _REGISTRY[spec.name] = (spec, loader)


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    for module in FAMILIES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    _loaded = True


def specs() -> dict[str, EncoderSpec]:
    """Every registered encoder's spec, by name."""
    _load_families()
    return {name: spec for name, (spec, _) in sorted(_REGISTRY.items())}


def get_spec(name: str) -> EncoderSpec:
    _load_families()
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownEncoderNameError(
            f"unknown encoder {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def load_encoder(
    name: str,
    checkpoint: str | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    random_init: bool = False,
    **options: Any,
) -> Encoder:
    """Load a registered encoder.

    ``checkpoint``: a local path or a Hugging Face id in the local cache (default:
    the spec's default checkpoint). ``dtype``: the compute dtype (float16/bfloat16
    use autocast on CUDA). ``random_init``: the checkpoint's architecture with
    BERT-style random weights (the paper's random baselines).
    """
    spec = get_spec(name)
    if dtype not in COMPUTE_DTYPES:
        raise EncoderError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    loader = _REGISTRY[name][1]
    return loader(
        spec,
        checkpoint if checkpoint is not None else spec.default_checkpoint,
        device=device,
        dtype=dtype,
        random_init=random_init,
        **options,
    )


def stored_options(name: str, *, random_init: bool, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Loader options that build again the encoder which wrote stored features.

    ``extra``: the stored ``EncoderInfo.extra``. The spec's ``recorded_options`` (e.g.
    FSFM's ``pooling``) are taken from it where recorded (else the loader's default
    applies, as it did when they were written), and the random initialisation scheme
    through :func:`~featstore.encoders.random_init.rebuild_options`. Raises
    :class:`EncoderError` when this featstore cannot build that encoder again.

    >>> stored_options("fsfm", random_init=False, extra={"pooling": "cls"})  # doctest: +SKIP
    {'pooling': 'cls'}
    """
    from featstore.encoders.random_init import rebuild_options

    spec = get_spec(name)
    options = {k: extra[k] for k in spec.recorded_options if k in extra}
    options.update(rebuild_options(spec, random_init=random_init, extra=extra))
    return options
