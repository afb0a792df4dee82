"""Trainers' lazy reads (featstore.trainers.streams): the rows store.video() gives, a Dask task per part
(a part with more than its share of a batch cut in a few)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featstore.maintenance import compact
from featstore.store import EncoderInfo, open_store
from featstore.synthetic import write_synthetic
from featstore.trainers.data import FeatureKey
from featstore.trainers.inputs import FEATURES, FeatureInput, InputSource
from featstore.trainers.pairs import PairingError, pair_inputs, pair_rows
from featstore.trainers.streams import PairSource, StoreReader, StoreSource

from s3_server import s3  # noqa: F401  (a fixture)  # isort: skip

AUD, VIS = FeatureKey("aud", "last"), FeatureKey("vis", "last")
N = 40


def write_store(url: str, **options) -> dict[str, np.ndarray]:
    """Dataset ``ds``: audio at 25 Hz (two layers), visual at 12.5 Hz, in many small parts;
    videos v005-v007 committed twice (a retried task: the second copy wins)."""
    store = open_store(url, mode="a", durable=False, **options)
    rng = np.random.default_rng(0)
    ids = [f"v{i:03d}" for i in range(N)]
    lengths = rng.integers(10, 60, size=N)
    aud = EncoderInfo(name="aud", frame_hz=25.0, layer_dims={3: 12, "last": 12})
    vis = EncoderInfo(name="vis", frame_hz=12.5, layer_dims={"last": 8})
    write_synthetic(store, "ds", aud, ids, lengths, target_part_bytes=40 * 24)
    write_synthetic(store, "ds", vis, ids, (lengths + 1) // 2, target_part_bytes=30 * 16)
    write_synthetic(store, "ds", aud, ids[5:8], lengths[5:8] + 3, seed=1, target_part_bytes=10**6)
    manifest = pd.DataFrame(
        {
            "video_id": ids,
            "label": [i % 2 for i in range(N)],
            "split": ["train"] * N,
            "leading_silence_s": rng.uniform(0, 0.3, size=N).round(3),
        }
    )
    store.write_manifest("ds", manifest)
    return {"lengths": lengths}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("streams") / "f.zarr")
    write_store(url)
    return url


def rows_of(store) -> pd.DataFrame:
    manifest = store.manifest("ds")
    order = np.random.default_rng(1).permutation(N)  # not storage order
    return manifest.iloc[order].reset_index(drop=True)


def test_reader_gives_store_video_rows_a_few_tasks_per_part(local):
    store = open_store(local)
    ids = store.manifest("ds")["video_id"].tolist()
    keys = [AUD, FeatureKey("aud", 3), VIS]
    reader = StoreReader(store, "ds", keys, ids)
    idx = np.array([7, 0, 33, 6, 7, 21])
    got = reader.read(idx)
    for i, rows in zip(idx, got, strict=True):
        for k in keys:
            expect = store.video("ds", k.encoder, ids[i], k.layer)
            assert rows[k].dtype == expect.dtype and np.array_equal(rows[k], expect)
    parts = {(k, store.locate("ds", k.encoder, ids[i], k.layer).part_id) for k in keys for i in idx}
    assert len(store.layout("ds", "aud", "last").part_ids) >= 3
    # One thread: one task per (feature, part), never one per video.
    one = StoreReader(store, "ds", keys, ids, threads=1)
    assert len(one.graph(idx)[0]) == len(parts) < len(idx) * len(keys)
    assert all(
        np.array_equal(a[k], b[k]) for a, b in zip(one.read(idx), got, strict=True) for k in keys
    )
    # More threads: a part holding more than 1/threads of the batch's bytes is cut, so
    # at most `threads` more tasks; each reads videos of one part only.
    many = np.arange(N)
    for threads in (4, 16):
        cut = StoreReader(store, "ds", keys, ids, threads=threads)
        graph, plan = cut.graph(many)
        touched = {(k, store.locate("ds", k.encoder, ids[i], k.layer).part_id) for k in keys
                   for i in many}  # fmt: skip
        assert len(touched) <= len(graph) <= len(touched) + threads
        for k, _, members in plan:
            assert (
                len({store.locate("ds", k.encoder, ids[i], k.layer).part_id for i in members}) == 1
            )
        read = sorted((str(k), int(i)) for k, _, members in plan for i in members)
        assert read == sorted((str(k), i) for k in keys for i in range(N))  # each once
        assert (len(graph) > len(touched)) == (threads == 16)  # 16: some parts are cut
        for i, rows in zip(many, cut.read(many), strict=True):
            assert all(np.array_equal(rows[k], store.video("ds", k.encoder, ids[i], k.layer))
                       for k in keys)  # fmt: skip
    assert reader.read([]) == []
    with pytest.raises(IndexError):
        reader.read([N])


def test_store_source_equals_input_source(local):
    """The lazy source serves what the video-by-video source does (a feature set at 25 Hz
    from a 25 Hz and a 12.5 Hz feature)."""
    store = open_store(local)
    rows = rows_of(store)
    inp = FeatureInput.of_store(store, "ds", FEATURES, [AUD, VIS], frame_hz=25.0)
    lazy, eager = StoreSource(store, "ds", inp, rows), InputSource(store, "ds", inp, rows)
    assert np.array_equal(lazy.lengths, eager.lengths) and lazy.nbytes == eager.nbytes
    assert (lazy.dim, lazy.dtype) == (eager.dim, eager.dtype) == (20, np.float16)
    idx = np.random.default_rng(2).permutation(N)
    for a, b in zip(lazy.read(idx), eager.read(idx), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_pair_source_pairs_as_pair_rows(local):
    store = open_store(local)
    rows = rows_of(store)
    audio, visual = pair_inputs(store, "ds", AUD, VIS, frame_hz=25.0)
    for trim in (False, True):
        src = PairSource(store, "ds", audio, visual, rows, trim_silence=trim)
        assert src.dtype == np.float16
        got = src.read(np.arange(N))
        for i, (a, v) in enumerate(got):
            vid = rows["video_id"].iat[i]
            stored = {k: store.video("ds", k.encoder, vid, k.layer) for k in (AUD, VIS)}
            silence = float(rows["leading_silence_s"].iat[i]) if trim else None
            pair, skip = pair_rows(audio, visual, stored, leading_silence_s=silence)
            assert (src.skip[i], src.lengths[i]) == (skip, pair.n_rows)
            assert (src.n_audio[i], src.n_visual[i]) == (pair.n_audio_rows, pair.n_visual_rows)
            assert np.array_equal(a.astype(np.float32), pair.audio)
            assert np.array_equal(v.astype(np.float32), pair.visual)
    silent = rows.assign(leading_silence_s=np.where(np.arange(N) == 4, 9.0, 0.0))
    with pytest.raises(PairingError, match=r"no rows left to pair .* after skipping 226 silent"):
        PairSource(store, "ds", audio, visual, silent, trim_silence=True)  # fails before training


def test_a_compaction_under_a_reader_loses_nothing(tmp_path):
    url = str(tmp_path / "f.zarr")
    write_store(url)
    store = open_store(url)
    ids = store.manifest("ds")["video_id"].tolist()
    expect = [store.video("ds", "aud", v, "last") for v in ids]
    reader = StoreReader(store, "ds", [AUD], ids)
    report = compact(open_store(url, mode="a"), "ds", "aud")
    assert report.parts_after < report.parts_before  # the reader's parts are gone
    got = reader.read(np.arange(N))
    assert all(np.array_equal(g[AUD], e) for g, e in zip(got, expect, strict=True))


def test_reads_from_s3(local, s3):  # noqa: F811
    url = "s3://features/streams.zarr"
    write_store(url, **s3)
    remote, here = open_store(url, **s3), open_store(local)
    rows = rows_of(here)
    inp = FeatureInput.of_store(here, "ds", FEATURES, [AUD])
    src = StoreSource(remote, "ds", inp, rows)
    ref = StoreSource(here, "ds", inp, rows)
    assert src.reader.threads > ref.reader.threads  # more requests in flight on S3
    idx = np.random.default_rng(3).permutation(N)[:25]
    assert all(np.array_equal(a, b) for a, b in zip(src.read(idx), ref.read(idx), strict=True))
