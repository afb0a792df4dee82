"""Stores written by older featstore code open and read unchanged.

``tests/data/legacy_store.zarr`` was written by the code before the storage
backend (see ``tests/data/README.md``); the expected rows are recomputed with
``synthetic_video``, independently of the reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featstore.maintenance import gc, summarize, verify
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import synthetic_video, write_synthetic

LEGACY = Path(__file__).parent / "data" / "legacy_store.zarr"
VIDEOS = {"a/1": 300, "b/2": 250, "c/3": 40}


@pytest.fixture
def legacy(tmp_path) -> str:
    """A private copy: tests that write must not touch the checked-in files."""
    dst = tmp_path / "legacy.zarr"
    shutil.copytree(LEGACY, dst)
    return str(dst)


def test_legacy_store_reads_unchanged():
    store = open_store(LEGACY)  # read-only, in place
    assert store.datasets() == ["ds"] and store.encoders("ds") == ["tiny"]
    assert store.layers("ds", "tiny") == [0, 3, "last"]
    info = store.encoder_info("ds", "tiny")
    assert info.layer_dims == {0: 8, "last": 4, 3: 6} and info.checkpoint == "tiny-ckpt"
    for vid, n in VIDEOS.items():
        assert np.array_equal(store.video("ds", "tiny", vid, 0), synthetic_video(vid, n, 8))
        assert np.array_equal(
            store.video("ds", "tiny", vid, "last"), synthetic_video(vid, n, 4, layer="last")
        )
    assert np.array_equal(
        store.video("ds", "tiny", "a/1", 3), synthetic_video("a/1", 300, 6, layer=3)
    )
    assert store.video_ids("ds", "tiny", 3) == ["a/1"]
    assert store.features("ds", "tiny", 0).shape == (590, 8)
    manifest = store.manifest("ds")
    assert manifest["video_id"].tolist() == ["a/1", "b/2", "c/3", "broken"]
    assert manifest["fake_segments"].tolist() == [[], [[0.5, 1.25]], [[0.0, 0.4]], []]
    assert manifest["label"].tolist() == [0, 1, 1, 0] and np.isnan(manifest["duration_s"][2])
    assert manifest.attrs["format"] == "test"
    assert store.failures("ds", "tiny")["video_id"].tolist() == ["broken"]
    assert verify(store).ok
    summary = summarize(store)
    (enc,) = summary.datasets[0].encoders
    assert summary.datasets[0].manifest_rows == 4
    assert enc.videos == 3 and enc.parts == 3 and enc.uncommitted_parts == 0


def test_legacy_store_takes_new_writes_and_maintenance(legacy):
    store = open_store(legacy, mode="a")
    info = EncoderInfo(name="tiny", frame_hz=25.0, layer_dims={0: 8, "last": 4})
    write_synthetic(store, "ds", info, ["d/4"], [60])
    store.write_manifest(
        "ds", pd.DataFrame({"video_id": ["a/1", "b/2", "c/3", "d/4"], "label": [0, 1, 1, 1]})
    )
    reader = open_store(legacy)
    assert reader.manifest("ds")["label"].tolist() == [0, 1, 1, 1]
    assert list(reader.manifest("ds").columns) == ["video_id", "label"]
    assert reader.video_ids("ds", "tiny", 0) == ["a/1", "b/2", "c/3", "d/4"]
    assert np.array_equal(reader.video("ds", "tiny", "d/4", 0), synthetic_video("d/4", 60, 8))
    assert gc(store, older_than_s=0).removed_uncommitted == ()
    assert verify(reader).ok
