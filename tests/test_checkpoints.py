"""The restricted checkpoint loader: tensors and plain data come back, code never runs."""

from __future__ import annotations

import argparse
import contextlib
import enum
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore.encoders.base import CheckpointError
from featstore.encoders.checkpoints import (
    CHECKPOINT_DIR_ENV,
    Opaque,
    find_local_checkpoint,
    load_checkpoint,
    opaque_name,
    plain,
)

torch.set_num_threads(1)

FAKE_MODULE = "featstore_test_fake_fairseq.dataclass.configs"


@contextlib.contextmanager
def fake_module(name: str, **attrs: object) -> Iterator[types.ModuleType]:
    """A module that exists only while the checkpoint is pickled (pickle checks it)."""
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
        if isinstance(value, type):
            value.__module__ = name
    parts = name.split(".")
    added = [
        ".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in sys.modules
    ]
    for parent in added:
        sys.modules[parent] = types.ModuleType(parent)
    sys.modules[name] = mod
    try:
        yield mod
    finally:
        for key in (name, *added):
            del sys.modules[key]


class FairseqConfig:
    """Stands in for a fairseq dataclass: plain attributes."""

    def __init__(self, **kwargs: object) -> None:
        self.__dict__.update(kwargs)


class Choice(enum.Enum):
    CONCAT = "concat"


class DictConfig:
    """Pickles like omegaconf's DictConfig: state with ``_content`` of value nodes."""

    def __init__(self, content: dict[str, object]) -> None:
        self.content = content

    def __getstate__(self) -> dict[str, object]:
        return {"_content": self.content, "_metadata": FairseqConfig(ref_type="Any")}


class AnyNode:
    def __init__(self, val: object) -> None:
        self.val = val

    def __getstate__(self) -> dict[str, object]:
        return {"_val": self.val, "_metadata": None}


class Payload:
    """Unpickling it with full pickle writes a marker file (what an attack would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def write_checkpoint(path: Path, marker: Path) -> dict[str, torch.Tensor]:
    weights = OrderedDict(
        w=torch.randn(3, 4),
        h=torch.randn(5).half(),
        i=torch.arange(6).view(2, 3)[:, 1],  # a non-contiguous view of a shared storage
    )
    with (
        fake_module(FAKE_MODULE, FairseqConfig=FairseqConfig, Choice=Choice),
        fake_module("omegaconf_fake.dictconfig", DictConfig=DictConfig),
        fake_module("omegaconf_fake.nodes", AnyNode=AnyNode),
    ):
        ckpt = {
            "model": weights,
            "args": argparse.Namespace(encoder_layers=24, modality_fuse="concat", lr=[0.1]),
            "cfg": DictConfig(
                {"model": DictConfig({"encoder_layers": AnyNode(2), "fuse": AnyNode("add")})}
            ),
            "dataclass": FairseqConfig(encoder_embed_dim=1024, fuse=Choice.CONCAT),
            "payload": Payload(marker),
            "extra_state": {"np": np.float64(1.5), "arr": np.arange(3), "s": {1, 2}},
        }
        torch.save(ckpt, path)
    return weights


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pt"
    weights = write_checkpoint(path, marker)
    return path, marker, weights


def test_restricted_load_reads_tensors_and_runs_nothing(checkpoint) -> None:
    path, marker, weights = checkpoint
    ckpt = load_checkpoint(path)
    assert not marker.exists(), "the restricted loader ran code from the checkpoint"
    assert "featstore_test_fake_fairseq" not in sys.modules
    assert "omegaconf_fake" not in sys.modules
    for key, value in weights.items():
        assert ckpt["model"][key].dtype == value.dtype
        torch.testing.assert_close(ckpt["model"][key], value)
    assert isinstance(ckpt["model"], OrderedDict)
    assert isinstance(ckpt["payload"], Opaque)
    assert opaque_name(ckpt["payload"]) == "builtins.exec"
    assert ckpt["extra_state"]["np"] == 1.5
    np.testing.assert_array_equal(ckpt["extra_state"]["arr"], np.arange(3))
    assert ckpt["extra_state"]["s"] == {1, 2}


def test_opaque_configs_read_as_plain_data(checkpoint) -> None:
    path, _, _ = checkpoint
    ckpt = load_checkpoint(path)
    args = ckpt["args"]
    assert opaque_name(args) == "argparse.Namespace"
    assert args.encoder_layers == 24  # attribute access reads the recorded state
    assert plain(args) == {"encoder_layers": 24, "modality_fuse": "concat", "lr": [0.1]}
    assert plain(ckpt["cfg"]) == {"model": {"encoder_layers": 2, "fuse": "add"}}
    assert plain(ckpt["dataclass"]) == {"encoder_embed_dim": 1024, "fuse": "concat"}
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = args.missing


def test_trusted_load_runs_full_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "payload.pt"
    torch.save({"model": {"w": torch.ones(1)}, "payload": Payload(marker)}, path)
    assert isinstance(load_checkpoint(path)["payload"], Opaque)
    assert not marker.exists()
    load_checkpoint(path, trust=True)  # what --trust-checkpoint means: the file's code runs
    assert marker.read_text() == "ran"


def test_trusted_load_needs_the_pickled_modules(checkpoint) -> None:
    path, _, _ = checkpoint
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_checkpoint(path, trust=True)  # the fake modules are gone
    assert "--trust-checkpoint" not in str(info.value)


def test_trusted_load_of_a_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(a=1)}, path)
    ckpt = load_checkpoint(path, trust=True)
    assert isinstance(ckpt["args"], argparse.Namespace)
    assert plain(ckpt["args"]) == {"a": 1}
    assert plain(load_checkpoint(path)["args"]) == {"a": 1}


def test_unreadable_file_explains_the_flag(tmp_path: Path) -> None:
    import collections

    bad = tmp_path / "bad.pt"
    torch.save({"d": collections.defaultdict(list, a=[1])}, bad)  # needs the real class
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(bad)
    assert load_checkpoint(bad, trust=True)["d"]["a"] == [1]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")  # no flag helps: torch cannot read it
    with pytest.raises(CheckpointError, match="not a checkpoint featstore can read"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(
        {"model": {"w": torch.arange(4.0)}, "args": argparse.Namespace(x=2)},
        path,
        _use_new_zipfile_serialization=False,
    )
    ckpt = load_checkpoint(path)
    torch.testing.assert_close(ckpt["model"]["w"], torch.arange(4.0))
    assert plain(ckpt["args"]) == {"x": 2}


def test_find_local_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    assert find_local_checkpoint("model.pt") == tmp_path / "model.pt"
    assert find_local_checkpoint(str(tmp_path / "model.pt")) == tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=CHECKPOINT_DIR_ENV):
        find_local_checkpoint("other.pt")
