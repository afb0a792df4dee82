"""The encoder interface: a frozen spec, a loader, and ``encode`` from clips to per-layer rows.

An encoder turns decoded (and cropped) clips into per-video, per-layer ``[T, D]``
float32 arrays at its declared ``frame_hz``. It never touches the store: the
extraction worker (:mod:`featstore.extract`) decodes, crops, batches, calls
:meth:`Encoder.encode` and writes. Layer numbering follows Hugging Face
``hidden_states`` (DESIGN.md): 0 is the input to the first block, ``i`` the output
of block ``i``, ``"last"`` the model's final output as the paper uses it.

Torch is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore import timebase
from featstore.encoder_info import EncoderInfo
from featstore.encoders.random_init import SEED, InitScheme
from featstore.errors import FeatstoreError
from featstore.layout import Layer, format_layers, normalize_layer

if TYPE_CHECKING:
    import torch

    from featstore.spatial.base import SpatialExplainer

log = logging.getLogger(__name__)

MODALITIES = ("audio", "visual", "audiovisual")
CROPS = ("none", "mouth", "face")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


class EncoderError(FeatstoreError):
    """An encoder cannot be found, loaded or run as asked."""


class UnknownEncoderNameError(EncoderError, KeyError):
    """No encoder is registered under that name (a usage error: exit code 2)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(EncoderError):
    """A checkpoint is missing, not in the local cache, or does not fit the architecture."""


class ClipError(EncoderError):
    """A clip cannot be encoded (too short for the encoder's window, wrong input kind)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder declares before anything is loaded (DESIGN.md "Encoders")."""

    name: str
    family: str
    modality: str  # "audio" | "visual" | "audiovisual"
    crop: str  # "none" | "mouth" | "face": what the worker feeds as ``Clip.frames``
    frame_hz: float
    dim: int  # dim of layer "last" at the default checkpoint
    # transformer blocks at the default checkpoint: layers 0..n_layers and "last";
    # 0 for weight-free encoders, which have only "last"
    n_layers: int
    default_checkpoint: str | None  # None: weight-free
    description: str = ""
    preprocessing_version: str = "1"
    # the architecture's own initialisation (random_init=True; None: weight-free)
    init_scheme: InitScheme | None = None
    # loader options that change what a row means, recorded with the features under the
    # same name in ``EncoderInfo.extra`` (``info_extra``), so that the encoder that made
    # stored rows can be built again (``featstore.encoders.stored_options``)
    recorded_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: modality must be one of {MODALITIES}")
        if self.crop not in CROPS:
            raise ValueError(f"{self.name}: crop must be one of {CROPS}")

    @property
    def needs_audio(self) -> bool:
        return self.modality in ("audio", "audiovisual")

    @property
    def needs_video(self) -> bool:
        return self.modality in ("visual", "audiovisual")

    @property
    def has_weights(self) -> bool:
        return self.default_checkpoint is not None


@dataclass
class Clip:
    """One video's encoder inputs, as the worker's decode stage produces them.

    ``frames``: 25 fps uint8, ``[T, H, W, 3]`` RGB for crop "none" (full frames) and
    "face" (224x224 face crops), ``[T, 96, 96]`` grey mouth ROIs for crop "mouth".
    ``audio``: ``[S]`` float32 mono at 16 kHz. A modality the encoder does not need
    is ``None``.
    """

    video_id: str
    frames: np.ndarray | None = None
    audio: np.ndarray | None = None

    @property
    def duration_frames(self) -> int:
        """Length in 25 fps frames (the unit of ``--batch-frames``)."""
        if self.frames is not None:
            return int(self.frames.shape[0])
        if self.audio is not None:
            return timebase.samples_to_frames(int(self.audio.shape[0]))
        return 0


