"""Hugging Face loading shared by the wav2vec2, CLIP and VideoMAE families.

- :func:`load_model`: a checkpoint (local directory or Hugging Face id resolved
  offline by :func:`~featstore.encoders.base.resolve_checkpoint`) -> its config and
  weights through transformers' own ``from_pretrained``, in eval mode on the
  device, with the sha256 of its weight files. A random init (an
  :class:`~featstore.encoders.random_init.InitScheme`) builds the same
  architecture from the config alone, seeded: ``model_cls(config)``, whose
  ``post_init`` runs the model's own ``_init_weights`` (the family's native
  scheme, plus the family's ``fix_init`` where transformers' falls short), or
  the BERT-style scheme; a directory holding only ``config.json`` is enough for
  that, and when the family's default checkpoint is not in the local cache the
  family's built-in copy of the default architecture's config is used, so
  ``--random-init`` works with no download. Weights are read with
  ``weights_only=True`` and no remote code; a ``pytorch_model.bin`` that is not a
  plain ``torch.save`` file (e.g. TorchScript) is refused before transformers
  sees it.
- :class:`ImagePreprocess`: the image processors' resize / centre crop /
  rescale / normalise, run over a batch of frames, numerically equal to
  transformers' Pillow-based processors (``CLIPImageProcessorPil``,
  ``VideoMAEImageProcessorPil``) for uint8 RGB frames.

Weights are always held in float32; float16/bfloat16 compute on CUDA goes
through :func:`~featstore.encoders.base.autocast` (:func:`inference`).

Torch and transformers are imported inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featstore.encoders.base import (
    CheckpointError,
    ClipError,
    Encoder,
    EncoderError,
    EncoderSpec,
    autocast,
    checkpoint_sha256,
    resolve_checkpoint,
)
from featstore.encoders.random_init import BERT, InitScheme, bert_init_, seeded
from featstore.layout import LAST, Layer

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and where it came from."""

    model: Any  # torch.nn.Module, eval mode, float32 weights, on ``device``
    config: Any  # transformers.PretrainedConfig
    checkpoint: str  # as the user named it (recorded in the store)
    path: Path | None  # the resolved local directory; None: the built-in default config
    sha256: str | None  # of the weight files; None for random init
    device: str
    init_scheme: InitScheme | None = None  # the random init applied (None: trained weights)


