"""The synthetic sample dataset: AV-Deepfake1M format, exact lengths, determinism, fakes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from featstore.sample import SampleError, SampleInfo, clip_path, make_sample

AV1M_KEYS = {
    "file", "original", "split", "modify_type", "audio_model", "fake_segments",
    "audio_fake_segments", "visual_fake_segments", "video_frames", "audio_frames",
}  # fmt: skip
SIZE = 224


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    # 8 clips: 4 real, and audio_modified, visual_modified, both_modified, audio_modified.
    return make_sample(tmp_path_factory.mktemp("sample"), n_clips=8, seed=3, duration_s=(3, 4))


def _entries(info: SampleInfo) -> list[dict]:
    return json.loads(info.train_metadata.read_text()) + json.loads(info.val_metadata.read_text())


def _by_type(info: SampleInfo, modify_type: str) -> list[dict]:
    return [e for e in _entries(info) if e["modify_type"] == modify_type]


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Video [T, H, W, 3] uint8 and audio [N] float32 decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.rate == 16_000 and stream.channels == 1
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return video, audio


def _frame_energy_db(audio: np.ndarray) -> np.ndarray:
    """Per 25 fps frame RMS energy in dB [T], floored 40 dB below the loudest frame."""
    frames = audio[: len(audio) // 640 * 640].reshape(-1, 640)
    db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-6)
    return np.maximum(db, db.max() - 40)


def _mouth_dark_pixels(video: np.ndarray) -> np.ndarray:
    """Dark pixels [T] in the lower-middle face box: grows as the drawn mouth opens."""
    h, w = video.shape[1:3]
    box = video[:, int(0.71 * h) : int(0.88 * h), int(0.36 * w) : int(0.64 * w)].astype(float)
    luma = box @ np.array([0.299, 0.587, 0.114])  # [T, h, w]
    return (luma < 60).sum(axis=(1, 2)).astype(float)


def _segment_mask(n: int, segments: list[list[float]], *, rate_hz: float) -> np.ndarray:
    mask = np.zeros(n, bool)
    for start_s, end_s in segments:
        mask[round(start_s * rate_hz) : round(end_s * rate_hz)] = True
    return mask


def test_metadata_follows_av1m_format(sample: SampleInfo) -> None:
    train = json.loads(sample.train_metadata.read_text())
    val = json.loads(sample.val_metadata.read_text())
    assert train and val and len(train) + len(val) == sample.n_clips == 8
    files = {e["file"]: e for e in train + val}
    for split, items in (("train", train), ("val", val)):
        for e in items:
            assert set(e) == AV1M_KEYS
            assert e["split"] == split and not e["file"].startswith(f"{split}/")
            assert (clip_path(sample.root, e)).is_file()
            assert isinstance(e["video_frames"], int) and isinstance(e["audio_frames"], int)
            assert e["audio_frames"] == e["video_frames"] * 640
            duration_s = e["video_frames"] / 25
            assert 3.0 <= duration_s <= 4.0
            if e["modify_type"] == "real":
                assert e["original"] is None and e["audio_model"] == ""
                assert e["fake_segments"] == e["audio_fake_segments"] == []
                assert e["visual_fake_segments"] == []
                continue
            original = files[e["original"]]
            assert original["modify_type"] == "real" and original["split"] == split
            assert original["video_frames"] == e["video_frames"]
            assert e["fake_segments"], "fake iff fake_segments is non-empty"
            for start, end in e["fake_segments"]:
                assert 0 < start < end <= duration_s and 0.3 <= end - start <= 1.2 + 1e-9
            audio_fake = e["modify_type"] in ("audio_modified", "both_modified")
            visual_fake = e["modify_type"] in ("visual_modified", "both_modified")
            assert bool(e["audio_fake_segments"]) == audio_fake == bool(e["audio_model"])
            assert bool(e["visual_fake_segments"]) == visual_fake
            union = sorted({tuple(s) for s in e["audio_fake_segments"] + e["visual_fake_segments"]})
            assert [tuple(s) for s in e["fake_segments"]] == union
    assert sample.counts == {
        "real": 4, "audio_modified": 2, "visual_modified": 1, "both_modified": 1,
    }  # fmt: skip
    speakers = {split: {e["file"].split("/")[0] for e in items} for split, items in
                (("train", train), ("val", val))}  # fmt: skip
    assert not speakers["train"] & speakers["val"], "no speaker in both splits"


def test_decoded_lengths_match_metadata(sample: SampleInfo) -> None:
    import av

    for e in _entries(sample):
        video, audio = _decode(clip_path(sample.root, e))
        assert video.shape == (e["video_frames"], SIZE, SIZE, 3)
        assert audio.shape == (e["audio_frames"],)
        with av.open(str(clip_path(sample.root, e))) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 25
            assert stream.codec_context.name == ("h264" if sample.video_codec == "libx264"
                                                 else "mpeg4")  # fmt: skip
            assert container.streams.audio[0].codec_context.name == "aac"


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip

    kwargs = {"n_clips": 2, "duration_s": (3, 3), "size": 128}
    a = digest(make_sample(tmp_path / "a", seed=5, **kwargs).root)
    b = digest(make_sample(tmp_path / "b", seed=5, **kwargs).root)
    c = digest(make_sample(tmp_path / "c", seed=6, **kwargs).root)
    assert len(a) == 4 and a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a if k.endswith(".mp4"))


def test_fake_audio_differs_only_inside_its_segments(sample: SampleInfo) -> None:
    fakes = _by_type(sample, "audio_modified") + _by_type(sample, "both_modified")
    assert fakes
    for e in fakes:
        _, fake = _decode(clip_path(sample.root, e))
        _, real = _decode(sample.root / e["split"] / e["original"])
        inside = _segment_mask(len(real), e["audio_fake_segments"], rate_hz=16_000)
        # AAC frames (1024 samples) overlap: leave 2048 samples either side of each boundary.
        near = np.convolve(np.diff(inside.astype(int), prepend=0) != 0, np.ones(4097), "same") > 0
        diff = fake - real
        assert np.abs(diff[~inside & ~near]).max() < 0.01
        rms = np.sqrt(np.mean(real[inside & ~near] ** 2))
        assert np.sqrt(np.mean(diff[inside & ~near] ** 2)) > 0.5 * rms
    for e in _by_type(sample, "visual_modified"):
        _, fake = _decode(clip_path(sample.root, e))
        _, real = _decode(sample.root / e["split"] / e["original"])
        assert np.abs(fake - real).max() < 1e-6


def test_fakes_start_with_the_same_silence_as_their_original(sample: SampleInfo) -> None:
    for e in _entries(sample):
        if e["original"] is None:
            continue
        _, fake = _decode(clip_path(sample.root, e))
        _, real = _decode(sample.root / e["split"] / e["original"])
        onset = [int(np.argmax(np.abs(x) > 0.01)) for x in (fake, real)]
        assert abs(onset[0] - onset[1]) < 160 and onset[1] > 0.1 * 16_000


def test_mouth_opening_follows_audio_energy(sample: SampleInfo) -> None:
    for e in _by_type(sample, "real"):
        video, audio = _decode(clip_path(sample.root, e))
        opening = _mouth_dark_pixels(video)
        assert np.corrcoef(opening, _frame_energy_db(audio))[0, 1] > 0.8
    for e in _by_type(sample, "visual_modified"):
        video, audio = _decode(clip_path(sample.root, e))
        real_video, _ = _decode(sample.root / e["split"] / e["original"])
        energy = _frame_energy_db(audio)
        inside = _segment_mask(len(video), e["visual_fake_segments"], rate_hz=25)
        fake_open, real_open = _mouth_dark_pixels(video), _mouth_dark_pixels(real_video)
        np.testing.assert_allclose(fake_open[~inside], real_open[~inside], atol=30)
        corr_fake = np.corrcoef(fake_open[inside], energy[inside])[0, 1]
        corr_real = np.corrcoef(real_open[inside], energy[inside])[0, 1]
        assert corr_real > 0.7 and corr_fake < corr_real - 0.3


def test_both_modified_lips_follow_the_new_audio(sample: SampleInfo) -> None:
    (e,) = _by_type(sample, "both_modified")
    video, audio = _decode(clip_path(sample.root, e))
    real_video, _ = _decode(sample.root / e["split"] / e["original"])
    inside = _segment_mask(len(video), e["visual_fake_segments"], rate_hz=25)
    fake_open = _mouth_dark_pixels(video)
    assert np.corrcoef(fake_open[inside], _frame_energy_db(audio)[inside])[0, 1] > 0.7
    h, w = video.shape[1:3]
    mouth = (slice(None), slice(int(0.71 * h), int(0.88 * h)), slice(int(0.36 * w), int(0.64 * w)))
    change = np.abs(video[mouth].astype(float) - real_video[mouth]).mean(axis=(1, 2, 3))  # [T]
    assert np.median(change[inside]) > 4 * change[~inside].max()


def test_dlib_finds_the_face_and_the_mouth(sample: SampleInfo) -> None:
    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    model = (
        Path(spec.submodule_search_locations[0]) / "models/shape_predictor_68_face_landmarks.dat"
    )
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))
    for e in _by_type(sample, "real")[:2]:
        video, _ = _decode(clip_path(sample.root, e))
        video = video[::2]
        gaps, centres = [], []
        for frame in video:
            faces = detector(frame, 0)
            assert len(faces) == 1
            points = np.array([[p.x, p.y] for p in predictor(frame, faces[0]).parts()])  # [68, 2]
            gaps.append(np.linalg.norm(points[62] - points[66]))
            centres.append(points[48:68].mean(axis=0))
        centres = np.array(centres) / SIZE
        assert np.all(np.abs(centres[:, 0] - 0.5) < 0.05)
        assert np.all(np.abs(centres[:, 1] - 0.77) < 0.05)
        assert np.corrcoef(gaps, _mouth_dark_pixels(video))[0, 1] > 0.8


def test_rejects_bad_arguments_and_non_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="at least 2 clips"):
        make_sample(tmp_path / "a", n_clips=1)
    with pytest.raises(SampleError, match="even"):
        make_sample(tmp_path / "a", size=101)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(SampleError, match="not empty"):
        make_sample(tmp_path / "b", n_clips=2)
    with pytest.raises(SampleError, match="no sample metadata"):
        make_sample(tmp_path / "b", n_clips=2, overwrite=True)


def test_overwrite_replaces_only_the_previous_sample(tmp_path: Path) -> None:
    kwargs = {"duration_s": (2, 2), "size": 96}
    make_sample(tmp_path, n_clips=4, seed=1, **kwargs)
    (tmp_path / "keep.txt").write_text("mine")
    info = make_sample(tmp_path, n_clips=2, seed=2, overwrite=True, **kwargs)
    clips = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4"))
    assert clips == sorted(f"{e['split']}/{e['file']}" for e in _entries(info))
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_cli_make_prints_a_summary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from featstore.cli.sample import app

    runner = CliRunner()
    result = runner.invoke(app, ["make", str(tmp_path / "s"), "--clips", "2", "--size", "96"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 clips" in result.output and "audio_modified" in result.output
    assert "train_metadata.json" in result.output
    result = runner.invoke(app, ["make", str(tmp_path / "s"), "--clips", "2"])
    assert result.exit_code == 1 and "not empty" in result.output


def test_cli_make_json_and_the_deprecated_short_option(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from featstore.cli.main import app

    result = CliRunner().invoke(
        app, ["sample", "make", str(tmp_path / "s"), "-n", "2", "--size", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        "warning: -n is deprecated here and will be removed: use --clips"
    )
    doc = json.loads(result.stdout)
    assert doc["n_clips"] == 2 and doc["root"] == str(tmp_path / "s")
    assert json.loads(Path(doc["train_metadata"]).read_text())  # the paths it names exist
