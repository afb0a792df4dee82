"""Tests of featstore.landmarks and featstore.crops: geometry, crops, the cache, real detection."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from featstore.crops import (
    FACE_ENLARGE,
    TRACKS_ENCODER,
    crop_video,
    face_boxes,
    load_tracks,
    mouth_model_input,
    mouth_transforms,
    save_tracks,
    save_tracks_many,
)
from featstore.errors import FeatstoreError
from featstore.landmarks import (
    DLIB_MEAN_SHAPE_68,
    MEAN_FACE_68,
    MOUTH_POINTS,
    FacesUnavailableError,
    FaceTracks,
    NoFaceError,
    TrackerConfig,
    apply_transform,
    box_from_landmarks,
    interpolate_missing,
    load_face_models,
    moving_average,
    reset_face_models,
    similarity_transform,
    track_faces,
)


def rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def synthetic_tracks(n: int, *, scale=100.0, angle=0.0, offset=(60.0, 50.0)) -> FaceTracks:
    """Tracks of the dlib mean shape placed by a known similarity (per-frame arrays allowed)."""
    scale, angle = np.broadcast_to(scale, (n,)), np.broadcast_to(angle, (n,))
    offset = np.broadcast_to(np.asarray(offset, float), (n, 2))
    pts = np.stack(
        [
            DLIB_MEAN_SHAPE_68 @ (s * rot(a)).T + o
            for s, a, o in zip(scale, angle, offset, strict=True)
        ]
    )
    return FaceTracks.from_landmarks(pts, np.ones(n, bool))


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.3, 1.7, (12.0, -4.0)), (-1.2, 0.4, (-30.0, 7.5)), (0.0, 1.0, (0.0, 0.0))],
)
def test_similarity_transform_recovers_known_parameters(angle, scale, shift):
    rng = np.random.default_rng(0)
    src = rng.uniform(-50, 50, (7, 2))
    dst = src @ (scale * rot(angle)).T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot(angle), atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    np.testing.assert_allclose(apply_transform(m, src), dst, atol=1e-9)


def test_similarity_transform_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (20, 2))
    dst = src @ (2.0 * rot(0.5)).T + 3 + rng.normal(0, 0.5, (20, 2))
    m = similarity_transform(src, dst)

    def cost(a, b, tx, ty):  # parameters of [[a, -b, tx], [b, a, ty]]
        return (((src @ np.array([[a, -b], [b, a]]).T + (tx, ty)) - dst) ** 2).sum()

    best = cost(m[0, 0], m[1, 0], m[0, 2], m[1, 2])
    for delta in np.eye(4) * 1e-3:
        for sign in (1, -1):
            assert cost(*(np.array([m[0, 0], m[1, 0], m[0, 2], m[1, 2]]) + sign * delta)) >= best
    mirrored = similarity_transform(src, src * (-1, 1))
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_box_from_landmarks_inverts_the_mean_shape_placement():
    tracks = synthetic_tracks(
        3, scale=[80.0, 120.0, 150.0], angle=[0.0, 0.2, -0.3], offset=[(10, 20), (0, 0), (5, 9)]
    )
    boxes = tracks.boxes
    np.testing.assert_allclose(boxes[0], [10, 20, 90, 100], atol=1e-3)
    np.testing.assert_allclose(
        boxes[:, 2] - boxes[:, 0], [80, 120, 150], atol=1e-3
    )  # scale, whatever the roll
    centre = (0.5, 0.5) @ (120 * rot(0.2)).T
    np.testing.assert_allclose((boxes[1, :2] + boxes[1, 2:]) / 2, centre, atol=1e-3)
    assert box_from_landmarks(tracks.landmarks[0]).shape == (4,)


def test_moving_average_matches_its_definition():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 68, 2))
    for window in (1, 5, 12):
        got = moving_average(x, window)
        for t in range(30):
            lo, hi = max(0, t - window // 2), min(30, t + (window - 1) // 2 + 1)
            np.testing.assert_allclose(got[t], x[lo:hi].mean(0), atol=1e-12)
    np.testing.assert_allclose(moving_average(np.full((20, 3), 7.0), 12), 7.0)


def test_interpolate_missing_is_linear_and_copies_at_the_ends():
    values = np.arange(10, dtype=float)[:, None] * [1.0, -2.0]  # [10, 2]
    present = np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 0], bool)
    got = interpolate_missing(np.where(present[:, None], values, 999.0), present)
    np.testing.assert_allclose(got[2:9], values[2:9])  # linear data: gaps recovered exactly
    np.testing.assert_allclose(got[:2], [values[2]] * 2)  # leading gap: nearest copied
    np.testing.assert_allclose(got[9], values[8])  # trailing gap
    with pytest.raises(ValueError):
        interpolate_missing(values, np.zeros(10, bool))


# ------------------------------------------------------------------ crops (no detector)


def dots(n: int, tracks: FaceTracks, points, *, shape=(240, 320)) -> np.ndarray:
    """Black frames with a white 3x3 dot at each of ``points`` of the tracks' landmarks."""
    frames = np.zeros((n, *shape, 3), np.uint8)
    for t in range(n):
        for p in points:
            x, y = np.rint(tracks.landmarks[t, p]).astype(int)
            frames[t, y - 1 : y + 2, x - 1 : x + 2] = 255
    return frames


def centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img > 40)
    w = img[ys, xs].astype(float)
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


def test_mouth_crop_is_aligned_centred_and_scale_free():
    pytest.importorskip("cv2")
    n = 24
    # the same face, small and upright, then large and tilted: the crops must agree
    pose = np.arange(n) >= n // 2
    tracks = synthetic_tracks(
        n,
        scale=np.where(pose, 170.0, 90.0),
        angle=np.where(pose, 0.35, 0.0),
        offset=np.where(pose[:, None], (120, 10), (80, 40)),
    )
    mouth_centre = tracks.landmarks[:, list(MOUTH_POINTS)].mean(1)
    frames = dots(n, tracks, [48, 54])
    crops = crop_video(frames, tracks=tracks, mouth=True).mouth
    assert crops.shape == (n, 96, 96) and crops.dtype == np.uint8
    corners = (
        MEAN_FACE_68[[48, 54]] - MEAN_FACE_68[list(MOUTH_POINTS)].mean(0) + 48
    )  # where they must land
    for t in (0, 3, n - 4, n - 1):  # away from the smoothing window's change of pose
        left, right = crops[t, :, :48], crops[t, :, 48:]
        np.testing.assert_allclose(centroid(left), corners[0], atol=1.2)
        np.testing.assert_allclose(centroid(right) + np.array([48, 0]), corners[1], atol=1.2)
    m = mouth_transforms(tracks.landmarks)
    np.testing.assert_allclose(apply_transform(m[0], mouth_centre[0]), (48, 48), atol=1e-3)


def test_mouth_crop_uses_smoothed_landmarks():
    n = 30
    tilt = np.where(np.arange(n) % 2 == 0, 0.1, -0.1)  # landmark noise: the roll flips each frame
    tracks = synthetic_tracks(n, scale=100.0, angle=tilt, offset=(60, 50))

    def roll(m):
        return np.arctan2(m[:, 1, 0], m[:, 0, 0])

    np.testing.assert_allclose(
        np.abs(roll(mouth_transforms(tracks.landmarks, smooth_window=1))), 0.1, atol=1e-9
    )
    assert (
        np.abs(roll(mouth_transforms(tracks.landmarks))[6:-6]).max() < 1e-3
    )  # 12-frame mean: upright
    # the crop centre follows the frame's own mouth, whatever the smoothing
    m = mouth_transforms(tracks.landmarks)
    own = tracks.landmarks[:, list(MOUTH_POINTS)].mean(1)
    np.testing.assert_allclose([apply_transform(m[t], own[t]) for t in range(n)], 48.0, atol=1e-3)


def test_mouth_model_input_normalises_the_centre():
    crops = np.zeros((2, 96, 96), np.uint8)
    crops[:, 4:92, 4:92] = 255
    x = mouth_model_input(crops)
    assert x.shape == (2, 88, 88) and x.dtype == np.float32
    np.testing.assert_allclose(x, (1.0 - 0.421) / 0.165, rtol=1e-6)
    with pytest.raises(ValueError):
        mouth_model_input(np.zeros((1, 64, 64), np.uint8))