class HFEncoder(Encoder):
    """An encoder around a loaded Hugging Face model: ``model`` plus where it came from.

    Families pass the width of the hidden states and, when it differs, of ``last``;
    layers ``0..num_hidden_layers`` and ``last`` are declared from the config.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        loaded: LoadedModel,
        *,
        hidden_dim: int,
        last_dim: int | None = None,
        compute_dtype: str,
        random_init: bool,
    ) -> None:
        layer_dims: dict[Layer, int] = {
            i: hidden_dim for i in range(int(loaded.config.num_hidden_layers) + 1)
        }
        layer_dims[LAST] = hidden_dim if last_dim is None else last_dim
        super().__init__(
            spec,
            layer_dims=layer_dims,
            checkpoint=loaded.checkpoint,
            checkpoint_sha256=loaded.sha256,
            random_init=random_init,
            device=loaded.device,
            compute_dtype=compute_dtype,
            random_init_scheme=loaded.init_scheme,
        )
        self.model = loaded.model


def check_options(spec: EncoderSpec, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Reject loader options this family does not know (a typo must not pass silently)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EncoderError(
            f"encoder {spec.name} does not take option(s) {', '.join(unknown)}; "
            f"options: {', '.join(allowed) or 'none'}"
        )


def positive_int_option(spec: EncoderSpec, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderError(
            f"encoder {spec.name}: option {name} must be an integer >= 1, got {value!r}"
        )
    return value


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA must be present."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EncoderError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available")
    return str(dev)


def has_weights(path: Path) -> bool:
    """True when a checkpoint directory holds weight files transformers can load."""
    return any((path / name).is_file() for name in (*WEIGHT_FILES, *WEIGHT_INDEXES))


def find_checkpoint(
    spec: EncoderSpec, checkpoint: str | None, *, random_init: bool, has_builtin: bool
) -> Path | None:
    """The checkpoint's local directory; None when random init falls back to the built-in config."""
    if not checkpoint:
        raise CheckpointError(
            f"encoder {spec.name} needs a checkpoint (a directory or a Hugging Face id)"
        )
    try:
        path = resolve_checkpoint(checkpoint)
    except CheckpointError:
        if random_init and has_builtin and checkpoint == spec.default_checkpoint:
            log.info(
                "%s not in the local cache: random init from the built-in %s config",
                checkpoint,
                spec.name,
            )
            return None
        raise
    if not path.is_dir():
        raise CheckpointError(
            f"encoder {spec.name} expects a Hugging Face checkpoint directory "
            f"(config.json + weights), got the file {path}"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    return path


def load_model(
    spec: EncoderSpec,
    checkpoint: str | None,
    *,
    model_cls: Any,
    read_config: Callable[[Path], Any],
    builtin_config: Callable[[], Any] | None,
    init_scheme: InitScheme | None,
    device: str,
    allow_missing: Sequence[str] = (),
    fix_init: Callable[[Any], None] | None = None,
) -> LoadedModel:
    """Load ``model_cls`` from a checkpoint through transformers' ``from_pretrained``.

    ``read_config(path)`` reads the checkpoint's config (e.g.
    ``Wav2Vec2Config.from_pretrained``). With an ``init_scheme`` (random init) the
    weights are never read: the model is built from the config with its own
    ``_init_weights`` and ``fix_init`` (the family's native scheme) or re-initialised
    BERT-style (:data:`~featstore.encoders.random_init.BERT`). Missing or mis-shaped weights raise
    :class:`CheckpointError` (weights named in ``allow_missing`` may be absent:
    they are not used for inference); extra weights (pre-training heads) are
    ignored.
    """
    import torch

    device = check_device(device)
    random_init = init_scheme is not None
    path = find_checkpoint(
        spec, checkpoint, random_init=random_init, has_builtin=builtin_config is not None
    )
    checkpoint = str(checkpoint)  # find_checkpoint rejected None
    if path is not None:
        try:
            config = read_config(path)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"cannot read the config of {checkpoint} ({path}): {exc}"
            ) from None
    elif builtin_config is not None:
        config = builtin_config()
    else:  # find_checkpoint returns None only when there is a built-in config
        raise CheckpointError(f"checkpoint {checkpoint} not found")
    sha256 = None
    if init_scheme is not None:
        model = random_model(model_cls, config, init_scheme, fix_init=fix_init)
    else:
        assert path is not None  # find_checkpoint returns None only for a random init
        if not has_weights(path):
            raise CheckpointError(
                f"checkpoint {checkpoint} ({path}) has no weights ({' or '.join(WEIGHT_FILES)}); "
                "pass random_init=True (--random-init) to use its architecture with random weights"
            )
        check_pickled_weights(path, checkpoint)
        try:
            # quiet: transformers logs a table of every unused weight (e.g. CLIP's text
            # tower); what matters (missing or mis-shaped weights) is checked below
            with quiet_transformers():
                model, info = model_cls.from_pretrained(
                    path,
                    config=config,
                    dtype=torch.float32,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,
                    weights_only=True,  # a pytorch_model.bin is unpickled without code
                    trust_remote_code=False,
                )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"cannot load the weights of {checkpoint} ({path}): {exc}"
            ) from None
        missing = [
            k for k in info.get("missing_keys", ()) if not any(a in k for a in allow_missing)
        ]
        mismatched = list(info.get("mismatched_keys", ()))
        if missing or mismatched:
            bad = [str(k) for k in [*missing, *mismatched]]
            detail = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit {model_cls.__name__}: "
                f"{len(missing)} missing and {len(mismatched)} mis-shaped weights ({detail})"
            )
        sha256 = checkpoint_sha256(path)
    model = model.float().eval().to(device)
    return LoadedModel(
        model=model,
        config=config,
        checkpoint=checkpoint,
        path=path,
        sha256=sha256,
        device=device,
        init_scheme=init_scheme,
    )


