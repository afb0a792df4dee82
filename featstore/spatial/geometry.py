"""From an encoder's patch grid back to the original frame: affine maps and resampling.

Coordinates here are *edge* coordinates in pixels: pixel ``(i, j)`` of an image
covers ``[j, j + 1) x [i, i + 1)``, so an image of width ``W`` spans ``[0, W]``
and a relative coordinate is ``x / W``. Every encoder's preprocessing that
matters for location is affine per frame (a resize and a crop for CLIP and
VideoMAE; a square face box resized for FSFM; a similarity transform for the
mouth ROI), so one ``[2, 3]`` matrix per frame, *model input -> frame*, undoes
it. A patch grid of ``h x w`` cells splits the model input evenly; cell
``(r, c)`` has its centre at ``((c + 0.5) W_in / w, (r + 0.5) H_in / h)``.

>>> a = resize_crop_affine((480, 640), resized_hw=(224, 298), crop_hw=(224, 224))
>>> apply(a, np.array([[112.0, 112.0]])).round(2).tolist()  # the crop's centre
[[320.0, 240.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "apply",
    "cell_centres",
    "compose",
    "frame_map",
    "invert",
    "mouth_affine",
    "peak_cells",
    "peaks_relative",
    "resize_crop_affine",
    "scale_affine",
    "square_box_affine",
]


def _full(a: np.ndarray) -> np.ndarray:
    """``[..., 2, 3] -> [..., 3, 3]``."""
    a = np.asarray(a, dtype=np.float64)
    bottom = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*a.shape[:-2], 1, 3))
    return np.concatenate([a, bottom], axis=-2)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine ``x -> outer(inner(x))`` (broadcast over leading dims)."""
    return (_full(outer) @ _full(inner))[..., :2, :]


def invert(a: np.ndarray) -> np.ndarray:
    return np.linalg.inv(_full(a))[..., :2, :]


