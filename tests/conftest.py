"""Shared fixtures: tiny stores and encoders made at test time, offline."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# checkpoint digests are cached per user; tests keep theirs out of ~/.cache
os.environ.setdefault("FEATSTORE_CACHE_DIR", tempfile.mkdtemp(prefix="featstore-test-cache-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from featstore.store import EncoderInfo, FeatureStore, open_store


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    """An empty local store, open for writing."""
    return open_store(tmp_path / "features.zarr", mode="a")


@pytest.fixture
def no_gc_floor(monkeypatch) -> None:
    """Let gc remove objects of any age: its floor protects writers at work, and
    tests that use this fixture have none running."""
    monkeypatch.setenv("FEATSTORE_GC_FLOOR_S", "0")


@pytest.fixture
def info() -> EncoderInfo:
    """A 2-layer encoder: 32 wide at layer 0, 16 wide at 'last'."""
    return EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is present (torch checked only then)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)
