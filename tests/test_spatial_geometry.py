"""The affines of featstore.spatial.geometry against the encoders' real preprocessing.

Frames whose pixel values encode their own coordinates go through the actual
resize / crop / warp code; the coordinate read back at a model-input pixel must be
where the affine says that pixel comes from.
"""

from __future__ import annotations

import numpy as np
import pytest

from featstore.landmarks import MEAN_FACE_68, FaceTracks
from featstore.spatial import geometry

pytest.importorskip("cv2")


def ramp_frames(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB frames: one with x (pixel-centre, edge coordinates) in every channel, one with y."""
    x = np.broadcast_to((np.arange(w) + 0.5) * 255.0 / w, (h, w))
    y = np.broadcast_to(((np.arange(h) + 0.5) * 255.0 / h)[:, None], (h, w))
    fx = np.repeat(np.rint(x)[..., None], 3, axis=2).astype(np.uint8)
    fy = np.repeat(np.rint(y)[..., None], 3, axis=2).astype(np.uint8)
    return fx, fy


def read_back(values: np.ndarray, size: int) -> np.ndarray:
    return values.astype(np.float64) * size / 255.0


def check(got: np.ndarray, want: np.ndarray, *, atol: float, bias: float = 0.2) -> None:
    """Every point within ``atol`` pixels (8-bit quantisation of the ramp), and no
    systematic offset: the mean error is under ``bias`` pixels (a half-pixel slip shows)."""
    np.testing.assert_allclose(got, want, atol=atol)
    assert abs(float(np.mean(got - want))) < bias, float(np.mean(got - want))


def interior_points(size: int, margin: int, step: int = 7) -> np.ndarray:
    """Model-input pixel centres away from the borders (edge coordinates)."""
    v = np.arange(margin, size - margin, step) + 0.5
    gx, gy = np.meshgrid(v, v)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


@pytest.mark.parametrize("frame_hw", [(120, 200), (300, 180), (224, 224)])
def test_resize_crop_affine_matches_the_image_processor(frame_hw: tuple[int, int]) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from featstore.encoders.clip_spatial import preprocess_affine
    from featstore.encoders.hf import ImagePreprocess

    prep = ImagePreprocess.from_processor(CLIPImageProcessorPil())  # resize 224, crop 224
    prep = ImagePreprocess(**{**prep.__dict__, "rescale_factor": None, "mean": None, "std": None})
    h, w = frame_hw
    fx, fy = ramp_frames(h, w)
    out = prep(np.stack([fx, fy]))  # [2, 3, 224, 224] (raw values: no rescale / normalise)
    a = preprocess_affine(prep, frame_hw)
    pts = interior_points(224, 8)
    ij = (pts - 0.5).astype(int)
    got_x = read_back(out[0, 0, ij[:, 1], ij[:, 0]], w)
    got_y = read_back(out[1, 0, ij[:, 1], ij[:, 0]], h)
    want = geometry.apply(a, pts)
    tol = 0.6 + 0.5 * max(h, w) / 224  # one source pixel of the ramp's quantisation
    check(got_x, want[:, 0], atol=tol)
    check(got_y, want[:, 1], atol=tol)


@pytest.mark.parametrize("side", [60.0, 200.0])  # below and above the 2x area-shrink path
def test_face_box_affine_matches_crop_face(side: float) -> None:
    from featstore.crops import FACE_SIZE, crop_face, face_boxes

    h, w = 480, 640
    fx, fy = ramp_frames(h, w)
    box = np.array([300.0, 140.0, 300.0 + side, 140.0 + side * 1.1], np.float32)
    tracks = FaceTracks(
        landmarks=np.zeros((2, 68, 2), np.float32),
        boxes=np.stack([box, box]),
        detected=np.ones(2, bool),
    )
    crops = crop_face(np.stack([fx, fy]), tracks)  # [2, 224, 224, 3]
    a = geometry.square_box_affine(face_boxes(tracks)[0], FACE_SIZE)
    pts = interior_points(FACE_SIZE, 8)
    ij = (pts - 0.5).astype(int)
    want = geometry.apply(a, pts)
    scale = side * 1.3 / FACE_SIZE  # frame pixels per crop pixel
    tol = 0.6 * w / 255 + (scale if side > 100 else 0.1)  # quantisation + area averaging
    check(read_back(crops[0, ij[:, 1], ij[:, 0], 0], w), want[:, 0], atol=tol)
    check(read_back(crops[1, ij[:, 1], ij[:, 0], 0], h), want[:, 1], atol=tol)


def test_mouth_affine_matches_crop_mouth() -> None:
    from featstore.crops import MOUTH_INPUT_SIZE, MOUTH_SIZE, crop_mouth, mouth_transforms

    h, w = 360, 480
    fx, fy = ramp_frames(h, w)
    # the mean face turned by 12 degrees, scaled and moved into the frame
    t = np.deg2rad(12.0)
    rot = 0.8 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts68 = (MEAN_FACE_68 - 128.0) @ rot.T + np.array([250.0, 170.0])
    tracks = FaceTracks.from_landmarks(np.stack([pts68, pts68]), np.ones(2, bool))
    rois = crop_mouth(np.stack([fx, fy]), tracks)  # [2, 96, 96] grey
    off = (MOUTH_SIZE - MOUTH_INPUT_SIZE) / 2
    a = geometry.mouth_affine(mouth_transforms(tracks.landmarks)[0], offset=off)
    pts = interior_points(MOUTH_INPUT_SIZE, 4)  # model-input pixel centres
    ij = (pts - 0.5 + off).astype(int)  # the same pixels in the 96x96 ROI
    want = geometry.apply(a, pts)
    check(read_back(rois[0, ij[:, 1], ij[:, 0]], w), want[:, 0], atol=1.5)
    check(read_back(rois[1, ij[:, 1], ij[:, 0]], h), want[:, 1], atol=1.5)


def test_peak_and_frame_map_agree() -> None:
    """The hottest cell drawn over the frame is brightest where peaks_relative puts it."""
    grid = np.zeros((7, 7))
    grid[2, 5] = 1.0
    a = geometry.resize_crop_affine((240, 400), resized_hw=(224, 373), crop_hw=(224, 224))
    rel = geometry.peaks_relative(
        geometry.peak_cells(grid[None]), a[None], grid_hw=(7, 7), input_hw=(224, 224),
        frame_hw=(240, 400),
    )[0]  # fmt: skip
    drawn = geometry.frame_map(grid, a, input_hw=(224, 224), frame_hw=(240, 400))
    y, x = np.unravel_index(np.nanargmax(drawn), drawn.shape)
    assert abs((x + 0.5) / 400 - rel[0]) < 1.5 / 400 and abs((y + 0.5) / 240 - rel[1]) < 1.5 / 240
    # outside the centre crop the model saw nothing
    assert np.isnan(drawn[:, :50]).all() and np.isnan(drawn[:, -50:]).all()
    assert not np.isnan(drawn[:, 100:300]).any()