def apply(a: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points [..., K, 2]`` (x, y) mapped by ``a [..., 2, 3]``."""
    a = np.asarray(a, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ np.swapaxes(a[..., :, :2], -1, -2) + a[..., None, :, 2]


def scale_affine(sx: float, sy: float, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
    return np.array([[sx, 0.0, tx], [0.0, sy, ty]])


def resize_crop_affine(
    frame_hw: tuple[int, int], *, resized_hw: tuple[int, int], crop_hw: tuple[int, int] | None
) -> np.ndarray:
    """Model input -> frame for "resize to ``resized_hw``, then centre crop ``crop_hw``".

    The crop offset is transformers' ``(size - crop) // 2`` (a negative one pads),
    as :func:`featstore.encoders.hf.center_crop` does it.
    """
    h, w = frame_hw
    rh, rw = resized_hw
    top = left = 0
    if crop_hw is not None:
        top, left = (rh - crop_hw[0]) // 2, (rw - crop_hw[1]) // 2
    # input x -> resized x + left -> frame (x + left) * w / rw
    return scale_affine(w / rw, h / rh, left * w / rw, top * h / rh)


def square_box_affine(box: np.ndarray, size: int) -> np.ndarray:
    """Crop -> frame for a ``size x size`` crop of the box ``(x0, y0, x1, y1)``.

    The box is in :mod:`featstore.crops`' pixel-centre convention (pixel ``i``
    spans ``[i - 0.5, i + 0.5]``), so its edge coordinates are ``+ 0.5``.
    """
    x0, y0, x1, _ = (float(v) for v in box)
    step = (x1 - x0) / size
    return scale_affine(step, step, x0 + 0.5, y0 + 0.5)


def mouth_affine(frame_to_roi: np.ndarray, *, offset: float) -> np.ndarray:
    """Model input -> frame for a mouth ROI warped by ``frame_to_roi`` (cv2 pixel centres)
    and centre-cropped by ``offset`` pixels a side (96 -> 88: 4)."""
    to_roi_centre = scale_affine(1.0, 1.0, offset - 0.5, offset - 0.5)  # input edge -> ROI centre
    roi_to_frame = invert(frame_to_roi)  # ROI centre coords -> frame centre coords
    to_edge = scale_affine(1.0, 1.0, 0.5, 0.5)
    return compose(to_edge, compose(roi_to_frame, to_roi_centre))


def cell_centres(grid_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """``[h * w, 2]`` (x, y) centres of the grid's cells in model-input edge coordinates."""
    h, w = grid_hw
    ys = (np.arange(h) + 0.5) * input_hw[0] / h
    xs = (np.arange(w) + 0.5) * input_hw[1] / w
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def peak_cells(maps: np.ndarray) -> np.ndarray:
    """``[N, h, w] -> [N, 2]`` (row, col) of each map's maximum (the first one on ties)."""
    n, _, w = maps.shape
    flat = np.nan_to_num(maps.reshape(n, -1), nan=-np.inf).argmax(axis=1)
    return np.stack([flat // w, flat % w], axis=1)


def peaks_relative(
    cells: np.ndarray,
    to_frame: np.ndarray,
    *,
    grid_hw: tuple[int, int],
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> np.ndarray:
    """``[N, 2]`` (x / W, y / H) of the centres of ``cells [N, 2]`` (row, col) in the frame."""
    h, w = grid_hw
    centre = np.stack(
        [(cells[:, 1] + 0.5) * input_hw[1] / w, (cells[:, 0] + 0.5) * input_hw[0] / h], axis=1
    )  # [N, 2] input edge coords
    xy = apply(to_frame, centre[:, None, :])[:, 0]  # [N, 2] frame edge coords
    return xy / np.array([frame_hw[1], frame_hw[0]], dtype=np.float64)


def frame_map(
    grid: np.ndarray,
    to_frame: np.ndarray,
    *,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """A grid map ``[h, w]`` drawn over the frame: ``[H', W']`` (default the frame's size).

    Each output pixel's centre is mapped back into the model input and the grid is
    interpolated bilinearly between cell centres (clamped at the outer half cells);
    pixels the model never saw are NaN.
    """
    h, w = grid.shape
    fh, fw = frame_hw
    oh, ow = out_hw or frame_hw
    ys = (np.arange(oh) + 0.5) * fh / oh
    xs = (np.arange(ow) + 0.5) * fw / ow
    gx, gy = np.meshgrid(xs, ys)  # [oh, ow] frame edge coords
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    inp = apply(invert(to_frame), pts)  # [oh * ow, 2] model-input edge coords
    inside = (
        (inp[:, 0] >= 0)
        & (inp[:, 0] <= input_hw[1])
        & (inp[:, 1] >= 0)
        & (inp[:, 1] <= input_hw[0])
    )
    # continuous cell coordinates: cell c's centre at c
    cx = np.clip(inp[:, 0] * w / input_hw[1] - 0.5, 0, w - 1)
    cy = np.clip(inp[:, 1] * h / input_hw[0] - 0.5, 0, h - 1)
    x0, y0 = np.floor(cx).astype(int), np.floor(cy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = cx - x0, cy - y0
    g = np.asarray(grid, dtype=np.float64)
    v = (
        g[y0, x0] * (1 - fx) * (1 - fy)
        + g[y0, x1] * fx * (1 - fy)
        + g[y1, x0] * (1 - fx) * fy
        + g[y1, x1] * fx * fy
    )
    v[~inside] = np.nan
    return v.reshape(oh, ow).astype(np.float32)


def long_side_hw(frame_hw: Sequence[int], long_side: int) -> tuple[int, int]:
    """The frame's aspect ratio with its longer side ``long_side`` (at least 1 pixel each)."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if h >= w:
        return long_side, max(1, round(long_side * w / h))
    return max(1, round(long_side * h / w)), long_side
