"""The decode stage: one video file -> the :class:`Clip` its encoder takes.

Decodes what the encoder's modality needs (25 fps RGB, 16 kHz mono) within the
run's :class:`~featstore.decode_limits.DecodeLimits` (only the span ``[start_s, until_s)``
of the file when given: a seek, as for a segment dataset's rows), crops mouth or face from
landmark tracks (the store's cached ``tracks-dlib68`` when present, tracked here otherwise;
a segment's own track, never re-tracked, with ``require_tracks``) and rejects clips too
short to give one row. Every failure is a typed per-video error
(:data:`VIDEO_ERRORS`), running out of memory included; there is no whole-frame
fallback when a crop fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from featstore import timebase
from featstore.decode_limits import EXTRACT_LIMITS, DecodeLimits, memory_guard
from featstore.encoders.base import Clip, ClipError, EncoderSpec
from featstore.landmarks import FaceTracks, NoFaceError
from featstore.media_errors import MediaError

log = logging.getLogger(__name__)

# Errors that fail one video (recorded in the store's _failures) and never stop a run.
VIDEO_ERRORS: tuple[type[Exception], ...] = (MediaError, NoFaceError, ClipError)


class ClipTooShortError(ClipError):
    """A clip gives no rows at the encoder's rate (e.g. shorter than its window)."""


class MissingTracksError(ClipError):
    """A segment has no stored face track covering its frames (it is never re-tracked)."""


@dataclass(frozen=True, eq=False)
class PreparedClip:
    """A decoded (and cropped) clip, with tracks computed here that the store lacks."""

    clip: Clip
    n_frames: int  # length in 25 fps frames (the batching unit)
    new_tracks: FaceTracks | None = None


TracksLookup = Callable[[str], FaceTracks | None]


def prepare_clip(
    video_id: str,
    path: str,
    *,
    spec: EncoderSpec,
    n_rows: Callable[[int], int],
    cached_tracks: TracksLookup | None = None,
    limits: DecodeLimits | None = None,
    start_s: float = 0.0,
    until_s: float | None = None,
    require_tracks: bool = False,
) -> PreparedClip:
    """Decode ``path`` for the encoder described by ``spec``; raise a VIDEO_ERRORS on failure.

    ``limits``: the decode bounds (None: ``featstore extract``'s, :data:`EXTRACT_LIMITS`);
    media past them fail with a :class:`~featstore.media_errors.MediaLimitError`.
    ``start_s``, ``until_s``: decode only that span of the file (seconds), as
    :func:`featstore.media.decode`. ``require_tracks``: crop from ``cached_tracks`` only
    (a segment's own face track); a missing or mismatched track fails the clip with
    :class:`MissingTracksError` instead of tracking the faces again.
    """
    from featstore.media import decode

    limits = EXTRACT_LIMITS if limits is None else limits
    media = decode(
        path,
        video=spec.needs_video,
        audio=spec.needs_audio,
        start_s=start_s,
        until_s=until_s,
        limits=limits,
    )
    frames, new_tracks = media.frames, None
    with memory_guard(
        path, "while cropping the frames" if spec.crop != "none" else "after decoding"
    ):
        if spec.needs_video and spec.crop != "none":
            frames, new_tracks = _crop(
                video_id, media.frames, spec.crop, cached_tracks, require=require_tracks
            )
        clip = Clip(video_id=video_id, frames=frames, audio=media.audio)
    n_frames = clip.duration_frames
    if spec.needs_audio and media.audio is not None:
        n_frames = min(n_frames, timebase.samples_to_frames(int(media.audio.shape[0])))
    if n_frames < 1 or n_rows(n_frames) < 1:
        span = "" if (start_s, until_s) == (0.0, None) else f" [{start_s:g}, {until_s} s)"
        raise ClipTooShortError(
            f"{path}{span}: {n_frames} frames ({timebase.frames_to_seconds(n_frames):.2f} s) "
            f"give no rows for {spec.name} at {spec.frame_hz:g} Hz"
        )
    return PreparedClip(clip=clip, n_frames=clip.duration_frames, new_tracks=new_tracks)


def _crop(
    video_id: str,
    frames: object,
    crop: str,
    cached_tracks: TracksLookup | None,
    *,
    require: bool = False,
) -> tuple[object, FaceTracks | None]:
    import numpy as np

    from featstore.crops import crop_face, crop_mouth
    from featstore.landmarks import track_faces

    frames = np.asarray(frames)  # [T, H, W, 3]
    tracks = cached_tracks(video_id) if cached_tracks is not None else None
    new = None
    if require and (tracks is None or tracks.n_frames != len(frames)):
        have = "no stored face track" if tracks is None else f"a track of {tracks.n_frames} frames"
        raise MissingTracksError(
            f"segment {video_id}: {len(frames)} frames decoded and {have} (tracks-dlib68); "
            "segments are cropped from the track `featstore datasets segment` stored, never "
            "re-tracked: segment the source again"
        )
    if tracks is not None and tracks.n_frames != len(frames):
        log.warning(
            "cached tracks of %s cover %d frames, the video has %d; tracking again",
            video_id,
            tracks.n_frames,
            len(frames),
        )
        tracks = None
    if tracks is None:
        tracks = new = track_faces(frames)
    cropped = crop_mouth(frames, tracks) if crop == "mouth" else crop_face(frames, tracks)
    return cropped, new
