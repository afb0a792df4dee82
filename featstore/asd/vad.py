"""Voice activity per 25 fps frame with Silero VAD (weights ship inside the ``silero-vad`` wheel).

``silero-vad`` (MIT) needs only torch and ``packaging``; its TorchScript model is a file of
the package, so it runs offline on a fresh machine. Its audio I/O helpers would need
torchaudio; they are not used (audio comes from ``featstore.media``). Importing it sets
``torch.set_num_threads(1)`` for the whole process, so the setting is restored around the
import. The model keeps a recurrent state, so each thread gets its own copy.

A frame is speech when its centre lies in one of ``get_speech_timestamps``' speech
regions (threshold 0.5, regions under 250 ms dropped, pauses under 100 ms bridged, 30 ms
padding: the library's defaults).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from featstore import timebase
from featstore.errors import FeatstoreError

__all__ = ["VadUnavailableError", "speech_frames"]

_LOCAL = threading.local()
_IMPORT_LOCK = threading.Lock()


class VadUnavailableError(FeatstoreError, ImportError):
    """silero-vad is not installed (it comes with the ``faces`` extra)."""


def _model() -> Any:
    model = getattr(_LOCAL, "model", None)
    if model is None:
        import torch

        with _IMPORT_LOCK:
            threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError as exc:
                raise VadUnavailableError(
                    f"voice activity detection needs silero-vad ({exc}); "
                    "pip install 'featstore[faces]'"
                ) from exc
            finally:
                torch.set_num_threads(threads)
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                model = _LOCAL.model = load_silero_vad()
    return model


def speech_frames(
    audio: np.ndarray,
    n_frames: int,
    *,
    threshold: float = 0.5,
    sample_rate_hz: int = timebase.SAMPLE_RATE_HZ,
    frame_hz: float = timebase.FRAME_HZ,
) -> np.ndarray:
    """``[n_frames]`` bool: frame ``t`` (centre ``(t + 0.5) / frame_hz`` s) is in speech."""
    import torch
    from silero_vad import get_speech_timestamps

    speech = np.zeros(n_frames, dtype=bool)
    if len(audio) < sample_rate_hz // 10:
        return speech
    regions = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        _model(),
        threshold=threshold,
        sampling_rate=sample_rate_hz,
    )
    centres = (np.arange(n_frames) + 0.5) / frame_hz * sample_rate_hz  # [n_frames] samples
    for region in regions:
        speech |= (centres >= region["start"]) & (centres < region["end"])
    return speech
