"""Load TalkNet-ASD's original checkpoint (``pretrain_TalkSet.model``) strictly and safely.

The file is ``torch.save(talkNet.state_dict())``: the keys of the ``talkNet`` wrapper,
``model.*`` (the network) and ``lossAV.FC.*``, ``lossA.FC.*``, ``lossV.FC.*`` (the heads of
its training loss). It is read with the project's restricted unpickler
(``featstore.encoders.checkpoints``), so no code from the file runs. Keys are renamed
(:func:`rename_key`); a key the model needs and the file lacks is an error, keys the file
has and the model does not use (the audio-only and visual-only training heads) are listed.
A ``module.`` prefix (a checkpoint saved from ``DataParallel``) is dropped first, as the
original ``loadParameters`` does.

>>> loaded = load_talknet("pretrain_TalkSet.model")  # doctest: +SKIP
>>> loaded.unused  # doctest: +SKIP
('lossA.FC.bias', 'lossA.FC.weight', 'lossV.FC.bias', 'lossV.FC.weight')
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.asd.talknet.config import TalkNetConfig, config_from_state_dict
from featstore.encoders.base import CheckpointError

if TYPE_CHECKING:
    from featstore.asd.talknet.model import TalkNet

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "LoadedTalkNet",
    "checkpoint_key",
    "find_talknet_checkpoint",
    "load_talknet",
    "rename_key",
]

DEFAULT_CHECKPOINT = "pretrain_TalkSet.model"

# original prefix -> this port's (the rest of each key is the same in both)
_PREFIXES = (
    ("model.visualFrontend.frontend3D.", "visual_frontend.frontend3d."),
    ("model.visualFrontend.", "visual_frontend."),
    ("model.visualTCN.", "visual_tcn."),
    ("model.visualConv1D.", "visual_conv1d."),
    ("model.audioEncoder.", "audio_encoder."),
    ("model.crossA2V.", "cross_a2v."),
    ("model.crossV2A.", "cross_v2a."),
    ("model.selfAV.", "self_av."),
    ("lossAV.FC.", "av_head."),
)


def rename_key(key: str) -> str | None:
    """This port's name for an original key, or None for keys it does not use."""
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def checkpoint_key(key: str) -> str:
    """The original name of one of this port's keys (inverse of :func:`rename_key`)."""
    for old, new in _PREFIXES:
        if key.startswith(new):
            return old + key[len(new) :]
    raise KeyError(key)


@dataclass(frozen=True, eq=False)
class LoadedTalkNet:
    """A model in eval mode with where it came from."""

    model: TalkNet
    config: TalkNetConfig
    path: Path
    sha256: str
    unused: tuple[str, ...]  # keys of the file the model does not use


def find_talknet_checkpoint(checkpoint: str | os.PathLike[str] | None = None) -> Path:
    """``checkpoint`` as a path, else ``pretrain_TalkSet.model`` in ``$FEATSTORE_CHECKPOINTS``."""
    from featstore.encoders.checkpoints import find_local_checkpoint

    return find_local_checkpoint(str(checkpoint or DEFAULT_CHECKPOINT))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_state(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    import torch

    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: not a TalkNet state dict (entry {key!r} is a {type(value).__name__})"
            )
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def load_talknet(
    checkpoint: str | os.PathLike[str] | None = None, *, device: str = "cpu"
) -> LoadedTalkNet:
    """The TalkNet of a checkpoint file (its widths read from its shapes), in eval mode.

    Raises :class:`CheckpointError` when the file is missing or unreadable, is not a
    TalkNet state dict, lacks a key the model needs or has a tensor of the wrong shape.
    """
    import torch

    from featstore.asd.talknet.model import TalkNet
    from featstore.encoders.checkpoints import load_checkpoint

    path = find_talknet_checkpoint(checkpoint)
    raw = _tensor_state(load_checkpoint(path), path)
    renamed: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in raw.items():
        new = rename_key(key)
        if new is None:
            unused.append(key)
        else:
            renamed[new] = value.float() if value.is_floating_point() else value
    try:
        config = config_from_state_dict(renamed)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a TalkNet-ASD checkpoint (no {exc})") from None
    model = TalkNet(config)
    expected = model.state_dict()
    missing = sorted(checkpoint_key(k) for k in expected.keys() - renamed.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointError(f"{path}: {len(missing)} weight(s) missing: {shown}")
    extra = sorted(checkpoint_key(k) for k in renamed.keys() - expected.keys())
    unused.extend(extra)
    for key, value in expected.items():
        if renamed[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {checkpoint_key(key)} has shape {tuple(renamed[key].shape)}, "
                f"the model needs {tuple(value.shape)}"
            )
    model.load_state_dict({k: renamed[k] for k in expected}, strict=True)
    if unused:
        log.info("%s: %d unused key(s): %s", path, len(unused), ", ".join(sorted(unused)))
    model.eval().to(device)
    return LoadedTalkNet(
        model=model, config=config, path=path, sha256=_sha256(path), unused=tuple(sorted(unused))
    )
