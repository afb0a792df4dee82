"""Shared fixtures: tiny stores and encoders made at test time, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from featstore.store import EncoderInfo, FeatureStore, open_store


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    """An empty local store, open for writing."""
    return open_store(tmp_path / "features.zarr", mode="a")


@pytest.fixture
def info() -> EncoderInfo:
    """A 2-layer encoder: 32 wide at layer 0, 16 wide at 'last'."""
    return EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 32, "last": 16})
