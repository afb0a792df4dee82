"""Training checkpoints: a trainer's whole state on disk, without pickle, written atomically.

A checkpoint is what an interrupted fit needs to go on as if it had never
stopped: the weights, the optimizer's moments, schedulers, random generators,
early-stopping counters and best weights, the history so far. Those are
nested ``state_dict``-style trees of tensors, arrays and plain values; this
module stores such a tree as two files in a checkpoint folder:

```
<run>/checkpoint/
  state-<epoch>.safetensors    every tensor and array of the tree, by path
  checkpoint.json              the tree with tensors replaced by references, the
                               epoch, the tensor file's name, size and sha256 -- written LAST
```

``checkpoint.json`` is replaced atomically (temporary file + ``os.replace``)
after its tensor file is complete, and names it, so a crash at any moment
leaves either the previous checkpoint or the new one, never a mix; older
tensor files are removed only afterwards. The tree codec keeps what JSON
would lose: integer dict keys (optimizer states are keyed by parameter
index), tuples (Adam's ``betas``) and floats bit for bit (``float.hex``,
including the ``inf`` of a fresh early stopper), so a restored optimizer
steps exactly as the saved one would have.

>>> save_checkpoint(folder, {"model": net.state_dict(), "epoch": 3})  # doctest: +SKIP
>>> load_checkpoint(folder)["epoch"]  # doctest: +SKIP
3
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import FeatstoreError

CHECKPOINT_DIR = "checkpoint"
INDEX = "checkpoint.json"
FORMAT = 1

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "checkpoint_epoch",
    "has_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
]


class CheckpointError(FeatstoreError):
    """A checkpoint is missing, unreadable or not of this trainer."""


# ------------------------------------------------------------------ tree codec


def _encode(value: Any, path: str, tensors: dict[str, Any]) -> Any:
    """A JSON node for ``value``; tensors and arrays go into ``tensors`` under ``path``."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"tensor": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"array": path}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, np.generic):
        return _encode(value.item(), path, tensors)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise CheckpointError(f"cannot store a dict key {key!r} at {path or '/'}")
            items.append([key, _encode(item, f"{path}/{key}", tensors)])
        return {"dict": items}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return {"list": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    raise CheckpointError(f"cannot store a {type(value).__name__} at {path or '/'}")


def _decode(node: Any, tensors: Mapping[str, Any]) -> Any:
    if node is None or isinstance(node, bool | int | str):
        return node
    if not isinstance(node, dict) or len(node) != 1:
        raise CheckpointError(f"malformed checkpoint node {node!r}")
    ((tag, body),) = node.items()
    if tag == "tensor":
        return tensors[body]
    if tag == "array":
        return tensors[body].numpy()
    if tag == "float":
        return float.fromhex(body)
    if tag == "dict":
        return {key: _decode(item, tensors) for key, item in body}
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "list":
        return [_decode(v, tensors) for v in body]
    raise CheckpointError(f"unknown checkpoint node {tag!r}")


# ------------------------------------------------------------------ files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    folder: str | os.PathLike[str], state: Mapping[str, Any], *, epoch: int
) -> Path:
    """Write ``state`` (a tree of tensors, arrays, dicts, lists, tuples and scalars) at ``epoch``.

    The new checkpoint replaces the previous one atomically; returns the index path.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    tree = _encode(dict(state), "", tensors)
    name = f"state-{epoch:06d}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    index = {
        "format": FORMAT,
        "epoch": int(epoch),
        "tensors": name,
        "bytes": (folder / name).stat().st_size,
        "sha256": _sha256(folder / name),
        "state": tree,
    }
    _replace_atomically(folder / INDEX, (json.dumps(index) + "\n").encode())
    for stale in folder.glob("state-*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return folder / INDEX


def has_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a committed checkpoint (its index)."""
    return (Path(folder) / INDEX).is_file()


def _index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {folder}")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of format {FORMAT}")
    return index


def checkpoint_epoch(folder: str | os.PathLike[str]) -> int:
    """The epoch of the checkpoint in ``folder``."""
    return int(_index(Path(folder))["epoch"])


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The state tree of the checkpoint in ``folder`` (tensors on the CPU), checked against
    the size and sha256 its index recorded."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = _index(folder)
    tensor_path = folder / str(index["tensors"])
    if not tensor_path.is_file() or tensor_path.stat().st_size != index["bytes"]:
        raise CheckpointError(f"checkpoint tensors {tensor_path} are missing or truncated")
    if _sha256(tensor_path) != index["sha256"]:
        raise CheckpointError(f"checkpoint tensors {tensor_path} do not match their checksum")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors raises its own untyped errors
        raise CheckpointError(f"cannot read {tensor_path}: {exc}") from exc
    try:
        state = _decode(index["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"{folder / INDEX} refers to a missing tensor {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / INDEX} holds no state")
    return state


def remove_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Delete a checkpoint folder (after the run it belonged to finished)."""
    shutil.rmtree(folder, ignore_errors=True)
