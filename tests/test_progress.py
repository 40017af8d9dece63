"""The shared progress bar (floodax/_progress.py)."""

from __future__ import annotations

import io

import pytest

from floodax import _progress
from floodax._progress import Progress, progress_bar
from tests.helpers import Terminal, bars


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_bar_counts_to_its_total_with_the_time_left_at_the_rate_since_the_first(
    monkeypatch,
):
    monkeypatch.setenv("COLUMNS", "200")
    clock, stream = Clock(), Terminal()
    bar = Progress(4, "work", stream=stream, clock=clock)
    assert bar.line() == (
        "work:   0% |........................| 0/4 [00:00 spent, ? left]"
    )
    clock.now += 30
    bar.update()
    # The first unit waited for compilations: no rate from it alone.
    assert "1/4 [00:30 spent, ? left]" in bar.line()
    clock.now += 20
    bar.update(2)
    bar.status = "the last unit"
    # 20 s for the 2 units since the first: 10 s for the last.
    assert bar.line() == (
        "work:  75% |##################......| 3/4 [00:50 spent, 00:10 left] "
        "the last unit"
    )
    clock.now += 3600
    bar.update()
    assert "4/4 [1:00:50 spent, 00:00 left]" in bar.line()
    drawn = stream.getvalue()
    # Drawn when made, at each update and when the status changed.
    assert bars(drawn) == {"work": [(0, 4), (1, 4), (3, 4), (3, 4), (4, 4)]}
    assert drawn.split("\r")[4].endswith("the last unit")
    bar.close()
    # Closing erases the bar's line and leaves the cursor at its start.
    width = len(drawn.split("\r")[-1])
    assert stream.getvalue()[len(drawn) :] == "\r" + " " * width + "\r"


def test_redraws_are_throttled_but_the_last_unit_is_drawn():
    clock, stream = Clock(), Terminal()
    bar = Progress(100, "fast", stream=stream, clock=clock)
    for _ in range(100):
        clock.now += _progress.REDRAW_SECONDS / 4
        bar.update()
    drawn = [done for done, _ in bars(stream.getvalue())["fast"]]
    assert drawn == [0, *range(4, 100, 4), 100]


def test_no_bar_unless_a_terminal_and_enabled():
    clock = Clock()
    piped = io.StringIO()
    bar = Progress(3, "piped", stream=piped, clock=clock)
    bar.update(3)
    bar.close()
    off = Terminal()
    bar = Progress(3, "off", stream=off, enabled=False, clock=clock)
    bar.update(3)
    bar.close()
    assert piped.getvalue() == off.getvalue() == ""
    with pytest.raises(ValueError, match="`total` must be at least 1 unit"):
        Progress(0, "nothing")


def test_lines_are_cut_to_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = Terminal()
    bar = Progress(2, "a long description", stream=stream, clock=Clock())
    bar.status = "and a status no terminal of 40 columns shows"
    bar.update()
    assert max(len(line) for line in stream.getvalue().split("\r")) == 39


def test_an_outer_bar_is_advanced_and_left_open(terminal):
    with progress_bar(True, 6, "outer") as outer:
        for _ in range(2):
            with progress_bar(outer, 3, "inner") as inner:
                assert inner is outer
                inner.update(3)
        assert outer.enabled  # not closed by the inner loops
    assert not outer.enabled
    assert bars(terminal.getvalue()) == {"outer": [(0, 6), (3, 6), (6, 6)]}
    with progress_bar(False, 6, "hidden") as bar:
        bar.update(6)
    assert "hidden" not in terminal.getvalue()


def test_a_long_run_announces_its_estimate_once_terminal_or_not():
    clock, stream = Clock(), io.StringIO()  # a log, not a terminal: no bar
    bar = Progress(41, "work", stream=stream, clock=clock, announce=300.0)
    clock.now += 60
    bar.update()  # the first unit compiles: left out of the rate
    clock.now += 10
    bar.update()
    # One twentieth of the 40 units after the first, 2, before an estimate.
    assert stream.getvalue() == ""
    clock.now += 10
    bar.update()
    # 60 s, then 10 s for each of the 40 units after the first: 460 s.
    assert stream.getvalue() == (
        "note: work: about 8 minutes in all on this machine, at the rate of "
        "3/41 so far; Ctrl-C stops it.\n"
    )
    assert bar.total_seconds() == pytest.approx(460.0)
    for _ in range(38):
        clock.now += 100
        bar.update()
    assert stream.getvalue().count("note:") == 1


@pytest.mark.parametrize(("seconds_per_unit", "enabled"), [(5.0, True), (100.0, False)])
def test_a_short_or_silenced_run_announces_nothing(seconds_per_unit, enabled):
    clock, stream = Clock(), Terminal()
    bar = Progress(
        41, "work", stream=stream, clock=clock, announce=300.0, enabled=enabled
    )
    for _ in range(41):
        clock.now += seconds_per_unit
        bar.update()
    assert "note:" not in stream.getvalue()
