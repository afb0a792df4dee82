"""Protocols on segment datasets: Deepfake-Eval-2024 in single-speaker segments.

The paper evaluates DFE-2024 on segments; its validation set is carved from the
published train split. Segments of one source video (``source_id``) must stay in one
split, or a model validates on the video it trained on. The segmentation itself is
replaced here by planted analyses (``_process``), so that many source videos are cheap;
``test_wild_segments`` runs the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from featstore import open_store
from featstore.asd.analysis import VideoAnalysis
from featstore.asd.facetracks import Track
from featstore.cli.main import app
from featstore.datasets import segments as seg_module
from featstore.datasets.views import resolve_view
from featstore.landmarks import FaceTracks
from featstore.segments import Segment, VideoSegments

runner = CliRunner()


class PlantedDetector:
    name = "planted"

    def describe(self) -> dict[str, Any]:
        return {"asd": "planted"}


def _analysis(n_segments: int) -> VideoAnalysis:
    """A 100 s video with ``n_segments`` 5 s segments, one face track each."""
    tracks, found = [], []
    for k in range(n_segments):
        start, n = 250 * k, 125
        faces = FaceTracks(
            np.zeros((n, 68, 2), np.float32), np.zeros((n, 4), np.float32), np.ones(n, bool)
        )
        tracks.append(Track(start=start, boxes=np.zeros((n, 4)), faces=faces))
        found.append(Segment(start, start + n, k))
    return VideoAnalysis(
        n_frames=2500,
        has_audio=True,
        shots=[],
        tracks=tracks,
        scores=[np.ones(125)] * n_segments,
        face_px=[np.full(125, 150.0)] * n_segments,
        result=VideoSegments(2500, tuple(found), {}),
    )


def _source(n_videos: int, seed: int = 0) -> pd.DataFrame:
    """DFE-2024-like rows: published train/test, 80 % fake, ids ``v000``..."""
    rng = np.random.default_rng(seed)
    rows = [
        dict(
            video_id=f"v{i:03d}",
            path=f"video-data/v{i:03d}.mp4",
            label=int(rng.random() < 0.8),
            split="train" if rng.random() < 0.6 else "test",
            modify_type="unknown",
            audio_fake=pd.NA,
            visual_fake=pd.NA,
            fake_segments=[],
            duration_s=100.0,
        )
        for i in range(n_videos)
    ]
    df = pd.DataFrame(rows)
    df.attrs = {"root": "/nowhere", "format": "dfe2024"}
    return df


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Source video ``vNNN`` gives ``NNN % 4`` segments (0 to 3)."""

    def process(source, root, detector, config):
        n = int(str(source["video_id"])[1:]) % 4
        return seg_module._rows_for(source, _analysis(n), detector.name)

    monkeypatch.setattr(seg_module, "_process", process)


def _segment(store: str, name: str = "dfe-segs") -> None:
    seg_module.build_segment_dataset(open_store(store, mode="a"), "dfe", name, PlantedDetector())


def _leaks(df: pd.DataFrame, splits: pd.Series) -> pd.Series:
    per_source = pd.DataFrame({"source": df["source_id"], "split": splits.to_numpy()})
    n_splits = per_source.groupby("source")["split"].nunique()
    return n_splits[n_splits > 1]


def test_dfe2024_protocol_on_segments_keeps_each_source_in_one_split(
    planted: None, tmp_path: Path
) -> None:
    store = str(tmp_path / "f.zarr")
    fs = open_store(store, mode="a")
    source = _source(120)
    fs.write_manifest("dfe", source, attrs=source.attrs)
    _segment(store)
    out = runner.invoke(
        app, ["datasets", "protocol", "dfe-segs", "--protocol", "dfe2024", "--store", store]
    )
    assert out.exit_code == 0, out.output
    seg = open_store(store).manifest("dfe-segs")
    assert len(seg) == sum(i % 4 for i in range(120))
    view = resolve_view(seg, "dfe2024")
    splits, official = view.splits, seg["split"]
    assert set(splits[official == "test"]) == {"test"}  # published test -> test
    assert set(splits[official == "train"]) == {"train", "val"}  # published train -> train/val
    assert _leaks(seg, splits).empty  # no source video in two splits
    for label in (0, 1):  # val is ~10 % of each label's train segments, whole sources at a time
        train = (official == "train") & (seg["label"] == label)
        n_val = int((splits[train] == "val").sum())
        assert n_val > 0 and abs(n_val - 0.1 * train.sum()) <= 3
    # select it by name, as extract / train / eval do
    args = ["--encoder", "logfbank", "--on", "dfe-segs@dfe2024:val", "--store", store]
    out = runner.invoke(app, ["extract", *args, "--dry-run"])
    assert out.exit_code == 0, out.output
    assert f"{int((splits == 'val').sum())} selected" in out.output, out.output


def test_segment_datasets_keep_their_own_views_and_not_the_sources(
    planted: None, tmp_path: Path
) -> None:
    from featstore.datasets import add_view, protocol_splits

    store = str(tmp_path / "f.zarr")
    fs = open_store(store, mode="a")
    source = _source(40)
    source = add_view(source, "dfe2024", protocol_splits("dfe2024", source), {}, default=True)
    fs.write_manifest("dfe", source, attrs=source.attrs)
    _segment(store)
    seg = open_store(store).manifest("dfe-segs")
    # the source's view was drawn over videos: not inherited; the split column is official
    assert not [c for c in seg.columns if c.startswith("split.")]
    assert seg.attrs["views"] == {} and seg.attrs.get("default_view") is None
    assert (seg["split"] == seg["source_id"].map(source.set_index("video_id")["split"])).all()

    def protocol(*extra: str) -> None:
        out = runner.invoke(
            app, ["datasets", "protocol", "dfe-segs", "--store", store, "-p", "dfe2024", *extra]
        )
        assert out.exit_code == 0, out.output

    protocol("--default")
    protocol("--as", "other", "--seed", "7")
    test_ids = seg.loc[seg["split"] == "test", "video_id"].head(3)
    files = tmp_path / "test.txt"
    files.write_text("\n".join(test_ids) + "\n")
    out = runner.invoke(
        app, ["datasets", "split", "dfe-segs", "--store", store, "--test", str(files)]
    )
    assert out.exit_code == 0, out.output
    before = open_store(store).manifest("dfe-segs")

    _segment(store)  # nothing new: every view kept as it was
    same = open_store(store).manifest("dfe-segs")
    assert set(same.attrs["views"]) == {"dfe2024", "other", "published"}
    assert same.attrs["default_view"] == "dfe2024"
    for view in ("dfe2024", "other", "published"):
        pd.testing.assert_series_equal(
            resolve_view(same, view).splits, resolve_view(before, view).splits, check_names=False
        )
        assert same.attrs["views"][view] == before.attrs["views"][view]

    more = _source(80)
    fs.write_manifest("dfe", more, attrs=more.attrs)
    _segment(store)  # new segments: protocols recomputed with their seed, split files dropped
    grown = open_store(store).manifest("dfe-segs")
    assert len(grown) > len(same)
    assert set(grown.attrs["views"]) == {"dfe2024", "other"}
    assert grown.attrs["default_view"] == "dfe2024"
    assert grown.attrs["views"]["other"]["seed"] == 7
    for view, seed in (("dfe2024", 43), ("other", 7)):
        want = protocol_splits("dfe2024", grown, seed=seed)
        assert resolve_view(grown, view).splits.tolist() == want.tolist()
        assert _leaks(grown, want).empty
