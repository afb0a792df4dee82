"""Reading pickled PyTorch checkpoints (fairseq, Auto-AVSR, FSFM) without running their code.

A ``torch.save`` file is a pickle: loading it with ``torch.load(weights_only=False)``
imports and calls whatever the file names, so a malicious checkpoint runs code.
fairseq checkpoints also pickle config objects (``argparse.Namespace``, omegaconf
``DictConfig``, fairseq dataclasses, enums, meters) that ``weights_only=True``
refuses, and whose classes need fairseq and omegaconf installed.

:func:`load_checkpoint` reads them with :class:`RestrictedUnpickler`, handed to
``torch.load`` as its ``pickle_module`` (torch subclasses our ``Unpickler`` for both
the zip and the legacy format, and sends every global that is not a storage type
through our ``find_class``):

- tensors, storages, ``OrderedDict``, plain builtins (containers, numbers,
  strings), torch dtypes/``Size``/``device`` and numpy arrays and scalars are
  rebuilt for real (:data:`ALLOWED`);
- every other class or function becomes an inert :class:`Opaque` subclass named
  after it, which records the arguments and state the pickle hands it and never
  imports or calls anything. :func:`plain` turns those into plain dicts, so
  ``ckpt["args"].encoder_layers`` or ``plain(ckpt["cfg"])["model"]`` read as usual.

``trust=True`` is plain ``torch.load(weights_only=False)``: only for files you trust.

Before any of that, :func:`~featstore.encoders.checkpoint_format.inspect_checkpoint`
reads the file's kind from its bytes: ``torch.load`` would hand a TorchScript archive
to ``torch.jit.load``, which runs the archive's code whatever unpickler is given, so
TorchScript is refused (always), torch's legacy tar format and zips with unexpected
entries need ``trust``, and safetensors files are read with safetensors.

>>> ckpt = load_checkpoint("self_large_vox_433h.pt")  # doctest: +SKIP
>>> plain(ckpt["cfg"])["model"]["w2v_args"]["model"]["encoder_layers"]  # doctest: +SKIP
24

:func:`find_local_checkpoint` resolves a bare default checkpoint file name (such as
``self_large_vox_433h.pt``) in the current directory or the checkpoint directory
``$FEATSTORE_CHECKPOINTS`` (default ``~/.cache/featstore/checkpoints``).
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import enum
import logging
import os
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from featstore.encoders.base import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "Opaque",
    "RestrictedUnpickler",
    "find_local_checkpoint",
    "load_checkpoint",
    "opaque_name",
    "plain",
]

CHECKPOINT_DIR_ENV = "FEATSTORE_CHECKPOINTS"
DEFAULT_CHECKPOINT_DIR = "~/.cache/featstore/checkpoints"

_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "int",
    "float",
    "complex",
    "bool",
    "str",
    "bytes",
    "bytearray",
    "slice",
    "range",
)
_TORCH_REBUILD = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_sparse_tensor",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_meta_tensor_no_storage",
)
_NUMPY = ("_reconstruct", "scalar")

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in _BUILTINS]
    + [("collections", "OrderedDict"), ("_codecs", "encode")]  # protocol 2 pickles bytes so
    + [("torch._utils", n) for n in _TORCH_REBUILD]
    + [
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch", "Tensor"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch.nn.parameter", "Parameter"),
    ]
    + [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in _NUMPY]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)
"""Globals rebuilt for real: data types and the functions that rebuild tensors and arrays.
torch dtypes (``torch.float16``...) and numpy scalar types (``numpy.float64``...) are
allowed by kind, not listed here."""


class Opaque:
    """An inert stand-in for a class or function the restricted loader does not allow.

    ``module``/``qualname`` name what the pickle asked for; ``args`` are the arguments
    it was called with (``REDUCE``/``NEWOBJ``) and ``state`` what ``BUILD`` set. Attribute
    access reads ``state`` when it is a dict, so ``ckpt["args"].encoder_layers`` works
    for a pickled ``argparse.Namespace``.
    """

    module: ClassVar[str] = ""
    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_opaque", {"args": args, "kwargs": kwargs, "state": None})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded the arguments; nothing to run

    def __setstate__(self, state: Any) -> None:
        self._opaque["state"] = state

    def __reduce__(self) -> Any:  # never pickled back out
        raise TypeError(f"cannot pickle an opaque {self.module}.{self.qualname}")

    @property
    def args(self) -> tuple[Any, ...]:
        return self._opaque["args"]

    @property
    def state(self) -> Any:
        return self._opaque["state"]

    def __getattr__(self, name: str) -> Any:
        state = object.__getattribute__(self, "_opaque")["state"]
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slots state)
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"opaque {self.module}.{self.qualname} has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<opaque {self.module}.{self.qualname}>"


def opaque_name(obj: Any) -> str | None:
    """``"module.qualname"`` of an :class:`Opaque` object or class, else None."""
    if isinstance(obj, Opaque) or (isinstance(obj, type) and issubclass(obj, Opaque)):
        return f"{obj.module}.{obj.qualname}"
    return None


def _torch_global(name: str) -> Any:
    import torch

    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


def _numpy_global(name: str) -> Any:
    import numpy as np

    value = getattr(np, name, None)
    if isinstance(value, type) and issubclass(value, np.generic):
        return value  # scalar types, e.g. numpy.float64
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only :data:`ALLOWED` globals; all others become :class:`Opaque`.

    It never imports a module the checkpoint names (torch and numpy are imported by
    featstore itself), so a class from a module that does not exist, or a call such as
    ``os.system``, yields an inert placeholder instead of running.
    """

    _opaque_types: ClassVar[dict[tuple[str, str], type[Opaque]]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol <= 2 writes Python 2 names (``__builtin__``); map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED:
            if module == "builtins":
                import builtins

                return getattr(builtins, name)
            if module == "collections":
                return collections.OrderedDict
            if module == "_codecs":
                return codecs.encode
            if module.startswith("numpy"):
                import numpy as np

                if name in ("ndarray", "dtype"):
                    return getattr(np, name)
                core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
                return getattr(core.multiarray, name)
            return _resolve_torch(module, name)
        if module == "torch" and (value := _torch_global(name)) is not None:
            return value
        if module == "numpy" and (value := _numpy_global(name)) is not None:
            return value
        return self.opaque_type(module, name)

    @classmethod
    def opaque_type(cls, module: str, name: str) -> type[Opaque]:
        key = (module, name)
        if key not in cls._opaque_types:
            cls._opaque_types[key] = type(
                f"Opaque[{module}.{name}]", (Opaque,), {"module": module, "qualname": name}
            )
        return cls._opaque_types[key]


def _resolve_torch(module: str, name: str) -> Any:
    import importlib

    # only the torch modules named in ALLOWED, already imported with torch
    return getattr(importlib.import_module(module), name)


def _restricted_pickle_module() -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)``."""
    mod = types.ModuleType("featstore_restricted_pickle")

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return mod


def load_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU as a dict, never running its code unless trusted.

    The file's kind is read from its bytes first
    (:func:`~featstore.encoders.checkpoint_format.inspect_checkpoint`), before anything
    is unpickled: ``torch.save`` files (zip or legacy pickle) go through
    :class:`RestrictedUnpickler` (no code from the file runs; unknown objects come back
    as :class:`Opaque`); a safetensors file (whatever its name) is read with safetensors.
    ``trust=True`` (``--trust-checkpoint``) uses plain ``torch.load(weights_only=False)``,
    which runs any code the file holds, and is needed for torch's legacy tar format and
    zips with entries ``torch.save`` does not write. A TorchScript archive is refused
    even with ``trust``: ``torch.load`` hands it to ``torch.jit.load``, which runs the
    archive's code, and no encoder family publishes one. A bare state dict (tensors at
    the top level) is returned as it is. Raises :class:`CheckpointError` when the file is
    missing, refused or cannot be read.
    """
    from featstore.encoders import checkpoint_format as formats

    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} does not exist")
    try:
        kind = formats.inspect_checkpoint(file)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc}") from None
    if kind.kind == formats.TORCHSCRIPT:
        raise CheckpointError(
            f"checkpoint {file} is {kind.detail}: loading it would run the code it holds, so "
            "featstore refuses it, even with --trust-checkpoint. Pass the original weights "
            "file (a torch.save checkpoint or safetensors)"
        )
    if kind.kind == formats.UNKNOWN:
        raise CheckpointError(
            f"checkpoint {file} is not a checkpoint featstore can read: {kind.detail}"
        )
    if kind.kind == formats.SAFETENSORS:
        return _load_safetensors(file)
    if kind.kind in formats.TRUSTED_ONLY and not trust:
        raise CheckpointError(
            f"checkpoint {file} is {kind.detail}, which only full pickle reads (it could run "
            "code). If you trust this file, pass --trust-checkpoint (trust_checkpoint=True)"
        )
    obj = _torch_load(file, trust=trust)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {file} holds a {type(obj).__name__}, not a dict of weights and config"
        )
    return dict(obj)