def random_model(
    model_cls: Any,
    config: Any,
    scheme: InitScheme,
    *,
    fix_init: Callable[[Any], None] | None = None,
) -> Any:
    """``model_cls(config)`` with random weights, seeded (identical on every worker).

    transformers' ``PreTrainedModel.post_init`` runs the model's own ``_init_weights``
    on every module (checked in the tests: it does in transformers 5); ``fix_init``
    then applies what that leaves undone. With :data:`BERT` the result is re-initialised
    BERT-style instead.
    """
    with seeded():
        model = model_cls(config)
        if scheme is BERT:
            bert_init_(model)
        elif fix_init is not None:
            fix_init(model)
    return model


def check_pickled_weights(path: Path, checkpoint: str) -> None:
    """Refuse pickled weight files transformers would load that are not plain ``torch.save``
    files (TorchScript, legacy tar, anything else), before ``from_pretrained`` opens them.

    transformers prefers ``model.safetensors``; when it is absent it ``torch.load``s
    ``pytorch_model.bin`` (or the shards its index names) with ``weights_only=True``.
    """
    from featstore.encoders import checkpoint_format as formats

    if any((path / name).is_file() for name in ("model.safetensors", WEIGHT_INDEXES[0])):
        return
    files = [path / WEIGHT_FILES[1]]
    index = path / WEIGHT_INDEXES[1]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from None
        files = [path / str(name) for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            continue  # transformers reports what is missing
        kind = formats.inspect_checkpoint(file)
        if kind.kind not in formats.RESTRICTED:
            raise CheckpointError(
                f"checkpoint {checkpoint}: {file.name} is {kind.detail}, not a torch.save "
                "weights file; featstore refuses it (loading it could run code). Use the "
                "checkpoint's model.safetensors"
            )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars for the duration (library code
    must not print; the CLI renders progress)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def inference(device: str, compute_dtype: str) -> Iterator[None]:
    """``torch.inference_mode`` plus fp16/bf16 autocast on CUDA."""
    import torch

    with torch.inference_mode(), autocast(device, compute_dtype):
        yield


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any float dtype, any device) -> float32 numpy."""
    return x.detach().float().cpu().numpy()


# ----------------------------------------------------------------- image preprocessing


@dataclass(frozen=True)
class ImagePreprocess:
    """An image processor's settings, applied to uint8 frames the way its Pillow backend does.

    Resize (Pillow, uint8 in and out), centre crop (zero padding when the crop is
    larger), rescale in float64 then float32, normalise in float32: the same
    operations in the same order and precision as transformers'
    ``PilBackend``, vectorised over frames after the per-frame resize.
    """

    shortest_edge: int | None  # resize so the shorter side is this (aspect kept)
    resize_hw: tuple[int, int] | None  # or resize to exactly this
    resample: int  # PIL resampling filter (3 = bicubic, 2 = bilinear)
    crop_hw: tuple[int, int] | None
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, processor: Any) -> ImagePreprocess:
        """Read the settings of a transformers image processor instance."""
        size = processor.size if processor.do_resize else None
        shortest = resize_hw = None
        if size is not None:
            if size.shortest_edge and not size.longest_edge:
                shortest = int(size.shortest_edge)
            elif size.height and size.width:
                resize_hw = (int(size.height), int(size.width))
            else:
                raise CheckpointError(f"unsupported image processor size {size!r}")
        crop = processor.crop_size if processor.do_center_crop else None
        norm = processor.do_normalize
        return cls(
            shortest_edge=shortest,
            resize_hw=resize_hw,
            resample=int(processor.resample),
            crop_hw=(int(crop.height), int(crop.width)) if crop is not None else None,
            rescale_factor=float(processor.rescale_factor) if processor.do_rescale else None,
            mean=tuple(float(m) for m in processor.image_mean) if norm else None,
            std=tuple(float(s) for s in processor.image_std) if norm else None,
        )

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Size of the processed image for a ``height x width`` input."""
        if self.crop_hw is not None:
            return self.crop_hw
        return self.resized_hw(height, width)

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_hw is not None:
            return self.resize_hw
        if self.shortest_edge is None:
            return height, width
        # transformers' get_resize_output_image_size (default_to_square=False): the long
        # side is int(size * long / short), truncated
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, frames: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """``[T, H, W, 3]`` uint8 RGB -> ``[T, 3, h, w]`` float32 model input."""
        from PIL import Image

        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ClipError(
                f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
            )
        t, h, w, _ = frames.shape
        rh, rw = self.resized_hw(h, w)
        if (rh, rw) != (h, w):

            def resize(frame: np.ndarray) -> np.ndarray:
                image = Image.fromarray(frame).resize((rw, rh), resample=self.resample)
                return np.asarray(image)  # [rh, rw, 3] uint8

            if threads > 1 and t > 1:  # Pillow releases the GIL while resizing
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    frames = np.stack(list(pool.map(resize, frames)))
            else:
                frames = np.stack([resize(f) for f in frames])  # [T, rh, rw, 3]
        if self.crop_hw is not None:
            frames = center_crop(frames, self.crop_hw)  # [T, ch, cw, 3]
        # Rescale and normalise map each uint8 value of each channel to one float32, so a
        # 256-entry table per channel gives bit-for-bit the processor's arithmetic at the
        # cost of one gather per element (instead of float64 passes over every pixel).
        lut = self.value_table  # [3, 256] float32
        t, h, w, _ = frames.shape
        out = np.empty((t, 3, h, w), dtype=np.float32)  # [T, 3, h, w]
        for c in range(3):
            np.take(lut[c], frames[..., c], out=out[:, c])
        return out

    @functools.cached_property
    def value_table(self) -> np.ndarray:
        """``[3, 256]`` float32: each channel's model input for each uint8 value, computed
        in the processor's order and precision (rescale in float64, cast to float32,
        normalise in float32)."""
        values = np.arange(256, dtype=np.uint8)
        if self.rescale_factor is not None:
            x = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = values.astype(np.float32)
        x = np.broadcast_to(x, (3, 256))  # [3, 256]
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, np.float32)[:, None]
            std = np.asarray(self.std, np.float32)[:, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)


