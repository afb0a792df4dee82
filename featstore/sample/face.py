"""The sample's faces: a frontal face drawn per frame, its mouth opening driven by speech energy.

Geometry is in units of a 224-pixel frame and scaled to ``size``; proportions follow an
aligned frontal face crop (eyes at 0.48 H, nose base at 0.66 H, mouth at 0.76 H, chin at 0.9 H).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore import timebase

FRAME_HZ = int(timebase.FRAME_HZ)  # an int: the container's frame rate
SAMPLE_RATE_HZ = timebase.SAMPLE_RATE_HZ

_MOUTH_LEVELS = 24
_MAX_OPEN = 15.0  # mouth opening at full energy, in 224-units
_MOUTH_Y = 171.0
_BLINKS = (1.0, 0.45, 0.0)  # eye openness per blink state


@dataclass(frozen=True)
class Look:
    """A speaker's appearance (RGB colours in 0-255)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lips: tuple[float, float, float]
    iris: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[float, float, float]
    texture: tuple[float, ...]  # background texture: (fx, fy, phase) triples


@dataclass(frozen=True)
class FaceLayers:
    """Pre-drawn layers of one speaker: everything but the mouth is drawn once."""

    size: int
    margin: int  # the face layer is larger than the frame by this on each side (head motion)
    premult: np.ndarray  # [B, H + 2M, W + 2M, 3] face colour x alpha, one per blink state
    inv_alpha: np.ndarray  # [H + 2M, W + 2M, 1] 1 - alpha of the face layer
    background: np.ndarray  # [H, W, 3]
    mouth_box: tuple[int, int, int, int]  # y0, y1, x0, x1 on the face layer
    mouths: np.ndarray  # [L, h, w, 3] mouth patches, opening level 0..L-1
    mouths_blurred: np.ndarray  # [L, h, w, 3] the same, blurred (lip-sync artefact)


_HAIR = ((30, 22, 18), (60, 40, 28), (100, 70, 45), (150, 115, 70), (120, 60, 35), (20, 20, 22))


def random_look(rng: np.random.Generator) -> Look:
    """Skin tone, hair, eye, clothes and background colours of a new speaker."""
    tone = rng.uniform(0.0, 1.0)
    skin = np.array([236, 196, 170]) * (1 - tone) + np.array([150, 100, 72]) * tone
    hair = np.array(_HAIR[rng.integers(len(_HAIR))]) * rng.uniform(0.8, 1.15)
    lips = skin * np.array([0.86, 0.58, 0.58]) + np.array([20, 0, 5])
    iris = rng.choice([[70, 45, 25], [60, 90, 120], [80, 100, 60], [40, 30, 25]])
    shirt = rng.uniform(30, 200, 3)
    background = rng.uniform(90, 210, 3)
    texture = tuple(float(x) for x in rng.uniform([0.2, 0.2, 0], [2.5, 2.5, 6.3], (4, 3)).ravel())
    return Look(
        *(tuple(float(c) for c in col) for col in (skin, hair, lips, iris, shirt, background)),
        texture=texture,
    )