class Encoder(ABC):
    """A loaded encoder. Subclasses set ``layer_dims`` and implement ``encode``."""

    spec: EncoderSpec
    layer_dims: dict[Layer, int]  # every layer this checkpoint can produce
    checkpoint: str | None
    checkpoint_sha256: str | None
    random_init: bool
    random_init_scheme: InitScheme | None  # what random_init applied (None: not random)
    device: str
    compute_dtype: str

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        layer_dims: Mapping[Layer, int],
        checkpoint: str | None,
        checkpoint_sha256: str | None,
        random_init: bool,
        device: str,
        compute_dtype: str,
        random_init_scheme: InitScheme | None = None,
    ) -> None:
        self.spec = spec
        self.layer_dims = {normalize_layer(k): int(v) for k, v in layer_dims.items()}
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = checkpoint_sha256
        self.random_init = random_init
        self.random_init_scheme = random_init_scheme if random_init else None
        self.device = device
        self.compute_dtype = compute_dtype

    @property
    def name(self) -> str:
        return self.spec.name

    def resolve_layers(self, layers: str | Sequence[Layer]) -> list[Layer]:
        """``"last"``, ``"all"``, ``"0,6,12"`` or a list -> validated layer keys."""
        if isinstance(layers, str):
            text = layers.strip()
            if text == "all":
                return list(self.layer_dims)
            layers = [x.strip() for x in text.split(",") if x.strip()]
        out = []
        for raw in layers:
            key = normalize_layer(raw)
            if key not in self.layer_dims:
                raise EncoderError(
                    f"encoder {self.name} has no layer {raw!r}; layers: "
                    f"{format_layers(self.layer_dims)}"
                )
            if key not in out:
                out.append(key)
        if not out:
            raise EncoderError(f"no layers chosen for encoder {self.name}")
        return out

    def info(self, *, dtype: str = "float16", layers: Sequence[Layer] | None = None) -> EncoderInfo:
        """The :class:`EncoderInfo` the store records for these features."""
        chosen = list(self.layer_dims) if layers is None else list(layers)
        extra: dict[str, Any] = {"family": self.spec.family, **self.info_extra()}
        if self.random_init_scheme is not None:
            extra["random_init_scheme"] = self.random_init_scheme.name
            extra["random_init_seed"] = SEED
        return EncoderInfo(
            name=self.name,
            frame_hz=self.spec.frame_hz,
            layer_dims={k: self.layer_dims[k] for k in chosen},
            dtype=dtype,
            checkpoint=self.checkpoint,
            checkpoint_sha256=self.checkpoint_sha256,
            random_init=self.random_init,
            preprocessing_version=self.spec.preprocessing_version,
            modality=self.spec.modality,
            crop=self.spec.crop,
            extra=extra,
        )

    def info_extra(self) -> dict[str, Any]:
        """Family-specific facts the store records with the features (JSON values)."""
        return {}

    def n_rows(self, n_frames: int) -> int:
        """Rows this encoder outputs for a clip of ``n_frames`` 25 fps frames."""
        return int(n_frames * self.spec.frame_hz / timebase.FRAME_HZ)

    @abstractmethod
    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        """One dict ``{layer: [T, D] float32}`` per clip, in order. Padding-safe:
        the rows of a clip do not depend on the other clips in the batch."""

    def spatial(self, layer: Layer) -> SpatialExplainer:
        """The spatial explainer of ``layer`` (:mod:`featstore.spatial`); families that
        support one override this. Raises ``SpatialUnsupportedError`` otherwise."""
        from featstore.spatial.base import SpatialUnsupportedError

        raise SpatialUnsupportedError(
            f"encoder {self.name} has no spatial explanations (visual encoders only: "
            "clip, fsfm, videomae, mouth-pixels, avhubert-v/-av, autoavsr-vsr/-avsr)"
        )


Loader = Callable[..., Encoder]


# ----------------------------------------------------------------- helpers for families


def torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in COMPUTE_DTYPES:
        raise EncoderError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return getattr(torch, name)


def autocast(device: str, compute_dtype: str) -> Any:
    """Autocast to fp16/bf16 on CUDA; a no-op context elsewhere or for float32."""
    import contextlib

    import torch

    if device.startswith("cuda") and compute_dtype != "float32":
        return torch.autocast("cuda", dtype=torch_dtype(compute_dtype))
    return contextlib.nullcontext()


def resolve_checkpoint(checkpoint: str) -> Path:
    """A local directory/file, or a Hugging Face id resolved from the local cache only."""
    path = Path(os.path.expanduser(checkpoint))
    if path.exists():
        return path
    if checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1:
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(checkpoint, local_files_only=True))
    except Exception as exc:  # any hub failure means "not available offline"
        raise CheckpointError(
            f"checkpoint {checkpoint!r} is neither a local path nor in the Hugging Face cache "
            f"({type(exc).__name__}); download it once with `huggingface-cli download "
            f"{checkpoint}` on a machine with internet, or pass a local path"
        ) from None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def checkpoint_sha256(path: Path) -> str:
    """sha256 over the weight files of a checkpoint (sorted by name), streamed.

    Hashing a multi-gigabyte checkpoint takes tens of seconds, so digests are
    remembered in ``<cache>/featstore/checkpoint-sha256.json`` keyed by each file's
    resolved path, size and modification time (``$XDG_CACHE_HOME`` or ``~/.cache``;
    ``FEATSTORE_CACHE_DIR`` overrides): a changed file is hashed again.
    """
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    if not files:
        raise CheckpointError(f"no weight files under {path}")
    stats = [(f.resolve(), f.stat()) for f in files]
    key = json.dumps([[str(f), st.st_size, st.st_mtime_ns] for f, st in stats])
    key = hashlib.sha256(key.encode()).hexdigest()
    cache = sha256_cache_file()
    known = _read_sha256_cache(cache)
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(block)
    known[key] = digest.hexdigest()
    _write_sha256_cache(cache, known)
    return known[key]


def sha256_cache_file() -> Path:
    """Where checkpoint digests are remembered (``$FEATSTORE_CACHE_DIR``, else the user cache)."""
    root = os.environ.get("FEATSTORE_CACHE_DIR")
    if root:
        return Path(root) / "checkpoint-sha256.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "featstore" / "checkpoint-sha256.json"


def _read_sha256_cache(file: Path) -> dict[str, str]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):  # no cache yet, or a broken one: hash again
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_sha256_cache(file: Path, known: dict[str, str]) -> None:
    """Best effort (a read-only home must not stop an extraction); atomic replace."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
        os.replace(tmp, file)
    except OSError as exc:
        log.debug("could not cache checkpoint digests in %s: %s", file, exc)


def pad_batch(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``[T_i, ...]`` arrays into ``[B, T_max, ...]`` zero-padded, plus lengths ``[B]``."""
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    out = np.zeros((len(arrays), int(lengths.max()), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out, lengths