def center_crop(frames: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """Centre crop ``[T, H, W, C]`` as transformers does, zero-padding a too-small image."""
    _, h, w, _ = frames.shape
    ch, cw = crop_hw
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return frames[:, top : top + ch, left : left + cw]
    new_h, new_w = max(ch, h), max(cw, w)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded = np.zeros((frames.shape[0], new_h, new_w, frames.shape[3]), frames.dtype)
    padded[:, pad_top : pad_top + h, pad_left : pad_left + w] = frames
    top, left = top + pad_top, left + pad_left
    return padded[:, top : top + ch, left : left + cw]


def load_image_preprocess(
    path: Path | None, processor_cls: Any, defaults: Mapping[str, Any]
) -> ImagePreprocess:
    """The checkpoint's ``preprocessor_config.json`` if it has one, else ``defaults``
    (the default checkpoint's settings) on ``processor_cls``."""
    if path is not None and (path / PREPROCESSOR_CONFIG).is_file():
        try:
            processor = processor_cls.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read {path / PREPROCESSOR_CONFIG}: {exc}") from None
    else:
        processor = processor_cls(**defaults)
    return ImagePreprocess.from_processor(processor)


def read_preprocessor_config(path: Path | None) -> dict[str, Any] | None:
    """``preprocessor_config.json`` of a checkpoint as a dict, or None when absent."""
    if path is None or not (path / PREPROCESSOR_CONFIG).is_file():
        return None
    try:
        return json.loads((path / PREPROCESSOR_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path / PREPROCESSOR_CONFIG}: {exc}") from None


def batch_spans(counts: Sequence[int], per_batch: int) -> Iterator[list[tuple[int, int, int]]]:
    """Split items of several clips (frames, windows) into batches of at most ``per_batch``.

    Yields lists of ``(clip index, start, stop)``; a clip may span batches.

    >>> list(batch_spans([3, 2], 4))
    [[(0, 0, 3), (1, 0, 1)], [(1, 1, 2)]]
    """
    batch: list[tuple[int, int, int]] = []
    room = per_batch
    for i, count in enumerate(counts):
        start = 0
        while start < count:
            stop = min(count, start + room)
            batch.append((i, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield batch
                batch, room = [], per_batch
    if batch:
        yield batch


def default_threads() -> int:
    """Threads for per-frame image resizing: up to 4, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))
