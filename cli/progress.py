"""Progress of long commands: a bar on a terminal, periodic lines everywhere else.

Under a batch scheduler (stderr a file, not a terminal) a bar would stay
silent for hours; instead a line goes to stderr every ``every_s`` seconds
(a heartbeat, printed even when nothing finished since) and, optionally,
every ``every_items`` finished items, plus one when the work ends:

    2026-12-06T21:30:00Z extract logfbank on av1m: 120/1200 videos (10.0%), 3 failed, 2.1 videos/s, ETA 8 min 34 s

``extract``, ``datasets silence`` and ``datasets segment`` take
``--progress-every-s`` and ``--progress-every``; ``store compact`` logs every
minute. The decision is made on stderr, where progress goes, so ``--json``
output on stdout stays one document.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer

__all__ = [
    "DEFAULT_EVERY_S",
    "Every",
    "LineProgress",
    "Progress",
    "every_items_option",
    "every_s_option",
    "progress",
]

DEFAULT_EVERY_S = 60.0


@dataclass(frozen=True)
class Every:
    """When a line is due without a terminal: every ``seconds`` (0: never) and every
    ``items`` finished items (0: never); one line at the end either way."""

    seconds: float = DEFAULT_EVERY_S
    items: int = 0


def every_s_option() -> Any:
    return typer.Option(
        DEFAULT_EVERY_S,
        "--progress-every-s",
        min=0.0,
        metavar="SECONDS",
        help="Without a terminal (stderr redirected), log a progress line this often "
        "(0: never); on a terminal a progress bar is drawn instead.",
    )


def every_items_option(noun: str = "videos") -> Any:
    return typer.Option(
        0,
        "--progress-every",
        min=0,
        metavar="N",
        help=f"Without a terminal, also log a progress line every N finished {noun} (0: never).",
    )


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    seconds = round(seconds)
    if seconds < 60:
        return f"ETA {seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"ETA {minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours} h {minutes} min"


@dataclass(frozen=True)
class _Snapshot:
    done: int
    total: int | None
    detail: str
    at: float


class LineProgress:
    """Progress as lines (``write`` each): a heartbeat thread every ``every.seconds``,
    a line every ``every.items`` finished items, and one at :meth:`close`."""

    def __init__(
        self,
        label: str,
        every: Every,
        *,
        noun: str = "videos",
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.every, self.noun, self.clock = label, every, noun, clock
        self.write = write or (lambda line: typer.echo(line, err=True))
        self.start = clock()
        self._latest = _Snapshot(0, None, "", self.start)
        self._last_items = 0
        self._updated = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if every.seconds > 0:
            self._thread = threading.Thread(target=self._beat, name="progress-lines", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.every.seconds):
            self._emit()

    def line(self, snap: _Snapshot) -> str:
        """``<UTC time> <label>: done/total <noun> (pct), <detail>, rate, ETA``."""
        elapsed = max(snap.at - self.start, 1e-9)
        rate = snap.done / elapsed
        parts = [f"{snap.done}/{snap.total if snap.total is not None else '?'} {self.noun}"]
        if snap.total:
            parts[0] += f" ({100 * snap.done / snap.total:.1f}%)"
        if snap.detail:
            parts.append(snap.detail)
        parts.append(f"{rate:.2f} {self.noun}/s")
        eta = None if not snap.total or rate <= 0 else max(0, snap.total - snap.done) / rate
        parts.append(_eta(eta))
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{now} {self.label}: {', '.join(parts)}"

    def _emit(self) -> None:
        with self._lock:
            snap = self._latest
        self.write(self.line(_Snapshot(snap.done, snap.total, snap.detail, self.clock())))

    def update(self, done: int, total: int | None, detail: str = "") -> None:
        with self._lock:
            self._latest = _Snapshot(done, total, detail, self.clock())
            self._updated = True
        n = self.every.items
        if n > 0 and done - self._last_items >= n:
            self._last_items = done - done % n
            self._emit()

    def close(self) -> None:
        """Stop the heartbeat; the last state as a line, when there was any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._updated:
            self._emit()


class Progress:
    """What commands feed: ``update(done, total, detail)``; drawn as a bar or lines."""

    def __init__(self, update: Callable[[int, int | None, str], None]) -> None:
        self.update = update


@contextlib.contextmanager
def progress(
    label: str, *, every: Every = Every(), noun: str = "videos", quiet: bool = False
) -> Iterator[Progress]:
    """A rich bar on stderr when it is a terminal, else :class:`LineProgress` lines
    (none with ``quiet``). The bar is transient; the lines stay in the log."""
    from rich.console import Console

    console = Console(stderr=True)
    if quiet or (not console.is_terminal and every.seconds <= 0 and every.items <= 0):
        yield Progress(lambda done, total, detail="": None)
        return
    if not console.is_terminal:
        lines = LineProgress(label, every, noun=noun)
        try:
            yield Progress(lines.update)
        finally:
            lines.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, detail="")

        def update(done: int, total: int | None, detail: str = "") -> None:
            bar.update(task, completed=done, total=total, detail=detail)

        yield Progress(update)
