"""An upload decoded once into the clip each encoder takes.

The runs an upload is scored with may need several encoders (an audio and a
visual one for a sync run, different ones for the members of a fusion).
:func:`prepare_upload` decodes the file once, with the streams any of them
needs, tracks faces once when any needs a mouth or face crop, and builds each
encoder's :class:`~featstore.encoders.base.Clip` from that, exactly as the
extraction worker's decode stage would (same decoder, same crops, same
too-short check), so an upload's rows equal the stored rows of the same file.
The leading silence (for silence-trimming runs) is measured on the same audio.
A segment of an upload (``POST /v1/score?segment=true``, :mod:`featstore.api.segments`) is
prepared the same way from its span (``start_s``/``until_s``: a seek) and its
speaking face's track (``tracks``: never tracked again), as extraction prepares
a segment dataset's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from featstore import timebase
from featstore.encoders.base import Clip, EncoderSpec
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.landmarks import FaceTracks

__all__ = ["PreparedUpload", "prepare_upload"]


@dataclass(frozen=True, eq=False)
class PreparedUpload:
    """Each encoder's clip (by the caller's key), the length, and the leading silence;
    with ``keep_going``, the encoders whose clip could not be made and why."""

    clips: Mapping[Hashable, Clip] = field(repr=False)
    n_frames: int  # decoded video frames (or whole audio frames when no video was decoded)
    leading_silence_s: float | None = None
    tracks: FaceTracks | None = field(default=None, repr=False)  # when a crop needed them
    failed: Mapping[Hashable, FeatstoreError] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return float(timebase.frames_to_seconds(self.n_frames))


def prepare_upload(
    path: str,
    encoders: Mapping[Hashable, tuple[EncoderSpec, Callable[[int], int]]],
    *,
    silence: bool = False,
    max_duration_s: float | None = None,
    start_s: float = 0.0,
    until_s: float | None = None,
    tracks: FaceTracks | None = None,
    keep_going: bool = False,
) -> PreparedUpload:
    """Decode ``path`` once and build the clip of every encoder in ``encoders``.

    ``encoders`` maps a key to the encoder's spec and its ``n_rows`` function.
    ``silence`` measures the leading silence (decoding audio if no encoder
    needs it). ``start_s``, ``until_s``: only that span of the file (as
    :func:`featstore.media.decode`; ``max_duration_s`` then bounds the span);
    ``tracks``: crop from these face tracks (one per decoded frame) instead of
    tracking the faces. Raises the decode stage's typed errors (``MediaError``,
    ``NoFaceError``, ``ClipTooShortError``, ``MissingTracksError``) and
    ``MediaTooLongError`` past ``max_duration_s``. ``keep_going``: an encoder whose clip
    cannot be made (no face to crop, too short for it) goes to ``failed`` with its
    ``NoFaceError`` / ``ClipError`` instead, and the others are prepared.
    """
    from featstore.decode_limits import DecodeLimits, memory_guard
    from featstore.encoders.base import ClipError
    from featstore.extract.decode import ClipTooShortError
    from featstore.landmarks import NoFaceError
    from featstore.media import decode, leading_silence_s

    specs = {k: spec for k, (spec, _) in encoders.items()}
    need_video = any(s.needs_video for s in specs.values())
    need_audio = silence or any(s.needs_audio for s in specs.values())
    # decoding stops at the limit even when the header lies about the duration
    limits = (
        DecodeLimits() if max_duration_s is None else DecodeLimits(max_duration_s=max_duration_s)
    )
    media = decode(
        path,
        video=need_video,
        audio=need_audio,
        start_s=start_s,
        until_s=until_s,
        limits=limits,
    )
    audio_frames = (
        None if media.audio is None else timebase.samples_to_frames(int(media.audio.shape[0]))
    )
    n_frames = int(media.frames.shape[0]) if media.frames is not None else int(audio_frames or 0)
    if max_duration_s is not None:
        _check_duration(n_frames, max_duration_s)
    crop_kinds = {s.crop for s in specs.values() if s.needs_video}
    crop_error: FeatstoreError | None = None
    with memory_guard(
        path, "while cropping the frames" if crop_kinds - {"none"} else "after decoding"
    ):
        try:
            crops, tracks = _crops(media.frames, crop_kinds, tracks)
        except (NoFaceError, ClipError) as exc:
            if not keep_going:
                raise
            crop_error = exc  # no mouth or face crops; full frames still feed crop "none"
            crops, _ = _crops(media.frames, crop_kinds & {"none"}, None)
    clips: dict[Hashable, Clip] = {}
    failed: dict[Hashable, FeatstoreError] = {}
    for key, (spec, n_rows) in encoders.items():
        if crop_error is not None and spec.needs_video and spec.crop != "none":
            failed[key] = crop_error
            continue
        clip = Clip(
            video_id="upload",
            frames=crops[spec.crop] if spec.needs_video else None,
            audio=media.audio if spec.needs_audio else None,
        )
        usable = clip.duration_frames
        if spec.needs_audio and audio_frames is not None:
            usable = min(usable, audio_frames)
        if usable < 1 or n_rows(usable) < 1:
            short = ClipTooShortError(
                f"the upload's {usable} frames ({timebase.frames_to_seconds(usable):.2f} s) give "
                f"no rows for {spec.name} at {spec.frame_hz:g} Hz"
            )
            if not keep_going:
                raise short
            failed[key] = short
            continue
        clips[key] = clip
    silence_s = None
    if silence and media.audio is not None:
        silence_s = float(leading_silence_s(media.audio))
    return PreparedUpload(
        clips=clips, n_frames=n_frames, leading_silence_s=silence_s, tracks=tracks, failed=failed
    )


def _check_duration(n_frames: int, max_duration_s: float) -> None:
    """Media whose container declared no duration are measured once decoded."""
    from featstore.api.uploads import MediaTooLongError

    seconds = float(timebase.frames_to_seconds(n_frames))
    if seconds > max_duration_s + float(timebase.frames_to_seconds(1)):
        raise MediaTooLongError(
            f"media lasts {seconds:.1f} s, above the limit of {max_duration_s:g} s "
            "(--max-duration-s)"
        )


def _crops(
    frames: np.ndarray | None, kinds: set[str], tracks: FaceTracks | None = None
) -> tuple[dict[str, np.ndarray | None], FaceTracks | None]:
    """The frames each crop kind feeds (faces tracked once for mouth and face crops, unless
    ``tracks`` are given), and the tracks the crops were cut from (None without crops)."""
    out: dict[str, np.ndarray | None] = {}
    if frames is None:
        return out, None
    if "none" in kinds:
        out["none"] = frames
    if not kinds & {"mouth", "face"}:
        return out, None
    from featstore.crops import crop_face, crop_mouth
    from featstore.landmarks import track_faces

    if tracks is None:
        tracks = track_faces(np.asarray(frames))
    elif tracks.n_frames != len(frames):
        from featstore.extract.decode import MissingTracksError

        raise MissingTracksError(
            f"the face track covers {tracks.n_frames} frames, {len(frames)} were decoded"
        )
    if "mouth" in kinds:
        out["mouth"] = crop_mouth(frames, tracks)
    if "face" in kinds:
        out["face"] = crop_face(frames, tracks)
    return out, tracks
