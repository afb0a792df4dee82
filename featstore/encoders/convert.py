"""Converting pickled checkpoints into safe, fast ``model.safetensors`` + ``config.json`` dirs.

Original AV-HuBERT, Auto-AVSR and FSFM checkpoints are pickles (see
:mod:`featstore.encoders.checkpoints`). ``featstore encoders convert NAME --checkpoint
PATH --out DIR`` loads one once and writes a directory that later loads never
unpickle:

```
DIR/model.safetensors   the encoder's weights, float32, the family's own key names
DIR/config.json         {"featstore": {format, version, family, encoder, source,
                          source_sha256, featstore_version, extra}, "config": {...}}
```

The protocol. A family registers ``to_converted(encoder) -> (state_dict, config)``
with :func:`register_converter` (at import, without importing torch); its loader
accepts a converted directory (:func:`is_converted`, :func:`read_converted`) as well
as the original file, and the converted directory must give identical rows.

>>> convert_encoder("avhubert-av", "self_large_vox_433h.pt", "avh-large")  # doctest: +SKIP
PosixPath('avh-large')
>>> load_encoder("avhubert-av", "avh-large")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.encoders.base import CheckpointError, Encoder, EncoderError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "WEIGHTS_FILE",
    "Converted",
    "convert_encoder",
    "is_converted",
    "read_converted",
    "register_converter",
    "write_converted",
]

FORMAT = "featstore-converted"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

ToConverted = Callable[[Encoder], "tuple[dict[str, torch.Tensor], dict[str, Any]]"]
_CONVERTERS: dict[str, ToConverted] = {}


def register_converter(family: str, to_converted: ToConverted) -> None:
    """Declare that encoders of ``family`` can be converted with ``to_converted``."""
    _CONVERTERS[family] = to_converted


@dataclass(frozen=True)
class Converted:
    """A converted checkpoint as read back: weights, the family's config, featstore metadata."""

    path: Path
    family: str
    encoder: str
    config: dict[str, Any]
    source: str
    source_sha256: str | None
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def is_converted(path: str | Path) -> bool:
    """True when ``path`` is a directory written by :func:`write_converted`."""
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()):
        return False
    try:
        meta = json.loads((p / CONFIG_FILE).read_text()).get("featstore", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def write_converted(
    out: str | Path,
    *,
    family: str,
    encoder: str,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    source: str,
    source_sha256: str | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (float tensors as float32) and ``config.json`` into ``out``."""
    import torch
    from safetensors.torch import save_file

    from featstore import __version__

    directory = Path(out)
    occupied = directory.exists() and (not directory.is_dir() or any(directory.iterdir()))
    if occupied and not is_converted(directory):  # overwriting an earlier conversion is fine
        raise EncoderError(f"--out {directory} exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu().clone()
        for k, v in state_dict.items()
    }
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise EncoderError("to_converted must return tensors only")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": family,
        "encoder": encoder,
        "source": source,
        "source_sha256": source_sha256,
        "featstore_version": __version__,
        "extra": dict(extra or {}),
    }
    # weights first, config last: a directory without config.json is not a converted checkpoint
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    text = json.dumps({"featstore": meta, "config": dict(config)}, indent=2, sort_keys=True)
    (directory / CONFIG_FILE).write_text(text + "\n")
    return directory


def read_converted(path: str | Path, *, family: str) -> Converted:
    """Read a converted directory of ``family``; :class:`CheckpointError` if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    if not is_converted(directory):
        raise CheckpointError(
            f"{directory} is not a converted checkpoint (no {WEIGHTS_FILE} + {CONFIG_FILE} "
            f"written by `featstore encoders convert`)"
        )
    doc = json.loads((directory / CONFIG_FILE).read_text())
    meta, config = doc["featstore"], doc.get("config")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{directory}: converted format version {meta.get('version')}, expected {VERSION}"
        )
    if meta.get("family") != family:
        raise CheckpointError(
            f"{directory} holds a converted {meta.get('family')!r} checkpoint, not {family!r}"
        )
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory}/{CONFIG_FILE} has no 'config' object")
    try:
        state_dict = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from None
    return Converted(
        path=directory,
        family=family,
        encoder=str(meta.get("encoder", "")),
        config=config,
        source=str(meta.get("source", "")),
        source_sha256=meta.get("source_sha256"),
        state_dict=state_dict,
        extra=dict(meta.get("extra") or {}),
    )


def convert_encoder(
    name: str, checkpoint: str | None, out: str | Path, *, trust_checkpoint: bool = False
) -> Path:
    """Load encoder ``name`` from ``checkpoint`` (default: the spec's) and write it to ``out``.

    ``trust_checkpoint``: read the original pickle with full ``torch.load`` (runs code
    from the file); the default restricted loader runs none.
    """
    from featstore.encoders import get_spec, load_encoder

    spec = get_spec(name)  # also imports the families, which register their converters
    if spec.family not in _CONVERTERS:
        known = ", ".join(sorted(_CONVERTERS)) or "none"
        raise EncoderError(
            f"encoder {name} (family {spec.family}) cannot be converted; families that can: {known}"
        )
    encoder = load_encoder(name, checkpoint, trust_checkpoint=trust_checkpoint)
    state_dict, config = _CONVERTERS[spec.family](encoder)
    extra = {}
    unused = getattr(encoder, "unused_keys", None)
    if unused:
        extra["unused_keys"] = list(unused)
    path = write_converted(
        out,
        family=spec.family,
        encoder=name,
        state_dict=state_dict,
        config=config,
        source=str(encoder.checkpoint),
        source_sha256=encoder.checkpoint_sha256,
        extra=extra,
    )
    log.info("converted %s (%s) to %s", name, encoder.checkpoint, path)
    return path
