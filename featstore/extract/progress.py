"""What an extraction reports: live progress snapshots and the final summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractProgress:
    """A snapshot passed to ``on_progress`` callbacks (the CLI draws it as a bar).

    ``videos_total`` counts the videos this run has to process (already committed
    ones are in ``videos_skipped``, not in the total).
    """

    videos_total: int
    videos_done: int
    videos_failed: int
    videos_skipped: int
    frames: int  # 25 fps input frames of the videos done
    elapsed_s: float

    @property
    def videos_finished(self) -> int:
        return self.videos_done + self.videos_failed

    @property
    def videos_per_s(self) -> float:
        return self.videos_finished / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current video rate (None before the first video)."""
        rate = self.videos_per_s
        if rate <= 0:
            return None
        return max(0, self.videos_total - self.videos_finished) / rate


ProgressCallback = Callable[[ExtractProgress], None]


@dataclass(frozen=True)
class ExtractSummary:
    """The result of an extraction (or of one task of it).

    ``bytes_written`` counts the feature rows written (the store's layer arrays are
    uncompressed, so this is their size on disk, without the small metadata objects).
    """

    videos_done: int
    videos_skipped: int
    videos_failed: int
    frames: int  # 25 fps input frames of the videos done
    rows: int  # stored rows per layer, summed over videos
    seconds: float
    bytes_written: int
    parts_written: int
    oom_splits: int = 0  # batches halved after running out of device memory

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def videos_per_s(self) -> float:
        return self.videos_done / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def merge(cls, parts: Iterable[ExtractSummary], *, seconds: float) -> ExtractSummary:
        """Sum several tasks' summaries; ``seconds`` is the wall time of the whole run."""
        items = list(parts)
        return cls(
            videos_done=sum(p.videos_done for p in items),
            videos_skipped=sum(p.videos_skipped for p in items),
            videos_failed=sum(p.videos_failed for p in items),
            frames=sum(p.frames for p in items),
            rows=sum(p.rows for p in items),
            seconds=seconds,
            bytes_written=sum(p.bytes_written for p in items),
            parts_written=sum(p.parts_written for p in items),
            oom_splits=sum(p.oom_splits for p in items),
        )
