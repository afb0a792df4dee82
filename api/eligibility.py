"""Which runs can score an upload, and what the client is told about the others.

An upload is scored by the runs named in ``runs``, or by default by every loaded run.
A run cannot score an upload that lacks a stream its encoders read (audio for
``logfbank``, video for ``mouth-pixels``; audio also for runs that trim the leading
silence), that has no face its mouth or face encoders can crop, or that is too short
for one of its encoders or under the run's minimum length. Then:

- runs named in ``runs`` must all score: otherwise 422 (:class:`UnscorableUploadError`),
  naming each run that cannot and why, and the runs that could;
- by default, the runs that can score do, and the response lists the others under
  ``skipped`` with the reason (:class:`~featstore.api.models.SkippedRun`); 422 when none can.

The messages are for HTTP clients: they name runs, encoders and the ``runs`` parameter,
never Python arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featstore.api.models import SkippedRun
from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.api.encoders import EncoderKey
    from featstore.api.scoring import LoadedRun
    from featstore.encoders.base import EncoderSpec

__all__ = ["Unscorable", "UnscorableUploadError", "by_clip", "by_streams", "refusal"]


class UnscorableUploadError(FeatstoreError):
    """The requested runs (or, by default, all loaded runs) cannot score this upload (422)."""


@dataclass(frozen=True)
class Unscorable:
    """A run that cannot score an upload: the reason's code and the reason in words."""

    run: LoadedRun
    reason: str  # no_audio_stream | no_video_stream | no_face | too_short
    detail: str

    def skipped(self) -> SkippedRun:
        return SkippedRun.model_validate(
            {
                "run": self.run.name,
                "kind": self.run.kind,
                "reason": self.reason,
                "detail": self.detail,
            }
        )


def _encoders(run: LoadedRun, spec: Callable[[EncoderKey], EncoderSpec], need: str) -> list[str]:
    """Names of the run's encoders that read ``need`` (audio / video)."""
    names = []
    for key in dict.fromkeys(run.encoders.values()):
        s = spec(key)
        if (s.needs_audio if need == "audio" else s.needs_video) and s.name not in names:
            names.append(s.name)
    return names


def _its(encoders: Sequence[str]) -> str:
    if len(encoders) == 1:
        return f"its encoder {encoders[0]} reads"
    return f"its encoders {', '.join(encoders)} read"


def by_streams(
    runs: Sequence[LoadedRun],
    spec: Callable[[EncoderKey], EncoderSpec],
    *,
    has_audio: bool,
    has_video: bool,
) -> list[Unscorable]:
    """The runs that need a stream the upload lacks (``spec``: a loaded encoder's spec)."""
    out = []
    for run in runs:
        if not has_audio:
            readers = _encoders(run, spec, "audio")
            if readers or run.detector.needs_silence:
                why = (
                    f"{_its(readers)} audio"
                    if readers
                    else "it trims the leading silence it measures in the audio"
                )
                out.append(Unscorable(run, "no_audio_stream", f"no audio stream: {why}"))
                continue
        if not has_video:
            readers = _encoders(run, spec, "video")
            if readers:
                out.append(
                    Unscorable(
                        run,
                        "no_video_stream",
                        f"no video stream: {_its(readers)} video",
                    )
                )
    return out


def by_clip(
    runs: Sequence[LoadedRun],
    failed: Mapping[EncoderKey, FeatstoreError],
    spec: Callable[[EncoderKey], EncoderSpec],
) -> list[Unscorable]:
    """The runs reading an encoder whose clip could not be made (no face, too short)."""
    from featstore.landmarks import NoFaceError

    out = []
    for run in runs:
        for key in dict.fromkeys(run.encoders.values()):
            if key in failed:
                exc = failed[key]
                s = spec(key)
                if isinstance(exc, NoFaceError):
                    detail = f"no face to crop for its {s.crop}-crop encoder {s.name}: {exc}"
                    out.append(Unscorable(run, "no_face", detail))
                else:
                    out.append(Unscorable(run, "too_short", f"{exc}"))
                break
    return out


def refusal(
    unscorable: Sequence[Unscorable], others: Sequence[str], *, named: bool
) -> UnscorableUploadError:
    """The 422 for runs that cannot score: each run and why, then what the client can do
    (``others``: the loaded runs that could score this upload)."""
    reasons = "; ".join(f"run {u.run.name}: {u.detail}" for u in unscorable)
    codes = {u.reason for u in unscorable}
    fixes = []
    if "no_audio_stream" in codes:
        fixes.append("upload a file with an audio track")
    if "no_video_stream" in codes:
        fixes.append("upload a file with a video track")
    if "no_face" in codes:
        fixes.append("upload a clip showing the speaker's face")
    if "too_short" in codes:
        fixes.append("upload a longer clip")
    if others:
        fixes.append(f"name runs that can score it: runs={','.join(others)}")
    what = "these requested runs cannot" if named else "none of the loaded runs can"
    return UnscorableUploadError(f"{what} score this upload ({reasons}): {', or '.join(fixes)}")
