"""featstore.seek.read_frames gives exactly the frames a full decode gives at those indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featstore import media
from featstore.seek import FrameIndexError, read_frames

from test_media import VCODEC, level, write_clip  # isort: skip


def write_gop_clip(path: Path, *, n_frames: int, fps: int, gop: int) -> Path:
    """Keyframes every ``gop`` frames and B-frames, so seeks land mid-stream."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream(VCODEC, rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.codec_context.gop_size = gop
        if VCODEC == "libx264":
            vs.options = {"qp": "0", "bf": "2", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(n_frames):
            img = np.full((48, 64, 3), level(i), np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seek")
    pts = np.cumsum([0] + [40 if i % 3 else 73 for i in range(1, 90)]).tolist()  # variable rate
    return {
        "25fps": write_clip(d / "a.mp4", fps=25, n_frames=120, audio=None),
        "30fps": write_clip(d / "b.mkv", fps=30, n_frames=150, audio=None),
        "vfr": write_clip(d / "c.mkv", fps=25, n_frames=90, pts_ms=pts, audio=None),
        "gop": write_gop_clip(d / "d.mp4", n_frames=160, fps=30, gop=12),
    }


@pytest.mark.parametrize("name", ["25fps", "30fps", "vfr", "gop"])
def test_seeked_frames_equal_full_decode(clips: dict[str, Path], name: str) -> None:
    full = media.decode(clips[name], audio=False).frames  # [T, H, W, 3]
    n = len(full)
    picks = [n - 1, 0, 3, 4, 60, 61, n // 2, 2, n - 2, 60]  # any order, repeats, both ends
    got = read_frames(clips[name], picks, max_gap_s=0.5)
    np.testing.assert_array_equal(got, full[picks])
    # decoding on instead of seeking gives the same
    np.testing.assert_array_equal(read_frames(clips[name], picks, max_gap_s=100.0), full[picks])


def test_out_of_range_frame_is_a_typed_error(clips: dict[str, Path]) -> None:
    n = len(media.decode(clips["25fps"], audio=False).frames)
    with pytest.raises(FrameIndexError, match="past the end"):
        read_frames(clips["25fps"], [0, n + 5])
    with pytest.raises(FrameIndexError, match="negative"):
        read_frames(clips["25fps"], [-1])
