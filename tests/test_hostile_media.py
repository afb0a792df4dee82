"""Fault injection with hostile media (issue 13): a corpus made at test time goes through
``featstore extract`` (Python and CLI) and ``POST /v1/score``.

Each case asserts: no crash, every bad video recorded in ``_failures`` with its typed
reason, every good video's rows identical to a clean run of the good videos alone,
``store verify`` passes; over HTTP a 4xx with the reason (never a 5xx), and no
temporary file left behind.
"""

from __future__ import annotations

import re
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from featstore.store import FeatureStore, open_store

from media_factory import (  # isort: skip
    garble,
    lie_about_duration,
    tones,
    write_media,
    write_silence,
    write_streams_without_packets,
)
from test_extract import (  # isort: skip  (importing it registers the toy-* encoders)
    TOY_VISUAL,
    ToyEncoder,
    assert_same_rows,
    stored_rows,
)


@dataclass(frozen=True)
class Case:
    """A corpus file and what extraction makes of it per modality: ``None`` (its rows are
    stored) or ``(error type, regex of the recorded message)``."""

    file: str
    audio: tuple[str, str] | None
    visual: tuple[str, str] | None


NO_AUDIO = ("NoAudioStreamError", "no audio stream")
NO_VIDEO = ("NoVideoStreamError", "no video stream")
HUGE = ("FrameSizeLimitError", r"8000x8000 \(64\.0 MP, declared by the stream\).*8\.3 MP")
CASES: dict[str, Case] = {
    # good media, including the multichannel audio that crashed PyAV
    "good0": Case("good0.mp4", None, None),
    "good1": Case("good1.mp4", None, None),
    "aac71": Case("aac71.mp4", None, None),  # 8 planes (fltp)
    "opus51": Case("opus51.mkv", None, None),
    "pcm3": Case("pcm3.mkv", None, None),  # 3 channels, order unknown, 22.05 kHz
    "pcm24": Case("pcm24.mkv", None, None),  # 22.2: 24 channels
    "audio_only": Case("audio_only.mka", None, NO_VIDEO),
    "no_audio": Case("no_audio.mp4", NO_AUDIO, None),
    # says 1 s, holds 30 s of video: within the default 600 s, so it is extracted (all of it)
    "lying_short": Case("lying_short.mkv", NO_AUDIO, None),
    # hostile
    "huge": Case("huge.mp4", HUGE, HUGE),
    "long_silent": Case(
        "long_silent.mkv",
        ("DurationLimitError", r"audio lasts 700\.0 s by its header"),
        ("DurationLimitError", r"video lasts 700\.0 s by its header"),
    ),
    "lying_silent": Case(
        "lying_silent.mkv",
        ("DurationLimitError", r"stopped at 600\.\d s, though its header declares 1\.0 s"),
        ("CorruptMediaError", r"100\.0 s far past the declared duration 1\.0 s"),
    ),
    "truncated": Case("truncated.mp4", *[("CorruptMediaError", "corrupt or truncated media")] * 2),
    "garbled": Case(
        "garbled.mkv",
        ("CorruptMediaError", "truncated audio"),
        ("CorruptMediaError", "truncated video"),
    ),
    "no_packets": Case("no_packets.mkv", *[("CorruptMediaError", "cannot be opened")] * 2),
    "empty": Case("empty.mp4", *[("EmptyMediaError", r"empty file \(0 bytes\)")] * 2),
    "text": Case("text.mp4", *[("UnsupportedMediaError", "not a supported media file")] * 2),
    "missing": Case("missing.mp4", *[("MediaNotFoundError", "no such file")] * 2),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus folder (every file small; about 2 s to make, mostly the 8000x8000 frame)."""
    import av

    from featstore.sample import make_sample

    d = tmp_path_factory.mktemp("hostile")
    sample = make_sample(d / "sample", n_clips=2, seed=3, size=64, duration_s=(1.0, 1.5))
    for i, src in enumerate(sorted(sample.root.rglob("*.mp4"))):
        shutil.copy(src, d / f"good{i}.mp4")
    opus = "libopus" if "libopus" in av.codecs_available else "ac3"
    video = {"video_size": (64, 64)}
    write_media(d / "aac71.mp4", audio=tones(8, 1.2, 48_000), sample_rate_hz=48_000,
                acodec="aac", **video)  # fmt: skip
    write_media(d / "opus51.mkv", audio=tones(6, 1.2, 48_000), sample_rate_hz=48_000,
                acodec=opus, **video)  # fmt: skip
    pcm3 = write_media(d / "pcm3.mkv", audio=tones(3, 1.2, 22_050), sample_rate_hz=22_050, **video)
    write_media(d / "pcm24.mkv", audio=tones(24, 1.0, 16_000), **video)
    write_media(d / "audio_only.mka", audio=tones(2, 1.2, 16_000), fmt="matroska")
    write_media(d / "no_audio.mp4", n_frames=30, **video)
    lie_about_duration(
        write_media(d / "short.mkv", video_size=(32, 32), n_frames=750), d / "lying_short.mkv", 1.0
    )
    write_media(d / "huge.mp4", audio=tones(1, 0.04, 16_000), video_size=(8000, 8000), n_frames=1)
    write_silence(d / "long_silent.mkv", 700.0, frame_every_s=50.0)
    lie_about_duration(d / "long_silent.mkv", d / "lying_silent.mkv", 1.0)
    data = (d / "good0.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    garble(pcm3, d / "garbled.mkv")
    write_streams_without_packets(d / "no_packets.mkv")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    return d


def good(modality: str) -> list[str]:
    return [v for v, c in CASES.items() if getattr(c, modality) is None]


def bad(modality: str) -> dict[str, tuple[str, str]]:
    return {v: getattr(c, modality) for v, c in CASES.items() if getattr(c, modality)}


def dataset(store: FeatureStore, name: str, folder: Path, video_ids: list[str]) -> None:
    table = pd.DataFrame(
        {
            "video_id": video_ids,
            "path": [CASES[v].file for v in video_ids],
            "label": [0] * len(video_ids),
            "split": ["test"] * len(video_ids),
        }
    )
    store.write_manifest(name, table, attrs={"root": str(folder)})


def check_failures(store: FeatureStore, name: str, encoder: str, modality: str) -> None:
    table = store.failures(name, encoder).sort_values("time_ns")
    failures = table.drop_duplicates("video_id", keep="last").set_index("video_id")  # the latest
    expected = bad(modality)
    assert sorted(failures.index) == sorted(expected)
    for video_id, (error_type, reason) in expected.items():
        row = failures.loc[video_id]
        assert row["error_type"] == error_type, (video_id, row["message"])
        assert pd.Series([row["message"]]).str.contains(reason).all(), (video_id, row["message"])
        assert not row["resolved"]


@pytest.mark.parametrize(
    ("encoder", "modality"), [("toy-audio", "audio"), ("toy-visual", "visual")]
)
def test_extract_survives_the_hostile_corpus(
    tmp_path: Path, corpus: Path, encoder: str, modality: str
) -> None:
    from featstore.extract import extract
    from featstore.maintenance import verify

    store = open_store(tmp_path / "hostile.zarr", mode="a", durable=False)
    dataset(store, "hostile", corpus, list(CASES))
    summary = extract(store, dataset="hostile", encoder=encoder, num_workers=2, batch_frames=400)
    assert (summary.videos_done, summary.videos_failed) == (len(good(modality)), len(bad(modality)))
    check_failures(store, "hostile", encoder, modality)

    clean = open_store(tmp_path / "clean.zarr", mode="a", durable=False)
    dataset(clean, "hostile", corpus, good(modality))
    assert extract(clean, dataset="hostile", encoder=encoder, num_workers=0).videos_failed == 0
    layers = ["last"]
    assert_same_rows(
        stored_rows(store, "hostile", encoder, layers),
        stored_rows(clean, "hostile", encoder, layers),
    )
    assert store.video("hostile", encoder, "aac71", "last").shape[0] == 30  # all of 1.2 s
    if modality == "visual":
        assert store.video("hostile", encoder, "lying_short", "last").shape[0] == 750
    for s in (store, clean):
        report = verify(s)
        assert report.ok and report.parts >= 1, report.problems
    if modality == "visual":  # resume: nothing left to do, the failures fail the same way again
        again = extract(store, dataset="hostile", encoder=encoder, num_workers=2)
        assert (again.videos_done, again.videos_skipped) == (0, len(good(modality)))
        assert again.videos_failed == len(bad(modality))
        check_failures(store, "hostile", encoder, modality)


def test_cli_extract_with_limits_dry_run_and_verify(tmp_path: Path, corpus: Path) -> None:
    from typer.testing import CliRunner

    from featstore.cli.main import app

    url = str(tmp_path / "s.zarr")
    dataset(open_store(url, mode="a"), "hostile", corpus, list(CASES))
    runner = CliRunner()
    base = ["extract", "--encoder", "toy-visual", "--on", "hostile", "--store", url]
    limits = ["--max-duration-s", "20", "--max-frame-pixels", str(64 * 64)]
    plan = runner.invoke(app, [*base, *limits, "--dry-run"])
    assert plan.exit_code == 0, plan.output
    # by their headers: long_silent's 700 s (lying_short and lying_silent say 1 s)
    assert "1 videos last longer than the 20 s limit (--max-duration-s)" in plan.output
    result = runner.invoke(app, [*base, *limits])
    assert result.exit_code == 0, result.output
    store = open_store(url, mode="r")
    failures = store.failures("hostile", "toy-visual").set_index("video_id")
    # the 30 s video whose header says 1 s stops at 20 s; 64x64 frames still pass
    assert failures.loc["lying_short", "error_type"] == "DurationLimitError"
    assert (
        "stopped at 20.0 s, though its header declares 1.0 s"
        in (failures.loc["lying_short", "message"])
    )
    assert failures.loc["long_silent", "error_type"] == "DurationLimitError"
    assert "8000x8000" in failures.loc["huge", "message"]
    extracted = set(store.video_ids("hostile", "toy-visual", "last"))
    assert extracted == set(good("visual")) - {"lying_short"}
    assert f"{len(extracted)} videos extracted" in result.output
    verified = runner.invoke(app, ["store", "verify", url])
    assert verified.exit_code == 0 and verified.output.strip().endswith("ok"), verified.output
    bad_limit = runner.invoke(app, [*base, "--max-duration-s", "-5"])
    assert bad_limit.exit_code == 1
    assert "error: max_duration_s must be positive, got -5.0" in bad_limit.output


# -------------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def api_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A probe run on planted logfbank features: the service decodes uploads for logfbank."""
    from trainer_fixtures import write_planted_dataset

    from featstore.trainers.kinds.probe import train as train_probe
    from featstore.trainers.probe import ProbeConfig

    root = tmp_path_factory.mktemp("hostile-api")
    store = open_store(root / "features.zarr", mode="a", durable=False)
    write_planted_dataset(store, "planted", n_videos=8, dim=104, encoder="logfbank")
    train_probe(
        store,
        features="logfbank:last",
        train="planted:train",
        out=root / "runs" / "probe",
        config=ProbeConfig(max_epochs=2),
    )
    return {"root": root, "store": str(root / "features.zarr")}


UPLOAD_OK = {"good0", "good1", "aac71", "opus51", "pcm3", "pcm24", "audio_only"}
UPLOAD_REASON = {  # the detail of the 4xx, for the bad uploads
    "huge": r"8000x8000",
    "long_silent": r"700\.0 s.*above the limit of 30 s",
    "lying_silent": r"longer than the duration limit of 30 s .*stopped at 30\.0 s",
    "no_audio": "no audio stream",
    "lying_short": "no audio stream",
    "truncated": "corrupt or truncated",
    "garbled": "truncated audio",
    "no_packets": "cannot be opened",
    "text": "not a video container",
}


def test_hostile_uploads_get_a_4xx_and_leave_no_file(
    api_world: dict[str, Any], corpus: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from featstore.api.app import create_app
    from featstore.api.settings import RunSpec, Settings

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings = Settings(
        store_url=api_world["store"],
        runs=(RunSpec("probe", api_world["root"] / "runs" / "probe"),),
        upload_dir=str(uploads),
        max_duration_s=30.0,
        warmup=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        for video_id in [*UPLOAD_OK, *UPLOAD_REASON]:
            data = (corpus / CASES[video_id].file).read_bytes()
            tracemalloc.start()
            try:
                r = client.post("/v1/score", files={"file": (CASES[video_id].file, data)})
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            if video_id in UPLOAD_OK:
                assert r.status_code == 200, (video_id, r.text)
                assert r.json()["results"][0]["run"] == "probe"
            else:
                assert 400 <= r.status_code < 500, (video_id, r.status_code, r.text)
                assert re.search(UPLOAD_REASON[video_id], r.json()["detail"]), (video_id, r.text)
            # a 1 s header over 700 s of audio stops at 30 s: megabytes, not the 45 MB of 700 s
            assert peak < 20 * 2**20, (video_id, peak)
            assert list(uploads.iterdir()) == [], video_id
        metrics = client.get("/metrics").text
    served = [line for line in metrics.splitlines() if 'endpoint="/readyz"' not in line]
    assert not re.search(r'status="5\d\d"', "\n".join(served))  # /readyz: 503 while loading


def test_running_out_of_memory_fails_only_that_video(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MemoryError while decoding one video, or in the forward pass of a batch holding
    it, fails that video alone (before issue 13 it aborted the whole run)."""
    from featstore import media
    from featstore.extract import extract

    real = media.video.constant_rate_frames

    def short_of_memory(path: str, *args: Any, **kwargs: Any):
        if path.endswith("good1.mp4"):
            raise MemoryError
        yield from real(path, *args, **kwargs)

    class HostOOM(ToyEncoder):
        def encode(self, clips, layers):
            if any(c.video_id == "pcm3" for c in clips):
                raise MemoryError  # host RAM, not CUDA
            return super().encode(clips, layers)

    monkeypatch.setattr(media.video, "constant_rate_frames", short_of_memory)
    store = open_store(tmp_path / "s.zarr", mode="a", durable=False)
    ids = ["good0", "good1", "aac71", "pcm3", "no_audio"]
    dataset(store, "hostile", corpus, ids)
    summary = extract(store, dataset="hostile", encoder=HostOOM(TOY_VISUAL), batch_frames=10_000)
    assert (summary.videos_done, summary.videos_failed) == (3, 2)
    assert summary.oom_splits >= 1
    failures = store.failures("hostile", "toy-visual").set_index("video_id")
    assert failures.loc["good1", "error_type"] == "DecodeMemoryError"
    assert "out of memory while decoding the video frames" in failures.loc["good1", "message"]
    assert failures.loc["pcm3", "error_type"] == "MemoryError"
    assert set(store.video_ids("hostile", "toy-visual", "last")) == {"good0", "aac71", "no_audio"}
