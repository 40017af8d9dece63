"""The one progress bar of floodax's long runs: the demo, the studies, the
sweeps and ``floodax verify``.

A bar counts units of work (an epoch of one run, a check of ``verify``) up to
a total known before the first unit, and draws itself on standard error,
with the time spent and the time left at the rate so far, only when standard
error is a terminal: piped or captured output, CI's logs and ``--no-progress``
get no bar. Nothing but the standard library, so the core package can use it.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

REDRAW_SECONDS = 0.1
"""The bar is drawn again at most this often, and after its last unit."""
WIDTH = 24
"""Characters of the bar itself."""
LONG_RUN_SECONDS = 300.0
"""A run estimated to take longer says so (the studies' ``announce``)."""


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f"{hours}:{minutes:02d}:{seconds:02d}"
        if hours
        else f"{minutes:02d}:{seconds:02d}"
    )


class Progress:
    """A bar of ``total`` units on standard error (see the module's note).

    ``update(n)`` counts ``n`` more units done; ``status`` (what is running
    now) is shown at the end of the line, where a narrow terminal cuts it.
    The time left is the time per unit since the first update times the
    units left: the first update, which waits for the compilations, is left
    out of the rate (``?`` until there is a second).

    Args:
      total: the units of the whole run, at least 1.
      desc: what the bar counts.
      enabled: ``False`` draws nothing (the ``--no-progress`` flags).
      stream: where to draw; standard error (looked up when the bar is made)
        by default. The bar is drawn only if ``stream.isatty()``.
      clock: seconds, for tests; ``time.monotonic`` by default.
      announce: seconds; a run whose first estimate of its whole time
        exceeds this says so once, on a line of its own, terminal or not
        (but not when ``enabled`` is ``False``). The estimate is made when
        one twentieth of the units after the first are done, at their rate.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        announce: float | None = None,
    ) -> None:
        if int(total) < 1:
            raise ValueError(f"`total` must be at least 1 unit of work, got {total}.")
        self.total, self.desc, self._status, self.n = int(total), desc, "", 0
        self._stream = sys.stderr if stream is None else stream
        tty = self._stream is not None and self._stream.isatty()
        self.enabled = bool(enabled) and tty
        self._clock, self._start = clock, clock()
        # Announced once, and never when disabled or the stream is absent.
        self._announce = announce if enabled and self._stream else None
        self._first: tuple[int, float] | None = None
        self._drawn, self._width = -float("inf"), 0
        self._draw()

    def line(self) -> str:
        """The bar as it is drawn now."""
        done = self.n
        filled = WIDTH * done // self.total
        elapsed = self._clock() - self._start
        rate = self._seconds_per_unit()
        eta = "?" if rate is None else _clock(rate * (self.total - done))
        return (
            f"{self.desc}: {100 * done // self.total:3d}% "
            f"|{'#' * filled}{'.' * (WIDTH - filled)}| {done}/{self.total} "
            f"[{_clock(elapsed)} spent, {eta} left] {self._status}"
        ).rstrip()

    @property
    def status(self) -> str:
        """What is running now, drawn at once when it changes."""
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self._draw()

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units done."""
        self.n += n
        if self._first is None:
            self._first = (self.n, self._clock())
        elif self._announce is not None:
            self._maybe_announce()
        if self._clock() - self._drawn >= REDRAW_SECONDS or self.n >= self.total:
            self._draw()

    def _seconds_per_unit(self) -> float | None:
        """The rate since the first unit (``None`` until a unit after it)."""
        if self._first is None or self.n <= self._first[0]:
            return None
        since, then = self._first
        return (self._clock() - then) / (self.n - since)

    def total_seconds(self) -> float | None:
        """The whole run's time at the rate since the first unit (``None``
        until there is one)."""
        rate = self._seconds_per_unit()
        if rate is None:
            return None
        since, then = self._first
        return then - self._start + rate * (self.total - since)

    def _maybe_announce(self) -> None:
        since, _ = self._first
        if self.n - since < max(1, (self.total - since) // 20) or self.n >= self.total:
            return
        seconds, threshold, self._announce = self.total_seconds(), self._announce, None
        if seconds is None or seconds <= threshold:
            return
        self._erase()
        self._stream.write(
            f"note: {self.desc}: about {seconds / 60:.0f} minutes in all on this "
            f"machine, at the rate of {self.n}/{self.total} so far; Ctrl-C "
            "stops it.\n"
        )
        self._stream.flush()
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        self._drawn = self._clock()
        # Cut to the terminal's width: a line that wraps is not redrawn by \r.
        text = self.line()[: shutil.get_terminal_size().columns - 1]
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def _erase(self) -> None:
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def close(self) -> None:
        """Erases the bar, leaving the line to what is printed next."""
        self._erase()
        self.enabled = False


@contextlib.contextmanager
def progress_bar(
    progress: bool | Progress,
    total: int,
    desc: str,
    *,
    announce: float | None = None,
) -> Iterator[Progress]:
    """A bar of ``total`` units, closed at the end; or, when ``progress`` is
    already a :class:`Progress` (the bar of an outer loop, which counted
    this work in its total), that bar, left open for the outer loop."""
    if isinstance(progress, Progress):
        yield progress
        return
    bar = Progress(total, desc, enabled=progress, announce=announce)
    try:
        yield bar
    finally:
        bar.close()