def _step(d: np.ndarray, s: float) -> np.ndarray:
    """Antialiased step: 0 for d < 0, 1 for d > 0, over about one pixel (d in 224-units)."""
    return np.clip(d * s + 0.5, 0.0, 1.0)


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, s: float
) -> np.ndarray:
    """Antialiased filled ellipse mask (centre, radii in 224-units; ``s`` pixels per unit)."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return _step((1 - r) * min(rx, ry), s)


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    """Gaussian bump in [0, 1] for soft shading."""
    return np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))


def _paint(rgb: np.ndarray, mask: np.ndarray, color: object) -> None:
    """Blend ``color`` into ``rgb`` [h, w, 3] in place with opacity ``mask`` [h, w]."""
    rgb += mask[..., None] * (np.asarray(color, np.float32) - rgb)


def _shade(rgb: np.ndarray, amount: np.ndarray) -> None:
    """Darken ``rgb`` in place by ``amount`` [h, w] (negative brightens)."""
    rgb *= (1 - amount)[..., None]


def build_layers(look: Look, *, size: int) -> FaceLayers:
    """Draw a speaker once: background, face per blink state, mouth patches per opening."""
    s = size / 224.0
    margin = max(2, round(6 * s))
    n = size + 2 * margin
    grid = (np.arange(n, dtype=np.float32) - margin) / s
    yy, xx = grid[:, None], grid[None, :]  # 224-units
    skin = np.asarray(look.skin, np.float32)
    rgb = np.zeros((n, n, 3), np.float32)
    alpha = np.zeros((n, n), np.float32)

    def layer(mask: np.ndarray, color: object) -> None:
        _paint(rgb, mask, color)
        np.maximum(alpha, mask, out=alpha)

    layer(_ellipse(yy, xx, 268, 112, 76, 128, s), look.shirt)  # shoulders
    neck = _step(30 - np.abs(xx - 112), s) * _step(yy - 150, s) * _step(236 - yy, s)
    layer(neck, skin * 0.8)
    _shade(rgb, 0.35 * _blob(yy, xx, 198, 112, 7, 34) * neck)  # shadow under the chin
    hair_back = _ellipse(yy, xx, 94, 112, 68, 71, s)
    layer(hair_back, look.hair)
    for side in (-1, 1):
        ear = _ellipse(yy, xx, 120, 112 + side * 60, 16, 8, s)
        layer(ear, skin * 0.9)
        _shade(rgb, 0.25 * _blob(yy, xx, 121, 112 + side * 61, 8, 3) * ear)
    rx = 62 * (1 - 0.32 * np.clip((yy - 118) / 84, 0, 1) ** 2)  # jaw tapers to the chin
    r = np.sqrt(((xx - 112) / rx) ** 2 + ((yy - 118) / 84) ** 2)
    face_mask = _step((1 - r) * 60, s)
    shade = 1.08 - 0.3 * np.clip(r, 0, 1) ** 3 - 0.05 * (xx - 112) / 62
    layer(face_mask, skin)
    rgb *= np.where(face_mask[..., None] > 0, shade[..., None], 1.0)
    hairline = 50 + 26 * ((xx - 112) / 62) ** 4
    layer(_step(hairline - yy, s) * np.maximum(hair_back, face_mask), look.hair)
    # Shading that makes the face read as a face: eye sockets, nose sides and base, blush.
    for side in (-1, 1):
        _shade(rgb, 0.16 * _blob(yy, xx, 103, 112 + side * 27, 9, 16))
        _shade(rgb, 0.12 * _blob(yy, xx, 126, 112 + side * 9, 14, 3))
        _shade(rgb, 0.14 * _blob(yy, xx, 144, 112 + side * 11, 4, 4.5))
        _paint(rgb, 0.08 * _blob(yy, xx, 140, 112 + side * 36, 12, 14), look.lips)
        _paint(rgb, _ellipse(yy, xx, 148, 112 + side * 6.5, 2.3, 4, s), skin * 0.3)  # nostril
    _shade(rgb, -0.07 * _blob(yy, xx, 139, 112, 5, 6))  # nose tip highlight
    _shade(rgb, 0.13 * _blob(yy, xx, 152, 112, 2.5, 10))  # under the nose
    _shade(rgb, 0.05 * _blob(yy, xx, 158, 112, 5, 3))  # philtrum
    _shade(rgb, 0.10 * _blob(yy, xx, 190, 112, 3, 14))  # above the chin
    for side in (-1, 1):  # eyebrows
        bx = 112 + side * 28
        u = (xx - bx) / 18
        yb = 92 - 5 * (1 - u**2) + 1.5 * side * u
        thick = 3.4 - 1.2 * side * u
        _paint(rgb, _step(1 - np.abs(u), s * 18) * _step(thick - np.abs(yy - yb), s), look.hair)

    eyes = []
    for openness in _BLINKS:
        out = rgb.copy()
        _draw_eyes(out, yy, xx, s, openness, look)
        eyes.append(out * alpha[..., None])
    y0, y1 = round(margin + 153 * s), round(margin + 193 * s)
    x0, x1 = round(margin + 84 * s), round(margin + 140 * s)
    base = rgb[y0:y1, x0:x1]
    my, mx = yy[y0:y1], xx[:, x0:x1]
    mouths = np.stack(
        [
            _draw_mouth(base, my, mx, s, _MAX_OPEN * i / (_MOUTH_LEVELS - 1), look)
            for i in range(_MOUTH_LEVELS)
        ]
    )
    feather = np.minimum.outer(
        *(np.minimum(np.arange(k), np.arange(k)[::-1]) for k in base.shape[:2])
    )
    feather = np.clip(feather / (4 * s), 0, 1)[None, ..., None]
    blurred = feather * _box_blur(mouths, max(1, round(s))) + (1 - feather) * mouths
    return FaceLayers(
        size=size,
        margin=margin,
        premult=np.stack(eyes),
        inv_alpha=(1 - alpha)[..., None],
        background=_background(look, size),
        mouth_box=(y0, y1, x0, x1),
        mouths=mouths,
        mouths_blurred=blurred.astype(np.float32),
    )


def _draw_eyes(
    rgb: np.ndarray, yy: np.ndarray, xx: np.ndarray, s: float, openness: float, look: Look
) -> None:
    """Sclera, iris, pupil, catch-light, lids and creases; ``openness`` 0 = closed."""
    for side in (-1, 1):
        ex, ey = 112 + side * 27, 108.0
        u = (xx - ex) / 13
        inside = _step(1 - np.abs(u), s * 13)
        bulge = np.clip(1 - u**2, 0, 1)
        upper = ey - 6.5 * openness * bulge - 0.6
        lower = ey + 3.8 * openness * bulge
        _shade(rgb, 0.12 * _step(upper + 0.5 - yy, s) * _step(yy - (upper - 5), s) * inside)  # lid
        if openness > 0:
            sclera = inside * _step(yy - upper, s) * _step(lower - yy, s)
            _paint(rgb, sclera, (232, 226, 220))
            iris = _ellipse(yy, xx, ey - 0.5, ex, 5.8, 5.8, s) * sclera
            _paint(rgb, iris, look.iris)
            _paint(rgb, _ellipse(yy, xx, ey - 0.5, ex, 2.6, 2.6, s) * sclera, (12, 10, 10))
            _paint(rgb, _ellipse(yy, xx, ey - 2.2, ex + 1.8, 1.1, 1.1, s) * sclera, (250, 250, 250))
            _paint(
                rgb,
                0.5 * inside * _step(1.0 - np.abs(yy - lower - 0.3), s),
                np.asarray(look.skin) * 0.6,
            )
        lid = inside * _step(1.3 - np.abs(yy - upper), s)
        _paint(rgb, lid, np.asarray(look.hair) * 0.4)
        _paint(
            rgb,
            0.35 * inside * _step(0.8 - np.abs(yy - (ey - 9.5 * bulge - 1)), s),
            np.asarray(look.skin) * 0.6,
        )  # crease


def _draw_mouth(
    base: np.ndarray, yy: np.ndarray, xx: np.ndarray, s: float, opening: float, look: Look
) -> np.ndarray:
    """Lips, dark interior and upper teeth for ``opening`` (224-units) on a copy of ``base``."""
    rgb = base.copy()
    hw = 22 * (1 - 0.08 * opening / _MAX_OPEN)
    u = (xx - 112) / hw
    e = np.sqrt(np.clip(1 - u**2, 0, 1))
    inside = _step(1 - np.abs(u), s * hw)
    upper_in = _MOUTH_Y - 0.25 * opening * e**0.8
    lower_in = _MOUTH_Y + 0.75 * opening * e**0.8
    upper_out = upper_in - 7.0 * e**0.7 + 1.8 * np.exp(-((u / 0.15) ** 2)) * e
    lower_out = lower_in + 8.5 * e**0.6
    _shade(rgb, 0.14 * _blob(yy, xx, _MOUTH_Y + 0.75 * opening + 12, 112, 3, 12))
    lips = np.asarray(look.lips, np.float32)
    _paint(rgb, inside * _step(yy - upper_out, s) * _step(upper_in - yy, s), lips * 0.85)
    lower = inside * _step(yy - lower_in, s) * _step(lower_out - yy, s)
    _paint(rgb, lower, lips)
    glint = np.exp(
        -(((yy - (lower_in + 0.45 * (lower_out - lower_in))) / 2.5) ** 2) - (u / 0.5) ** 2
    )
    _paint(rgb, 0.15 * glint * lower, (255, 235, 230))
    interior = inside * _step(yy - upper_in, s) * _step(lower_in - yy, s)
    _paint(rgb, interior, (48, 16, 20))
    teeth_end = upper_in + np.minimum(0.4 * (lower_in - upper_in), 4.5)
    _paint(
        rgb, interior * _step(teeth_end - yy, s) * _step(0.65 - np.abs(u), s * hw), (226, 220, 206)
    )
    line = _step(1.05 - np.abs(u), s * hw) * _step(
        0.8 - np.abs(yy - 0.5 * (upper_in + lower_in)), s
    )
    _paint(rgb, 0.85 * line * (1 - _step(opening - 1.5, 1.0)), (70, 30, 32))
    return rgb


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of [L, h, w, 3] patches with radius ``r`` (edges clamped)."""
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        n = x.shape[axis]
        x = (
            np.take(c, np.arange(2 * r + 1, n + 2 * r + 1), axis) - np.take(c, np.arange(n), axis)
        ) / (2 * r + 1)
    return x


