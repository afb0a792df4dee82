"""The extraction worker: stored rows equal direct encoding, batching, resume, failures,
dry runs, OOM back-off, the CLI, and the real weight-free encoders.

The test-only encoders defined here (``toy-visual``, ``toy-audio``, ``toy-half`` at
12.5 Hz) are registered on import; test_extract_distributed.py imports them from here.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featstore.encoders import register
from featstore.encoders.base import Clip, ClipError, Encoder, EncoderSpec
from featstore.extract import VideoRef
from featstore.layout import Layer
from featstore.store import FeatureStore, open_store

TOY_DIMS: dict[Layer, int] = {0: 4, 1: 6, "last": 8}


class ToyEncoder(Encoder):
    """A deterministic numpy encoder: each row is a function of its own frame or audio.

    ``fail_on`` videos raise ClipError (wherever they are in a batch); batches of more
    than ``oom_above`` clips raise ``torch.cuda.OutOfMemoryError``.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        fail_on: Sequence[str] = (),
        oom_above: int | None = None,
        random_init: bool = False,
    ) -> None:
        super().__init__(
            spec,
            layer_dims=TOY_DIMS,
            checkpoint=None,
            checkpoint_sha256=None,
            random_init=random_init,
            device="cpu",
            compute_dtype="float32",
        )
        self.fail_on = set(fail_on)
        self.oom_above = oom_above
        self.batch_sizes: list[int] = []

    def encode(
        self, clips: Sequence[Clip], layers: Sequence[Layer]
    ) -> list[dict[Layer, np.ndarray]]:
        import torch

        self.batch_sizes.append(len(clips))
        if self.oom_above is not None and len(clips) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = []
        for clip in clips:
            if clip.video_id in self.fail_on:
                raise ClipError(f"{clip.video_id}: toy failure")
            base = self._rows(clip)  # [T, 8]
            out.append({x: base[:, : TOY_DIMS[x]] * (1.0 + 0.5 * i) for i, x in enumerate(layers)})
        return out

    def _rows(self, clip: Clip) -> np.ndarray:
        if self.spec.modality == "audio":
            n = len(clip.audio) // 640
            a = clip.audio[: n * 640].reshape(n, 640).astype(np.float64)  # [T, 640]
            feats = [a.mean(1), a.std(1), np.abs(a).max(1), a[:, :320].std(1), a[:, 320:].std(1)]
            feats += [np.abs(np.diff(a, axis=1)).mean(1), a.min(1), a.max(1)]
        else:
            f = clip.frames.astype(np.float64) / 255.0  # [T, H, W, 3]
            h = f.shape[1] // 2
            feats = [f[..., c].mean((1, 2)) for c in range(3)] + [f.std((1, 2, 3))]
            feats += [f[:, :h].mean((1, 2, 3)), f[:, h:].mean((1, 2, 3))]
            feats += [f[:, :, : f.shape[2] // 2].mean((1, 2, 3)), f.max((1, 2, 3))]
        rows = np.stack(feats, axis=1)  # [T, 8] at 25 Hz
        if self.spec.frame_hz == 12.5:  # pairs of frames, the last odd frame dropped
            n = len(rows) // 2
            rows = rows[: 2 * n].reshape(n, 2, -1).mean(1)
        return rows.astype(np.float32)


def _toy_spec(name: str, modality: str, frame_hz: float) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        family="toy",
        modality=modality,
        crop="none",
        frame_hz=frame_hz,
        dim=8,
        n_layers=1,
        default_checkpoint=None,
    )


def _loader(spec: EncoderSpec, checkpoint: str | None, **options: object) -> ToyEncoder:
    return ToyEncoder(spec, random_init=bool(options.get("random_init", False)))


TOY_VISUAL = _toy_spec("toy-visual", "visual", 25.0)
TOY_AUDIO = _toy_spec("toy-audio", "audio", 25.0)
TOY_HALF = _toy_spec("toy-half", "visual", 12.5)
for _spec in (TOY_VISUAL, TOY_AUDIO, TOY_HALF):
    register(_spec, _loader)


def import_sample(store: FeatureStore, root: Path, name: str = "sample") -> pd.DataFrame:
    """Write the sample dataset's manifest into ``store`` (as ``datasets import av1m`` does)."""
    from featstore.datasets import read_dataset

    result = read_dataset("av1m", root, strict=True)
    store.write_manifest(name, result.manifest, attrs={"root": str(result.root)})
    return result.manifest


def fresh_store(path: Path, sample_root: Path) -> FeatureStore:
    store = open_store(path, mode="a", durable=False)
    import_sample(store, sample_root)
    return store


def write_video(path: Path, n_frames: int, *, audio: bool, size: int = 64) -> Path:
    """A small H.264 clip of moving noise (with a 16 kHz AAC track when ``audio``)."""
    import av

    rng = np.random.default_rng(n_frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(n_frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            samples = (0.1 * rng.standard_normal(n_frames * 640)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
            frame.sample_rate = 16000
            frame.pts = 0
            for packet in as_.encode(frame):
                out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path


def broken_dataset(store: FeatureStore, sample_root: Path, folder: Path) -> dict[str, str]:
    """A dataset ``broken``: two good clips and broken ones. Returns {video_id: expected}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = sorted(sample_root.rglob("*.mp4"))[:2]
    files = {}
    for i, src in enumerate(good):
        files[f"good{i}"] = shutil.copy(src, folder / f"good{i}.mp4")
    data = good[0].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.mp4").write_bytes(b"")
    write_video(folder / "silent.mp4", 30, audio=False)
    table = pd.DataFrame(
        {
            "video_id": ["good0", "good1", "truncated", "garbage", "empty", "silent", "missing"],
            "path": [
                "good0.mp4",
                "good1.mp4",
                "truncated.mp4",
                "garbage.mp4",
                "empty.mp4",
                "silent.mp4",
                "missing.mp4",
            ],
            "label": [0, 0, 0, 0, 0, 0, 0],
            "split": ["test"] * 7,
        }
    )
    store.write_manifest("broken", table, attrs={"root": str(folder)})
    return {
        "truncated": "CorruptMediaError",
        "garbage": "UnsupportedMediaError",
        "empty": "EmptyMediaError",
        "missing": "MediaNotFoundError",
    }


# ------------------------------------------------------------------------------ helpers

ALL_LAYERS = [0, 1, "last"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from featstore.sample import make_sample

    root = tmp_path_factory.mktemp("sample")
    return make_sample(root, n_clips=6, seed=1, size=64, duration_s=(1.0, 2.0)).root


def stored_rows(
    store: FeatureStore, dataset: str, encoder: str, layers: Sequence[Layer]
) -> dict[tuple[str, Layer], np.ndarray]:
    store.refresh()
    ids = store.video_ids(dataset, encoder, layers[0])
    return {(v, x): store.video(dataset, encoder, v, x) for v in ids for x in layers}


def assert_same_rows(a: dict, b: dict) -> None:
    assert sorted(a, key=str) == sorted(b, key=str)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def direct_rows(encoder: Encoder, path: str, layers: Sequence[Layer]) -> dict[Layer, np.ndarray]:
    from featstore.media import decode

    spec = encoder.spec
    media = decode(path, video=spec.needs_video, audio=spec.needs_audio)
    clip = Clip(video_id="direct", frames=media.frames, audio=media.audio)
    return encoder.encode([clip], layers)[0]


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("spec", "dtype"),
    [(TOY_VISUAL, "float16"), (TOY_AUDIO, "float16"), (TOY_HALF, "float32")],
    ids=["visual-25hz-f16", "audio-25hz-f16", "visual-12.5hz-f32"],
)
def test_stored_rows_equal_direct_encoding(tmp_path, sample_root, spec, dtype) -> None:
    from featstore.extract import extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    summary = extract(
        store, dataset="sample", encoder=spec.name, layers="all", dtype=dtype, batch_frames=120
    )
    manifest = store.manifest("sample")
    assert summary.videos_done == len(manifest) and summary.videos_failed == 0
    encoder = ToyEncoder(spec)
    rows = 0
    for video_id, path in zip(manifest["video_id"], manifest["path"], strict=True):
        direct = direct_rows(encoder, str(sample_root / path), ALL_LAYERS)
        for layer in ALL_LAYERS:
            got = store.video("sample", spec.name, video_id, layer)
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, direct[layer].astype(dtype))
        rows += len(direct["last"])
    assert summary.rows == rows
    assert summary.bytes_written == rows * sum(TOY_DIMS.values()) * np.dtype(dtype).itemsize
    info = store.encoder_info("sample", spec.name)
    assert info.frame_hz == spec.frame_hz and info.dtype == dtype


def test_batched_equals_one_at_a_time(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    singles, batched = ToyEncoder(TOY_VISUAL), ToyEncoder(TOY_VISUAL)
    a = fresh_store(tmp_path / "a.zarr", sample_root)
    b = fresh_store(tmp_path / "b.zarr", sample_root)
    extract(a, dataset="sample", encoder=singles, layers="all", batch_frames=1, num_workers=0)
    extract(b, dataset="sample", encoder=batched, layers="all", batch_frames=10_000, num_workers=3)
    assert set(singles.batch_sizes) == {1}
    assert max(batched.batch_sizes) == 6
    assert_same_rows(
        stored_rows(a, "sample", "toy-visual", ALL_LAYERS),
        stored_rows(b, "sample", "toy-visual", ALL_LAYERS),
    )


class Interrupted(Exception):
    pass


def test_interrupted_run_resumed_equals_uninterrupted(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    whole = fresh_store(tmp_path / "whole.zarr", sample_root)
    extract(whole, dataset="sample", encoder="toy-audio", layers="0,last", batch_frames=60)

    def stop_after_two(progress) -> None:
        if progress.videos_done >= 2:
            raise Interrupted

    store = fresh_store(tmp_path / "resumed.zarr", sample_root)
    with pytest.raises(Interrupted):
        extract(
            store,
            dataset="sample",
            encoder="toy-audio",
            layers="0,last",
            batch_frames=1,
            on_progress=stop_after_two,
        )
    store.refresh()
    committed = store.committed_videos("sample", "toy-audio", [0, "last"])
    assert 2 <= len(committed) < 6  # what was buffered at the interruption is committed
    summary = extract(store, dataset="sample", encoder="toy-audio", layers="0,last")
    assert summary.videos_skipped == len(committed)
    assert summary.videos_done == 6 - len(committed)
    again = extract(store, dataset="sample", encoder="toy-audio", layers="0,last")
    assert (again.videos_done, again.videos_skipped) == (0, 6)
    layers = [0, "last"]
    assert_same_rows(
        stored_rows(whole, "sample", "toy-audio", layers),
        stored_rows(store, "sample", "toy-audio", layers),
    )


def test_limit_and_split_then_resume(tmp_path, sample_root) -> None:
    from featstore.extract import ExtractError, extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    manifest = store.manifest("sample")
    first = extract(store, dataset="sample", encoder="toy-visual", limit=2)
    assert first.videos_done == 2
    assert extract(store, dataset="sample", encoder="toy-visual", limit=2).videos_done == 0
    val = extract(store, dataset="sample", encoder="toy-visual", split="val")
    n_val = int((manifest["split"] == "val").sum())
    assert val.videos_done + val.videos_skipped == n_val
    rest = extract(store, dataset="sample", encoder="toy-visual")
    assert rest.videos_done + rest.videos_skipped == 6
    assert len(stored_rows(store, "sample", "toy-visual", ["last"])) == 6
    with pytest.raises(ExtractError, match="no videos in split 'nope'"):
        extract(store, dataset="sample", encoder="toy-visual", split="nope")


def test_broken_files_are_recorded_and_skipped(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    store = open_store(tmp_path / "s.zarr", mode="a", durable=False)
    expected = broken_dataset(store, sample_root, tmp_path / "broken")
    summary = extract(store, dataset="broken", encoder="toy-audio", num_workers=2)
    assert (summary.videos_done, summary.videos_failed) == (2, 5)
    failures = store.failures("broken", "toy-audio").set_index("video_id")
    assert failures.loc["silent", "error_type"] == "NoAudioStreamError"
    for video_id, error_type in expected.items():
        assert failures.loc[video_id, "error_type"] == error_type, video_id
    assert not failures["resolved"].any()
    assert set(store.video_ids("broken", "toy-audio", "last")) == {"good0", "good1"}
    # a visual encoder reads the silent clip fine
    visual = extract(store, dataset="broken", encoder="toy-visual")
    assert (visual.videos_done, visual.videos_failed) == (3, 4)


def test_too_short_clip_fails_alone(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    folder = tmp_path / "short"
    write_video(folder / "one.mp4", 1, audio=False)
    write_video(folder / "two.mp4", 2, audio=False)
    table = pd.DataFrame({"video_id": ["one", "two"], "path": ["one.mp4", "two.mp4"]})
    store.write_manifest("short", table, attrs={"root": str(folder)})
    summary = extract(store, dataset="short", encoder="toy-half")
    assert (summary.videos_done, summary.videos_failed) == (1, 1)
    failures = store.failures("short", "toy-half")
    assert failures["error_type"].tolist() == ["ClipTooShortError"]
    assert store.video("short", "toy-half", "two", "last").shape == (1, 8)


def test_clip_error_fails_only_its_video(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    bad = sorted(store.manifest("sample")["video_id"])[3]
    encoder = ToyEncoder(TOY_VISUAL, fail_on=[bad])
    summary = extract(store, dataset="sample", encoder=encoder, batch_frames=10_000)
    assert (summary.videos_done, summary.videos_failed) == (5, 1)
    failures = store.failures("sample", "toy-visual")
    assert failures["video_id"].tolist() == [bad]
    assert failures["error_type"].tolist() == ["ClipError"]


def test_out_of_memory_back_off_gives_the_same_rows(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    a = fresh_store(tmp_path / "a.zarr", sample_root)
    b = fresh_store(tmp_path / "b.zarr", sample_root)
    extract(a, dataset="sample", encoder="toy-visual", layers="all", batch_frames=1)
    small = ToyEncoder(TOY_VISUAL, oom_above=2)
    summary = extract(b, dataset="sample", encoder=small, layers="all", batch_frames=10_000)
    assert summary.oom_splits >= 1 and summary.videos_failed == 0
    assert max(small.batch_sizes) == 6 and small.batch_sizes[-1] <= 2
    assert_same_rows(
        stored_rows(a, "sample", "toy-visual", ALL_LAYERS),
        stored_rows(b, "sample", "toy-visual", ALL_LAYERS),
    )
    # a video that does not fit even alone fails with the OOM error, the run goes on
    c = fresh_store(tmp_path / "c.zarr", sample_root)
    none_fit = ToyEncoder(TOY_VISUAL, oom_above=0)
    summary = extract(c, dataset="sample", encoder=none_fit, batch_frames=10_000)
    assert (summary.videos_done, summary.videos_failed) == (0, 6)
    assert set(c.failures("sample", "toy-visual")["error_type"]) == {"OutOfMemoryError"}


def test_dry_run_plans_and_writes_nothing(tmp_path, sample_root, monkeypatch) -> None:
    from featstore.extract import extract, plan, plan_extraction

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = plan_extraction(store, dataset="sample", encoder="toy-half", layers="all")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    manifest = store.manifest("sample")
    frames = sum(round(d * 25) for d in manifest["duration_s"])
    assert (result.videos_selected, result.videos_skipped, result.videos_to_run) == (6, 0, 6)
    assert result.frames == frames
    assert [e.layer for e in result.layers] == ALL_LAYERS
    rows = sum(round(d * 25) // 2 for d in manifest["duration_s"])
    assert result.rows == rows
    assert result.bytes_total == rows * sum(TOY_DIMS.values()) * 2
    assert result.warnings == ()
    monkeypatch.setattr(plan, "LARGE_STORE_BYTES", 10)
    warned = plan_extraction(store, dataset="sample", encoder="toy-half", layers="all")
    assert "storing 3 layers of toy-half" in warned.warnings[0]
    # after a partial run the plan counts what is left
    extract(store, dataset="sample", encoder="toy-half", layers="all", limit=2)
    after = plan_extraction(store, dataset="sample", encoder="toy-half", layers="all")
    assert (after.videos_skipped, after.videos_to_run) == (2, 4)


def test_options_are_checked(tmp_path, sample_root) -> None:
    from featstore.encoders import EncoderError
    from featstore.extract import ExtractError, extract
    from featstore.store import EncoderMismatchError

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    with pytest.raises(ExtractError, match="dtype"):
        extract(store, dataset="sample", encoder="toy-visual", dtype="int8")
    with pytest.raises(ExtractError, match="batch_frames"):
        extract(store, dataset="sample", encoder="toy-visual", batch_frames=0)
    with pytest.raises(EncoderError, match="no layer '7'"):
        extract(store, dataset="sample", encoder="toy-visual", layers="7")
    extract(store, dataset="sample", encoder="toy-visual", limit=1)
    with pytest.raises(EncoderMismatchError, match="dtype"):
        extract(store, dataset="sample", encoder="toy-visual", dtype="float32")


def test_progress_reports_counts(tmp_path, sample_root) -> None:
    from featstore.extract import extract

    store = open_store(tmp_path / "s.zarr", mode="a", durable=False)
    broken_dataset(store, sample_root, tmp_path / "broken")
    seen = []
    extract(store, dataset="broken", encoder="toy-visual", on_progress=seen.append)
    last = seen[-1]
    assert (last.videos_total, last.videos_done, last.videos_failed) == (7, 3, 4)
    assert last.frames > 0 and last.frames_per_s > 0 and last.eta_s == 0
    assert all(a.videos_finished <= b.videos_finished for a, b in itertools.pairwise(seen))


# ------------------------------------------------------------- store_as, loader options

OPTION_LOADS: list[dict[str, object]] = []
"""Options each ``toy-options`` load received, in order (also on in-process Dask workers)."""


def _options_loader(spec: EncoderSpec, checkpoint: str | None, **options: object) -> ToyEncoder:
    OPTION_LOADS.append({k: v for k, v in options.items() if k not in ("device", "dtype")})
    return ToyEncoder(spec, random_init=bool(options.get("random_init", False)))


register(_toy_spec("toy-options", "visual", 25.0), _options_loader)


def test_random_init_stored_beside_the_trained_features(tmp_path, sample_root) -> None:
    from featstore.errors import EncoderMismatchError
    from featstore.extract import extract, plan_extraction

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    trained = extract(store, dataset="sample", encoder="toy-visual", layers="0,last")
    assert trained.videos_done == 6
    # without store_as the trained features would count as done: refuse, suggest a name
    with pytest.raises(EncoderMismatchError, match="--store-as toy-visual-random") as info:
        extract(store, dataset="sample", encoder="toy-visual", random_init=True, layers="0,last")
    assert "random_init: False stored, True given" in str(info.value)
    with pytest.raises(EncoderMismatchError, match="--store-as toy-visual-random"):
        plan_extraction(store, dataset="sample", encoder="toy-visual", random_init=True)
    plan = plan_extraction(
        store, dataset="sample", encoder="toy-visual", random_init=True, store_as="toy-random"
    )
    assert (plan.stored_name, plan.encoder, plan.videos_to_run) == ("toy-random", "toy-visual", 6)

    def stop_after_two(progress) -> None:
        if progress.videos_done >= 2:
            raise Interrupted

    args = {"dataset": "sample", "encoder": "toy-visual", "random_init": True, "layers": "0,last"}
    with pytest.raises(Interrupted):
        extract(store, **args, store_as="toy-random", batch_frames=1, on_progress=stop_after_two)
    store.refresh()
    committed = store.committed_videos("sample", "toy-random", [0, "last"])
    assert 2 <= len(committed) < 6
    resumed = extract(store, **args, store_as="toy-random")
    assert (resumed.videos_skipped, resumed.videos_done) == (len(committed), 6 - len(committed))
    again = extract(store, **args, store_as="toy-random")
    assert (again.videos_done, again.videos_skipped) == (0, 6)

    assert sorted(store.encoders("sample")) == ["toy-random", "toy-visual"]
    random_info = store.encoder_info("sample", "toy-random")
    assert random_info.name == "toy-random" and random_info.random_init
    assert random_info.extra == {"family": "toy", "encoder": "toy-visual"}
    assert not store.encoder_info("sample", "toy-visual").random_init
    # the toy encoder ignores random_init, so both names hold the same rows
    assert_same_rows(
        stored_rows(store, "sample", "toy-visual", [0, "last"]),
        stored_rows(store, "sample", "toy-random", [0, "last"]),
    )


def test_store_as_names_are_checked(tmp_path, sample_root) -> None:
    from featstore.extract import ExtractError, extract, plan_extraction

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    for bad in ("clip/random", "-random", "_commits", "", "x" * 129):
        with pytest.raises(ExtractError, match="cannot store features as"):
            extract(store, dataset="sample", encoder="toy-visual", store_as=bad)
        with pytest.raises(ExtractError, match="cannot store features as"):
            plan_extraction(store, dataset="sample", encoder="toy-visual", store_as=bad)
    with pytest.raises(ExtractError, match="another registered encoder's name"):
        extract(store, dataset="sample", encoder="toy-visual", store_as="toy-audio")
    assert store.encoders("sample") == []
    # the encoder's own name is the default, not a rename
    summary = extract(store, dataset="sample", encoder="toy-visual", store_as="toy-visual", limit=1)
    assert summary.videos_done == 1
    assert store.encoder_info("sample", "toy-visual").extra["encoder"] == "toy-visual"


def test_encoder_options_reach_the_loader_and_key_the_cache(tmp_path, sample_root) -> None:
    import pickle

    from featstore.extract import (
        ExtractError,
        ExtractTask,
        extract,
        plan_extraction,
        run_task,
        worker,
    )

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    OPTION_LOADS.clear()
    options = {"trust_checkpoint": True, "pooling": "cls"}
    extract(store, dataset="sample", encoder="toy-options", encoder_options=options, limit=1)
    plan_extraction(store, dataset="sample", encoder="toy-options", encoder_options=options)
    assert [{"random_init": False, **options}] * 2 == OPTION_LOADS
    with pytest.raises(ExtractError, match="registered name"):
        extract(store, dataset="sample", encoder=ToyEncoder(TOY_VISUAL), encoder_options=options)
    with pytest.raises(ExtractError, match="identifiers"):
        extract(store, dataset="sample", encoder="toy-options", encoder_options={"a-b": 1})

    # a task carries its options and store name through pickling (as to a Dask worker)
    manifest = store.manifest("sample")
    videos = tuple(
        VideoRef(v, str(sample_root / p))
        for v, p in zip(manifest["video_id"], manifest["path"], strict=True)
    )[:2]
    task = ExtractTask(
        store=store,
        dataset="sample",
        encoder="toy-options",
        checkpoint=None,
        random_init=False,
        layers=("last",),
        dtype="float16",
        device="cpu",
        batch_frames=100,
        num_workers=0,
        videos=videos,
        store_as="toy-options-cls",
        options=(("pooling", "cls"), ("window", [1, 2])),
    )
    sent = pickle.loads(pickle.dumps(task))
    assert (sent.store_as, sent.options, sent.encoder_key) == (
        task.store_as,
        task.options,
        task.encoder_key,
    )
    OPTION_LOADS.clear()
    worker._ENCODERS.clear()
    assert run_task(sent).videos_done == 2
    assert run_task(dataclasses.replace(sent, videos=videos[:1])).videos_skipped == 1
    assert OPTION_LOADS == [{"random_init": False, "pooling": "cls", "window": [1, 2]}]
    other = dataclasses.replace(sent, options=(("pooling", "mean"),))
    assert other.encoder_key != sent.encoder_key
    run_task(other)  # same store name, other options: a second load
    assert OPTION_LOADS[-1] == {"random_init": False, "pooling": "mean"}
    store.refresh()
    assert store.committed_videos("sample", "toy-options-cls", ["last"]) == {
        v.video_id for v in videos
    }
    assert len(store.committed_videos("sample", "toy-options", ["last"])) == 1  # untouched


def test_store_as_and_options_on_a_dask_cluster(tmp_path, sample_root) -> None:
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from featstore.errors import EncoderMismatchError
    from featstore.extract import extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    extract(store, dataset="sample", encoder="toy-options", limit=3)
    OPTION_LOADS.clear()
    args = {"dataset": "sample", "encoder": "toy-options", "random_init": True}
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(EncoderMismatchError, match="--store-as toy-options-random"):
            extract(store, **args, cluster=client)
        summary = extract(
            store,
            **args,
            cluster=client,
            store_as="toy-options-random",
            encoder_options={"trust_checkpoint": True},
        )
    assert (summary.videos_done, summary.videos_skipped) == (6, 0)
    assert {"random_init": True, "trust_checkpoint": True} in OPTION_LOADS
    store.refresh()
    assert store.encoder_info("sample", "toy-options-random").random_init
    assert len(store.committed_videos("sample", "toy-options-random", ["last"])) == 6


# ---------------------------------------------------------------------------------- CLI


def test_cli_extract_dry_run_and_errors(tmp_path, sample_root) -> None:
    from typer.testing import CliRunner

    from featstore.cli.main import app

    runner = CliRunner()
    url = str(tmp_path / "s.zarr")
    fresh_store(Path(url), sample_root)
    base = ["extract", "--encoder", "toy-visual", "--on", "sample", "--store", url]
    dry = runner.invoke(app, [*base, "--dry-run", "--layers", "all"])
    assert dry.exit_code == 0, dry.output
    assert "6 videos to extract" in dry.output and "total" in dry.output
    assert "toy-visual" not in open_store(url).encoders("sample")
    run = runner.invoke(app, [*base, "--limit", "4", "--batch-frames", "50"])
    assert run.exit_code == 0, run.output
    assert "4 videos extracted, 0 already in the store, 0 failed" in run.output
    again = runner.invoke(app, base)
    assert "2 videos extracted, 4 already in the store" in again.output
    unknown = runner.invoke(app, ["extract", "--encoder", "nope", "--on", "sample", "--store", url])
    assert unknown.exit_code == 2 and "not a registered encoder" in unknown.output
    for args, message in [
        (["--on", "missing"], "error: no dataset 'missing'"),
        (["--layers", "9"], "error: encoder toy-visual has no layer '9'"),
        (["--on", "sample:nope"], "error: dataset sample has no videos in split 'nope'"),
        (["--cluster", "udp://x"], "error: cluster must be 'local' or a tcp:// address"),
    ]:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output


def test_cli_store_as_and_loader_options(tmp_path, sample_root) -> None:
    from typer.testing import CliRunner

    from featstore.cli.main import app

    runner = CliRunner()
    url = str(tmp_path / "s.zarr")
    fresh_store(Path(url), sample_root)
    base = ["extract", "--encoder", "toy-options", "--on", "sample", "--store", url]
    assert runner.invoke(app, [*base, "--limit", "2"]).exit_code == 0
    refused = runner.invoke(app, [*base, "--random-init"])
    assert refused.exit_code == 1
    assert "error: sample/toy-options already holds features" in refused.output
    assert "--store-as toy-options-random" in refused.output
    OPTION_LOADS.clear()
    options = ["--option", "pooling=cls", "--option", "window=[1, 2]", "--option", "tag=a=b"]
    random = [*base, "--random-init", "--store-as", "toy-options-random", "--trust-checkpoint"]
    dry = runner.invoke(app, [*random, *options, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: toy-options-random (toy-options) on sample: 6 videos" in dry.output
    run = runner.invoke(app, [*random, *options, "--limit", "4"])
    assert run.exit_code == 0, run.output
    assert "toy-options-random (toy-options) on sample: 4 videos extracted" in run.output
    again = runner.invoke(app, [*random, *options])
    assert "2 videos extracted, 4 already in the store" in again.output
    expected = {
        "random_init": True,
        "pooling": "cls",
        "window": [1, 2],
        "tag": "a=b",
        "trust_checkpoint": True,
    }
    assert [expected] * 3 == OPTION_LOADS
    assert open_store(url).encoder_info("sample", "toy-options-random").random_init
    bad_name = runner.invoke(app, [*base, "--store-as", "a/b"])
    assert bad_name.exit_code == 1
    assert "error: cannot store features as 'a/b'" in bad_name.output
    bad_option = runner.invoke(app, [*base, "--option", "pooling"])
    assert bad_option.exit_code == 2 and "is not KEY=VALUE" in bad_option.output


def test_cli_reports_failures(tmp_path, sample_root) -> None:
    import json
    from collections import Counter

    from typer.testing import CliRunner

    from featstore.cli.errors import EXIT_VIDEOS_FAILED
    from featstore.cli.main import app

    url = str(tmp_path / "s.zarr")
    broken = broken_dataset(open_store(url, mode="a"), sample_root, tmp_path / "broken")
    args = ["extract", "--encoder", "toy-audio", "--on", "broken", "--store", url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 videos extracted, 0 already in the store, 5 failed" in result.output
    assert "5 videos failed (recorded in the store" in result.output
    # the reasons: every error type with its count and the videos, as the store recorded them
    expected = {**broken, "silent": "NoAudioStreamError"}
    for error_type in set(expected.values()):
        videos = sorted(v for v, t in expected.items() if t == error_type)
        line = next(x for x in result.output.splitlines() if f" {error_type}: " in x)
        assert line.split()[0] == str(len(videos)), line
        examples = result.output.splitlines()[result.output.splitlines().index(line) + 1]
        assert sorted(examples.split("e.g. ")[1].split(", ")) == videos
    listing = f"all of them: featstore store failures {url} --dataset broken --encoder toy-audio"
    assert listing in result.output
    # the command it names lists each video with its error type
    listed = CliRunner().invoke(
        app, ["store", "failures", url, "--dataset", "broken", "--encoder", "toy-audio", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.output)
    assert {f["video_id"]: f["error_type"] for f in doc["failures"]} == expected
    assert {g["error_type"]: g["videos"] for g in doc["groups"]} == dict(Counter(expected.values()))
    # --fail-on-error: the same run in a pipeline exits 3 (the failed videos are retried)
    again = CliRunner().invoke(app, [*args, "--fail-on-error"])
    assert again.exit_code == EXIT_VIDEOS_FAILED == 3, again.output
    assert "0 videos extracted, 2 already in the store, 5 failed" in again.output
    good = CliRunner().invoke(
        app, [*args, "--on", "broken:test", "--limit", "2", "--fail-on-error"]
    )
    assert good.exit_code == 0, good.output


# --------------------------------------------------------------------- real encoders


def test_logfbank_rows_equal_direct_encoding(tmp_path, sample_root) -> None:
    from featstore.encoders import load_encoder
    from featstore.extract import extract

    store = fresh_store(tmp_path / "s.zarr", sample_root)
    summary = extract(store, dataset="sample", encoder="logfbank", dtype="float32")
    assert (summary.videos_done, summary.videos_failed) == (6, 0)
    encoder = load_encoder("logfbank")
    for video_id, path in zip(
        *store.manifest("sample")[["video_id", "path"]].T.values, strict=True
    ):
        direct = direct_rows(encoder, str(sample_root / path), ["last"])["last"]
        np.testing.assert_array_equal(store.video("sample", "logfbank", video_id, "last"), direct)


@pytest.mark.parametrize("family", ["clip", "wav2vec2", "videomae"])
def test_tiny_hf_encoders_rows_equal_direct_encoding(tmp_path, sample_root, family) -> None:
    from featstore.encoders import load_encoder
    from featstore.encoders.tiny import save_tiny_checkpoint
    from featstore.extract import extract

    checkpoint = str(save_tiny_checkpoint(family, tmp_path / family))
    batched = fresh_store(tmp_path / "b.zarr", sample_root)
    summary = extract(
        batched,
        dataset="sample",
        encoder=family,
        checkpoint=checkpoint,
        layers="all",
        dtype="float32",
        batch_frames=1000,
    )
    assert (summary.videos_done, summary.videos_failed) == (6, 0)
    single = fresh_store(tmp_path / "s.zarr", sample_root)
    extract(
        single,
        dataset="sample",
        encoder=family,
        checkpoint=checkpoint,
        layers="all",
        dtype="float32",
        batch_frames=1,
    )
    encoder = load_encoder(family, checkpoint)
    layers = encoder.resolve_layers("all")
    a = stored_rows(batched, "sample", family, layers)
    b = stored_rows(single, "sample", family, layers)
    assert sorted(a, key=str) == sorted(b, key=str)
    for key in a:  # padding-safe up to float rounding in batched matmuls
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4, err_msg=str(key))
    manifest = store_paths(batched)
    video_id, path = next(iter(manifest.items()))
    direct = direct_rows(encoder, str(sample_root / path), layers)
    for layer in layers:
        np.testing.assert_allclose(
            batched.video("sample", family, video_id, layer), direct[layer], rtol=1e-4, atol=1e-4
        )
    assert batched.encoder_info("sample", family).frame_hz == encoder.spec.frame_hz


def store_paths(store: FeatureStore) -> dict[str, str]:
    manifest = store.manifest("sample")
    return dict(zip(manifest["video_id"], manifest["path"], strict=True))


def test_mouth_crops_reuse_cached_tracks(tmp_path, monkeypatch) -> None:
    from featstore.crops import TRACKS_ENCODER
    from featstore.encoders import get_spec, load_encoder
    from featstore.extract import extract
    from featstore.sample import make_sample

    root = make_sample(tmp_path / "faces", n_clips=2, seed=2, duration_s=(1.0, 1.5)).root
    store = fresh_store(tmp_path / "s.zarr", root)
    first = extract(store, dataset="sample", encoder="mouth-pixels", dtype="float32")
    assert (first.videos_done, first.videos_failed) == (2, 0), store.failures(
        "sample", "mouth-pixels"
    )
    store.refresh()
    assert len(store.committed_videos("sample", TRACKS_ENCODER, ["landmarks", "boxes"])) == 2

    # a second mouth-crop encoder must reuse the cached tracks, never track again
    def no_tracking(*args, **kwargs):
        raise AssertionError("tracked although the tracks are cached")

    monkeypatch.setattr("featstore.landmarks.track_faces", no_tracking)
    spec = dataclasses.replace(get_spec("mouth-pixels"), name="mouth-pixels-again")
    register(
        spec,
        lambda spec, checkpoint, **kw: type(load_encoder("mouth-pixels"))(
            spec, device="cpu", dtype="float32"
        ),
    )
    second = extract(store, dataset="sample", encoder="mouth-pixels-again", dtype="float32")
    assert (second.videos_done, second.videos_failed) == (2, 0)
    for video_id in store_paths(store):
        np.testing.assert_array_equal(
            store.video("sample", "mouth-pixels", video_id, "last"),
            store.video("sample", "mouth-pixels-again", video_id, "last"),
        )


def test_no_face_fails_the_video_without_fallback(tmp_path) -> None:
    pytest.importorskip("dlib")
    from featstore.extract import extract

    folder = tmp_path / "noface"
    write_video(folder / "noise.mp4", 10, audio=False, size=96)
    store = open_store(tmp_path / "s.zarr", mode="a", durable=False)
    table = pd.DataFrame({"video_id": ["noise"], "path": ["noise.mp4"]})
    store.write_manifest("noface", table, attrs={"root": str(folder)})
    summary = extract(store, dataset="noface", encoder="mouth-pixels")
    assert (summary.videos_done, summary.videos_failed) == (0, 1)
    assert store.failures("noface", "mouth-pixels")["error_type"].tolist() == ["NoFaceError"]


def test_length_batches_respect_the_frame_budget() -> None:
    from featstore.extract.batching import length_batches

    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 120, 200)]
    items = list(enumerate(lengths))
    batches = list(length_batches(items, length=lambda it: it[1], batch_frames=300))
    assert sorted(i for b in batches for i, _ in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or len(b) * max(n for _, n in b) <= 300
    padded = sum(len(b) * max(n for _, n in b) for b in batches)
    assert padded < 1.2 * sum(lengths)  # sorting windows keeps padding small
    with pytest.raises(ValueError, match="batch_frames"):
        list(length_batches(items, length=lambda it: it[1], batch_frames=0))


def test_importing_extract_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, featstore.extract, featstore.cli.extract; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