def test_face_boxes_enlarge_square_and_smooth():
    tracks = FaceTracks(
        landmarks=np.zeros((5, 68, 2), np.float32),
        boxes=np.array([[10, 20, 110, 100]] * 5, np.float32),  # 100 wide, 80 high
        detected=np.ones(5, bool),
    )
    boxes = face_boxes(tracks)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 100 * FACE_ENLARGE)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 100 * FACE_ENLARGE)
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2, [[60, 60]] * 5)
    jumpy = FaceTracks(
        tracks.landmarks,
        tracks.boxes + np.array([[0], [10], [0], [10], [0]], np.float32),
        tracks.detected,
    )
    assert np.ptp(face_boxes(jumpy, smooth_window=5)[:, 0]) < np.ptp(jumpy.boxes[:, 0])


def test_face_crop_matches_crop_and_bicubic_resize_inside_the_image():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (9, 9), 3)
    # box chosen so the enlarged square is the pixels [50, 180) x [70, 200)
    side = 130 / FACE_ENLARGE
    cx, cy = 50 + 65 - 0.5, 70 + 65 - 0.5
    box = np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]], np.float32)
    tracks = FaceTracks(np.zeros((1, 68, 2), np.float32), box, np.ones(1, bool))
    got = crop_video(frame[None], tracks=tracks, mouth=False, face=True).face
    assert got.shape == (1, 224, 224, 3) and got.dtype == np.uint8
    want = cv2.resize(frame[70:200, 50:180], (224, 224), interpolation=cv2.INTER_CUBIC)
    diff = np.abs(got[0].astype(int) - want)
    assert diff[4:-4, 4:-4].max() <= 2  # warpAffine's 1/32-pixel tables vs exact resize weights


def test_face_crop_pads_at_the_border_and_keeps_the_face_centred():
    pytest.importorskip("cv2")
    frame = np.full((200, 200, 3), 200, np.uint8)
    frame[:40, :40] = (255, 0, 0)  # the face: a red square in the corner
    box = np.array([[0, 0, 40, 40]], np.float32)
    tracks = FaceTracks(np.zeros((1, 68, 2), np.float32), box, np.ones(1, bool))
    face = crop_video(frame[None], tracks=tracks, mouth=False, face=True).face[0]
    red = (face[..., 0] > 200) & (face[..., 1] < 60)
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() - 111.5) < 3 and abs(ys.mean() - 111.5) < 3  # centred, not shifted
    assert (
        face[:16, :16] == 0
    ).all()  # outside the image (and the cubic kernel): black, not stretched
    assert abs(red.mean() - 1 / FACE_ENLARGE**2) < 0.03  # the box is 1.3 times the face


def test_face_crop_of_a_large_face_is_antialiased():
    pytest.importorskip("cv2")
    frame = np.zeros((720, 720, 3), np.uint8)
    frame[:, ::2] = 255  # 1-pixel stripes: they must average out, not alias
    box = np.array([[100, 100, 500, 500]], np.float32)
    tracks = FaceTracks(np.zeros((1, 68, 2), np.float32), box, np.ones(1, bool))
    face = crop_video(frame[None], tracks=tracks, mouth=False, face=True).face[0]
    assert abs(face[20:-20, 20:-20].mean() - 127.5) < 3 and face[20:-20, 20:-20].std() < 20


def test_face_crop_geometry_is_the_same_for_large_faces():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(4)
    small = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2)
    large = cv2.resize(
        small, (160 * 5, 120 * 5), interpolation=cv2.INTER_CUBIC
    )  # area pre-shrink path
    box = np.array([[30.3, 40.6, 110.3, 120.6]], np.float32)  # reaches past the bottom: padded too
    big_box = (box + 0.5) * 5 - 0.5  # the same region in pixel-centre coordinates
    crops = [
        crop_video(
            f[None],
            tracks=FaceTracks(np.zeros((1, 68, 2), np.float32), b, np.ones(1, bool)),
            mouth=False,
            face=True,
        )
        .face[0]
        .astype(int)
        for f, b in ((small, box), (large, big_box))
    ]
    assert np.abs(crops[0] - crops[1]).mean() < 0.6
    assert np.abs(crops[0][:, 1:] - crops[1][:, :-1]).mean() > 1.0  # a 1-pixel error would show


def test_tracks_check_their_shapes():
    with pytest.raises(ValueError):
        FaceTracks(np.zeros((3, 68, 2), np.float32), np.zeros((2, 4), np.float32), np.ones(3, bool))
    with pytest.raises(ValueError):
        crop_video(np.zeros((4, 50, 50, 3), np.uint8), tracks=synthetic_tracks(3))


# ------------------------------------------------------------------ the cache