def _background(look: Look, size: int) -> np.ndarray:
    g = np.linspace(0, 1, size, dtype=np.float32)
    yy, xx = g[:, None], g[None, :]
    tex = np.zeros((size, size), np.float32)
    t = look.texture
    for i in range(0, len(t), 3):
        tex += np.sin(2 * np.pi * (t[i] * xx + t[i + 1] * yy) + t[i + 2])
    light = 1.1 - 0.25 * yy + 0.04 * tex
    return np.clip(np.asarray(look.background, np.float32) * light[..., None], 0, 255)


def random_motion(rng: np.random.Generator, n_frames: int, *, size: int, margin: int) -> np.ndarray:
    """Per frame (dy, dx, blink state) [T, 3] int: smooth head sway and occasional blinks."""
    t = np.arange(n_frames) / FRAME_HZ
    shift = np.zeros((n_frames, 2))
    for axis, amp in ((0, 1.5), (1, 3.0)):
        for _ in range(3):
            f, ph = rng.uniform(0.1, 0.7), rng.uniform(0, 2 * np.pi)
            shift[:, axis] += amp / 2 * np.sin(2 * np.pi * f * t + ph)
    shift = np.clip(np.rint(shift * size / 224), -margin, margin)
    blink = np.zeros(n_frames, int)
    at = rng.uniform(0.3, 2.0)
    while at < t[-1]:
        i = int(at * FRAME_HZ)
        for k, state in enumerate((1, 2, 2, 1)):
            if i + k < n_frames:
                blink[i + k] = state
        at += rng.uniform(1.8, 4.5)
    return np.column_stack([shift.astype(int), blink])