def _torch_load(file: Path, *, trust: bool) -> Any:
    import torch

    try:
        if trust:
            log.warning("loading %s with full pickle (--trust-checkpoint): it can run code", file)
            return torch.load(file, map_location="cpu", weights_only=False, mmap=False)
        # weights_only=False only because torch refuses a custom pickle_module with
        # weights_only=True; the restricted unpickler is what keeps code from running, and
        # inspect_checkpoint has ruled out TorchScript, which would bypass it
        return torch.load(
            file,
            map_location="cpu",
            weights_only=False,
            mmap=False,
            pickle_module=_restricted_pickle_module(),
        )
    except Exception as exc:  # torch/pickle raise many kinds for a bad or unusual file
        hint = (
            ""
            if trust
            else (
                "; the restricted loader rebuilds only tensors and plain data. If you trust "
                "this file, pass --trust-checkpoint (trust_checkpoint=True) to load it with "
                "full pickle, or convert it once with `featstore encoders convert`"
            )
        )
        raise CheckpointError(
            f"cannot read checkpoint {file}: {type(exc).__name__}: {exc}{hint}"
        ) from None


def _load_safetensors(file: Path) -> dict[str, Any]:
    """A safetensors file as a flat dict of CPU tensors (no code can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(file), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {file}: {exc}") from None


def plain(obj: Any) -> Any:
    """Recursively turn :class:`Opaque` objects into plain Python data.

    - objects with a dict state (``argparse.Namespace``, dataclasses) -> that dict;
    - omegaconf containers and nodes -> their ``_content`` / ``_val``;
    - enums and other single-argument calls -> the argument (e.g. ``"concat"``);
    - real ``argparse.Namespace`` / enums (from a trusted load) -> their dict / value;
    - anything else opaque -> ``{"__opaque__": name, "args": [...], "state": ...}``.

    Dicts, lists and tuples are walked; tensors and other values are returned as they are.
    """
    if isinstance(obj, Opaque):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if isinstance(state, dict):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return plain(state["_content"])
            if "_val" in state:  # omegaconf value node
                return plain(state["_val"])
            return {str(k): plain(v) for k, v in state.items()}
        if state is None and len(obj.args) == 1:
            return plain(obj.args[0])
        if state is None and not obj.args:
            return {}
        return {
            "__opaque__": opaque_name(obj),
            "args": [plain(a) for a in obj.args],
            "state": plain(state),
        }
    if isinstance(obj, argparse.Namespace):  # trusted loads give the real objects
        return plain(vars(obj))
    if isinstance(obj, enum.Enum):
        return plain(obj.value)
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


def find_local_checkpoint(name: str) -> Path:
    """A checkpoint file or directory: ``name`` as a path, else ``$FEATSTORE_CHECKPOINTS/name``.

    For weights that are not on the Hugging Face hub (AV-HuBERT, Auto-AVSR, FSFM): put
    the downloaded file in the checkpoint directory (``$FEATSTORE_CHECKPOINTS``, default
    ``~/.cache/featstore/checkpoints``) or pass its path.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    root = Path(os.environ.get(CHECKPOINT_DIR_ENV, DEFAULT_CHECKPOINT_DIR)).expanduser()
    candidate = root / name
    if not path.is_absolute() and candidate.exists():
        return candidate
    raise CheckpointError(
        f"checkpoint {name} not found: pass a local path, or put the file in the checkpoint "
        f"directory {root} (set ${CHECKPOINT_DIR_ENV} to change it)"
    )