def test_tracks_cache_round_trip(store):
    tracks = synthetic_tracks(12, scale=np.linspace(90, 110, 12), angle=0.1, offset=(33.25, 17.5))
    tracks = FaceTracks(tracks.landmarks, tracks.boxes, np.arange(12) % 3 > 0)
    assert load_tracks(store, "ds", "a.mp4") is None  # nothing cached yet
    save_tracks(store, "ds", "a.mp4", tracks)
    got = load_tracks(store, "ds", "a.mp4")
    np.testing.assert_array_equal(got.landmarks, tracks.landmarks)
    np.testing.assert_array_equal(got.boxes, tracks.boxes)
    np.testing.assert_array_equal(got.detected, tracks.detected)
    assert got.landmarks.dtype == np.float32 and got.detected.dtype == bool
    assert load_tracks(store, "ds", "other.mp4") is None


def test_tracks_cache_many_videos_and_failures(store):
    items = [
        ("v0", synthetic_tracks(5)),
        ("v1", NoFaceError("no face detected in any of 9 frames")),
        ("v2", synthetic_tracks(7)),
    ]
    assert save_tracks_many(store, "ds", items) == 2
    assert load_tracks(store, "ds", "v2").n_frames == 7
    assert load_tracks(store, "ds", "v1") is None
    failures = store.failures("ds", TRACKS_ENCODER)
    row = failures[failures.video_id == "v1"].iloc[0]
    assert row.error_type == "NoFaceError" and "9 frames" in row.message
    assert store.encoder_info("ds", TRACKS_ENCODER).layer_dims == {"landmarks": 136, "boxes": 5}


# ------------------------------------------------------------------ the optional extra


def test_import_does_not_load_dlib_cv2_zarr_or_torch():
    code = "import sys, featstore.crops, featstore.landmarks; print(sorted({'dlib', 'cv2', 'zarr', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_raises_a_typed_error_with_a_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    reset_face_models()
    try:
        with pytest.raises(FacesUnavailableError, match=r"featstore\[faces\]"):
            load_face_models()
    finally:
        reset_face_models()
    assert issubclass(FacesUnavailableError, FeatstoreError)


# ------------------------------------------------------------------ the real detector


def test_blank_video_fails_with_no_face_error():
    pytest.importorskip("dlib")
    with pytest.raises(NoFaceError, match="no face") as info:
        track_faces(np.full((8, 224, 224, 3), 128, np.uint8))
    assert isinstance(info.value, FeatstoreError) and info.value.n_found == 0 and info.value.reason


@pytest.fixture(scope="module")
def sample_clips(tmp_path_factory) -> list[np.ndarray]:
    """Decoded frames of two synthetic clips (two speakers) of featstore.sample."""
    pytest.importorskip("dlib")
    av = pytest.importorskip("av")
    from featstore.sample import clip_path, make_sample

    root = tmp_path_factory.mktemp("sample")
    info = make_sample(root, n_clips=4, seed=1, duration_s=(2.0, 2.5))
    entries = json.loads(info.train_metadata.read_text()) + json.loads(
        info.val_metadata.read_text()
    )
    clips = []
    for e in entries:
        if e["modify_type"] in ("real", "visual_modified"):
            with av.open(str(clip_path(info.root, e))) as c:
                clips.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    return clips