def render(
    layers: FaceLayers, opening: np.ndarray, motion: np.ndarray, *, blurred: bool = False
) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 for per-frame mouth opening [T] in [0, 1] and motion [T, 3]."""
    S, M = layers.size, layers.margin
    levels = np.rint(np.clip(opening, 0, 1) * (_MOUTH_LEVELS - 1)).astype(int)
    mouths = layers.mouths_blurred if blurred else layers.mouths
    y0, y1, x0, x1 = layers.mouth_box
    out = np.empty((len(opening), S, S, 3), np.uint8)
    for i, (dy, dx, state) in enumerate(motion):
        ys, xs = M - dy, M - dx  # the face moves by (dy, dx): read the layer shifted back
        premult = layers.premult[state, ys : ys + S, xs : xs + S]
        frame = layers.background * layers.inv_alpha[ys : ys + S, xs : xs + S] + premult
        frame[y0 - ys : y1 - ys, x0 - xs : x1 - xs] = mouths[levels[i]]
        out[i] = np.clip(frame, 0, 255)
    return out


def write_mp4(
    path: Path, video: np.ndarray, audio: np.ndarray, *, video_codec: str, audio_codec: str
) -> None:
    """Encode ``video`` [T, H, W, 3] uint8 at 25 fps and ``audio`` [N] float32 at 16 kHz mono."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        vs = container.add_stream(video_codec, rate=FRAME_HZ)
        vs.width, vs.height = video.shape[2], video.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        if video_codec == "libx264":
            # Single-threaded and without macroblock-tree rate control: with mbtree on, x264
            # gave different bytes for the same input from one encode to the next.
            vs.options = {
                "crf": "20",
                "preset": "veryfast",
                "threads": "1",
                "x264-params": "mbtree=0",
            }
        else:
            vs.bit_rate = 800_000
        aus = container.add_stream(audio_codec, rate=SAMPLE_RATE_HZ)
        aus.layout = "mono"
        aus.bit_rate = 64_000
        aus.options = {"aac_coder": "fast"}
        for img in to_yuv420p(video):
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="yuv420p")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        chunk = 1024
        samples = audio.astype(np.float32)
        for start in range(0, len(samples), chunk):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + chunk], format="fltp", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE_HZ
            frame.pts = start
            for packet in aus.encode(frame):
                container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)


def to_yuv420p(video: np.ndarray) -> np.ndarray:
    """RGB [T, H, W, 3] uint8 -> planar YUV 4:2:0 [T, 3H/2, W] uint8 (BT.601 limited range).

    Integer arithmetic here instead of swscale keeps the encoder input bit-exact between
    runs (swscale's conversion gave occasional run-to-run differences under load).
    """
    t, h, w, _ = video.shape
    out = np.empty((t, h * 3 // 2, w), np.uint8)  # [T, 3H/2, W]
    for i, img in enumerate(video):  # one frame at a time stays in cache
        r, g, b = (img[..., c].astype(np.int32) for c in range(3))  # [H, W]
        out[i, :h] = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
        r4, g4, b4 = (
            c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2] for c in (r, g, b)
        )
        u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128  # [H/2, W/2], in 16..240
        v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
        out[i, h : h + h // 4] = u.reshape(h // 4, w)
        out[i, h + h // 4 :] = v.reshape(h // 4, w)
    return out
