"""TalkNet-ASD port: parity with the original code, strict loading, preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")

from featstore.asd.talknet import FULL, TINY, load_talknet  # noqa: E402
from featstore.asd.talknet.preprocess import crop_faces, smooth_boxes, track_inputs  # noqa: E402
from featstore.asd.talknet.scoring import DURATIONS_S, score_track  # noqa: E402
from featstore.asd.talknet.tiny import save_tiny_checkpoint, talknet_state_dict  # noqa: E402
from featstore.encoders.base import CheckpointError  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "talknet_reference.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def full_model(tmp_path_factory: pytest.TempPathFactory):
    # the same seeded random weights the reference run loaded into the original code
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("tn") / "full.model", config=FULL, seed=3)
    return load_talknet(path)


def test_crops_and_mfcc_equal_the_demo_pipeline(ref: dict[str, np.ndarray]) -> None:
    crops = crop_faces(ref["frames"], smooth_boxes(ref["boxes"]))
    np.testing.assert_array_equal(crops, ref["crops"])
    mfcc, cut = track_inputs(ref["audio"], crops)
    n = int(ref["n"])
    assert len(cut) == n == len(ref["frames"]) - 1  # the demo scores T - 1 frames
    np.testing.assert_allclose(mfcc, ref["mfcc"][: 4 * n], rtol=0, atol=1e-4)


def test_scores_equal_the_original_code(ref: dict[str, np.ndarray], full_model) -> None:
    assert full_model.config == FULL
    assert tuple(int(d) for d in ref["durations"]) == DURATIONS_S == (1, 2, 3, 4, 5, 6)
    n = int(ref["n"])
    mfcc = ref["mfcc"][: 4 * n].astype(np.float32)
    out = score_track(full_model.model, mfcc, ref["crops"][:n])
    np.testing.assert_allclose(out.passes, ref["passes"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.mean, ref["mean"], rtol=0, atol=1e-5)
    # rounded scores agree wherever the mean is not within 1e-5 of a rounding boundary
    frac = np.abs(np.abs(ref["mean"].astype(np.float64) * 10) % 1 - 0.5)
    clear = frac > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(out.scores[clear], ref["scores"][clear])


def test_batched_windows_equal_one_by_one(tmp_path: Path) -> None:
    loaded = load_talknet(save_tiny_checkpoint(tmp_path / "t.model", config=TINY, seed=1))
    rng = np.random.default_rng(0)
    n = 140  # 5.6 s: every window length gives several windows and a short last one
    mfcc = rng.standard_normal((4 * n, 13)).astype(np.float32)
    crops = rng.integers(0, 256, (n, 112, 112), dtype=np.uint8)
    batched = score_track(loaded.model, mfcc, crops, batch_frames=10_000)
    single = score_track(loaded.model, mfcc, crops, batch_frames=1)
    np.testing.assert_allclose(batched.passes, single.passes, rtol=0, atol=1e-5)
    # each pass is the model run on consecutive windows of d seconds
    with torch.inference_mode():
        d2 = [
            loaded.model(
                torch.from_numpy(mfcc[None, 4 * s : 4 * min(s + 50, n)]),
                torch.from_numpy(crops[None, s : min(s + 50, n)]).float(),
            )[0].numpy()
            for s in range(0, n, 50)
        ]
    np.testing.assert_allclose(batched.passes[1], np.concatenate(d2), rtol=0, atol=1e-5)


def test_loading_is_strict_and_lists_unused_keys(tmp_path: Path) -> None:
    path = save_tiny_checkpoint(tmp_path / "t.model", config=TINY, seed=0, prefix="module.")
    loaded = load_talknet(path)
    assert loaded.config == TINY
    assert loaded.unused == ("lossA.FC.bias", "lossA.FC.weight", "lossV.FC.bias", "lossV.FC.weight")
    assert len(loaded.sha256) == 64 and not loaded.model.training

    state = talknet_state_dict(TINY, seed=0)
    del state["model.selfAV.norm2.weight"]
    torch.save(state, tmp_path / "missing.model")
    with pytest.raises(CheckpointError, match=r"missing: model\.selfAV\.norm2\.weight"):
        load_talknet(tmp_path / "missing.model")

    state = talknet_state_dict(TINY, seed=0)
    state["lossAV.FC.weight"] = torch.zeros(2, 7)
    torch.save(state, tmp_path / "shape.model")
    with pytest.raises(CheckpointError, match=r"lossAV\.FC\.weight has shape"):
        load_talknet(tmp_path / "shape.model")

    torch.save({"model": {"x": torch.zeros(1)}, "epoch": 3}, tmp_path / "other.model")
    with pytest.raises(CheckpointError, match="not a TalkNet state dict"):
        load_talknet(tmp_path / "other.model")
    with pytest.raises(CheckpointError, match="not found"):
        load_talknet(tmp_path / "absent.model")


def test_no_code_from_the_checkpoint_runs(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = talknet_state_dict(TINY, seed=0)
    with (tmp_path / "evil.model").open("wb") as fh:
        torch.save({**state, "evil": Evil()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_talknet(tmp_path / "evil.model")
    assert not marker.exists()


def test_crop_outside_the_image_is_padded_with_110() -> None:
    frames = np.zeros((1, 40, 40, 3), np.uint8)
    crops = crop_faces(frames, np.array([[0.0, 0.0, 10.0]]))  # a face at the top-left corner
    assert crops[0, 0, 0] == 110 and crops[0, -1, -1] == 0
