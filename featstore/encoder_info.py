"""What an encoder declares about the features it writes (stored as group attrs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from featstore import __version__, layout
from featstore.errors import StoreError, UnknownLayerError
from featstore.layout import Layer, format_layers, layer_key, normalize_layer

DTYPES = ("float16", "float32")
_IDENTITY_EXTRAS = ("pooling", "fsfm_layout")


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder declares about the features it writes (stored as group attrs)."""

    name: str
    frame_hz: float
    layer_dims: Mapping[Layer, int]
    dtype: str = "float16"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    random_init: bool = False
    preprocessing_version: str = "1"
    modality: str | None = None
    crop: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layout.check_name("encoder", self.name)
        if self.dtype not in DTYPES:
            raise StoreError(
                f"encoder {self.name}: dtype must be one of {DTYPES}, got {self.dtype!r}"
            )
        if not (self.frame_hz > 0):
            raise StoreError(f"encoder {self.name}: frame_hz must be > 0, got {self.frame_hz}")
        if not self.layer_dims:
            raise StoreError(f"encoder {self.name}: no layers declared")
        dims = {normalize_layer(k): int(v) for k, v in self.layer_dims.items()}
        if any(d <= 0 for d in dims.values()):
            raise StoreError(f"encoder {self.name}: layer dims must be positive: {dims}")
        object.__setattr__(self, "layer_dims", dims)

    def dim(self, layer: Layer) -> int:
        try:
            return self.layer_dims[normalize_layer(layer)]
        except KeyError:
            raise UnknownLayerError(
                f"encoder {self.name} has no layer {layer!r}; layers: {format_layers(self.layer_dims)}"
            ) from None

    def to_attrs(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layer_dims"] = {layer_key(k): v for k, v in self.layer_dims.items()}
        out["extra"] = dict(self.extra)
        out["package_version"] = __version__
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> EncoderInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    def conflicts(self, other: EncoderInfo) -> list[str]:
        """Differences that make two writers' features incomparable."""
        out = []
        for name in ("frame_hz", "dtype", "random_init", "preprocessing_version"):
            if getattr(self, name) != getattr(other, name):
                out.append(
                    f"{name}: {getattr(other, name)!r} stored, {getattr(self, name)!r} given"
                )
        if (
            self.checkpoint_sha256
            and other.checkpoint_sha256
            and self.checkpoint_sha256 != other.checkpoint_sha256
        ):
            out.append(
                f"checkpoint_sha256: {other.checkpoint_sha256} stored, {self.checkpoint_sha256} given"
            )
        if self.random_init and other.random_init:
            # Random features of two initialisation schemes (or seeds) are different models;
            # features stored before schemes were recorded were made with the BERT-style one.
            for key, missing in (("random_init_scheme", "bert"), ("random_init_seed", None)):
                mine, theirs = self.extra.get(key, missing), other.extra.get(key, missing)
                if mine is not None and theirs is not None and mine != theirs:
                    out.append(f"{key}: {theirs!r} stored, {mine!r} given")
        for key in _IDENTITY_EXTRAS:  # options that change what a row means, when both record them
            if key in self.extra and key in other.extra and self.extra[key] != other.extra[key]:
                out.append(f"{key}: {other.extra[key]!r} stored, {self.extra[key]!r} given")
        for layer in set(self.layer_dims) & set(other.layer_dims):
            if self.layer_dims[layer] != other.layer_dims[layer]:
                out.append(
                    f"dim of layer {layer}: {other.layer_dims[layer]} stored, "
                    f"{self.layer_dims[layer]} given"
                )
        return out