def lips_centre(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Centroid of red-lipped pixels in the lower face (the sample's lips: R > 1.75 G)."""
    x0, y0, x1, y1 = np.rint(box).astype(int)
    ym = (y0 + y1) // 2
    region = frame[ym:y1, x0:x1].astype(float)
    ys, xs = np.nonzero(region[..., 0] > 1.75 * region[..., 1] + 10)
    assert len(xs) > 30, "no lips found"
    return np.array([xs.mean() + x0, ys.mean() + ym])


def test_sample_faces_are_detected_and_the_mouth_crop_is_on_the_mouth(sample_clips):
    for frames in sample_clips:
        crops = crop_video(frames, mouth=True, face=True)
        tracks = crops.tracks
        assert tracks.detection_rate >= 0.95
        assert crops.mouth.shape == (len(frames), 96, 96) and crops.face.shape == (
            len(frames),
            224,
            224,
            3,
        )
        mats = mouth_transforms(tracks.landmarks)
        for t in range(0, len(frames), 7):
            lips = apply_transform(mats[t], lips_centre(frames[t], tracks.boxes[t]))
            assert np.hypot(*(lips - 48)) < 6, f"frame {t}: lips at {lips} in the 96x96 crop"
        # the face box sits on the face: the lips are in its lower middle
        lips = lips_centre(frames[0], tracks.boxes[0])
        x0, y0, x1, y1 = tracks.boxes[0]
        assert x0 + 0.35 * (x1 - x0) < lips[0] < x0 + 0.65 * (x1 - x0)
        assert y0 + 0.6 * (y1 - y0) < lips[1] < y1


def test_tracking_detects_on_a_subset_of_frames(sample_clips, monkeypatch):
    import featstore.landmarks as lm

    calls = []
    real = lm._detect
    monkeypatch.setattr(lm, "_detect", lambda *a: calls.append(1) or real(*a))
    frames = sample_clips[0]
    tracks = track_faces(frames, config=TrackerConfig(detect_every=10))
    assert tracks.detection_rate == 1.0
    assert len(calls) <= -(-len(frames) // 10) + 2
    dense = track_faces(frames, config=TrackerConfig(detect_every=1))
    assert np.abs(dense.landmarks - tracks.landmarks).mean() < 1.5  # tracking ~ detecting


def test_frames_without_a_face_are_interpolated(sample_clips):
    frames = sample_clips[0].copy()
    frames[12:20] = (
        frames[12:20].mean(axis=(1, 2), keepdims=True).astype(np.uint8)
    )  # faceless frames
    tracks = track_faces(frames, config=TrackerConfig(detect_every=10))
    assert (
        not tracks.detected[12:20].any()
        and tracks.detected[:12].all()
        and tracks.detected[21:].all()
    )
    # interpolated landmarks lie between their neighbours
    lo, hi = (
        np.minimum(tracks.landmarks[11], tracks.landmarks[20]),
        np.maximum(tracks.landmarks[11], tracks.landmarks[20]),
    )
    assert ((tracks.landmarks[12:20] >= lo - 1e-3) & (tracks.landmarks[12:20] <= hi + 1e-3)).all()
    frames[: int(0.8 * len(frames))] = 0  # too much missing: a typed failure, no fallback
    with pytest.raises(NoFaceError, match="at most 50%"):
        track_faces(frames)


def test_the_largest_of_several_faces_is_kept(sample_clips):
    cv2 = pytest.importorskip("cv2")
    frames = sample_clips[0][:5]
    small = np.stack([cv2.resize(f, (168, 168), interpolation=cv2.INTER_AREA) for f in frames])
    canvas = np.zeros((len(frames), 224, 448, 3), np.uint8)
    canvas[:, :, 224:] = frames  # the large face on the right
    canvas[:, 28:196, 28:196] = small  # a smaller one on the left
    import featstore.landmarks as lm

    assert len(lm._detect(load_face_models(), canvas[0], TrackerConfig())) == 2
    tracks = track_faces(canvas)
    assert (tracks.boxes[:, 0] > 224).all()


@pytest.mark.parametrize("shift", [60, 120])
def test_a_cut_moving_the_face_is_followed_at_once(sample_clips, shift):
    frames = sample_clips[0][:30]
    canvas = np.zeros((len(frames), 224, 400, 3), np.uint8)
    canvas[:] = (
        frames[:, :, :1].mean(axis=(1, 2), keepdims=True).astype(np.uint8)
    )  # background colour
    canvas[:15, :, :224] = frames[:15]
    canvas[15:, :, shift : shift + 224] = frames[15:]  # a cut: the face is elsewhere from frame 15
    tracks = track_faces(canvas, config=TrackerConfig(detect_every=25))
    reference = track_faces(frames, config=TrackerConfig(detect_every=1))
    assert tracks.detected.all()
    moved = reference.landmarks[15:] + np.array([shift, 0])
    err = np.abs(tracks.landmarks[15:] - moved).mean((1, 2))  # [15]
    assert err.max() < 3, f"landmarks off by {err.round(1)} px after the cut"


def test_face_models_are_loaded_once_per_thread():
    # dlib's detector is not thread-safe and the extraction worker crops in a thread pool.
    pytest.importorskip("dlib")
    import threading

    mine = load_face_models()
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(load_face_models()))
    thread.start()
    thread.join()
    assert load_face_models() is mine
    assert theirs[0] is not mine and theirs[0].detector is not mine.detector
