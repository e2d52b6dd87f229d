"""The shared progress bar: drawn in place on a terminal, sparse plain lines (or none) elsewhere."""

from __future__ import annotations

import io

import pytest

from convocate.common.progress import PLAIN_INTERVAL_S, Progress, format_bytes, format_duration

MIB = 1 << 20


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_bytes_and_duration():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(250 * MIB) == "250.0 MiB"
    assert format_bytes(3 << 30) == "3.0 GiB"
    assert format_duration(0.2) == "0:01"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"


def test_on_a_terminal_the_bar_shows_done_total_rate_and_eta_in_place():
    out, clock = FakeTerminal(), Clock()
    bar = Progress("convocate:0.1.0", 100 * MIB, out=out, clock=clock, width=120)
    clock.now += 2
    bar.advance(20 * MIB)  # 10 MiB/s, 80 MiB to go: 8 s
    assert out.getvalue() == ("\rconvocate:0.1.0 [####....................]  20% 20.0 MiB/100.0 MiB 10.0 MiB/s "
                              "ETA 0:08")
    clock.now += 0.1
    bar.advance(1 * MIB)  # within 0.2 s of the last draw: not redrawn
    assert out.getvalue().count("\r") == 1
    clock.now += 7.9
    bar.advance(79 * MIB)
    assert out.getvalue().endswith("\rconvocate:0.1.0 [########################] 100% 100.0 MiB/100.0 MiB "
                                   "10.0 MiB/s ETA 0:00")
    bar.finish()
    assert out.getvalue().endswith("\n")
    assert out.getvalue().rstrip().endswith(" 100% 100.0 MiB/100.0 MiB 10.0 MiB/s in 0:10")
    assert "\n" not in out.getvalue()[:-1]  # one line, redrawn
    bar.finish()
    assert out.getvalue().count("\n") == 1


def test_a_shorter_redraw_wipes_the_longer_line_before_it():
    out, clock = FakeTerminal(), Clock()
    bar = Progress("build", 3, unit="steps", out=out, clock=clock)
    bar.step(1, text="RUN apt-get install --no-install-recommends tmux git nodejs")
    clock.now += 1
    bar.step(2, text="COPY x")
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.rstrip().endswith("COPY x")


def test_steps_mode_counts_steps_and_estimates_from_their_pace():
    out, clock = FakeTerminal(), Clock()
    bar = Progress("building convocate:0.1.0", out=out, clock=clock, unit="steps", width=120)
    clock.now += 30
    bar.step(3, 12, "RUN npm install")  # 3 steps in 30 s: 9 more take 90 s
    assert out.getvalue() == "\rbuilding convocate:0.1.0 [######..................] step 3/12 ETA 1:30 RUN npm install"


def test_unknown_total_shows_what_is_done_and_the_rate_without_eta():
    out, clock = FakeTerminal(), Clock()
    bar = Progress("archive", None, out=out, clock=clock)
    clock.now += 4
    bar.advance(8 * MIB)
    assert out.getvalue() == "\rarchive 8.0 MiB 2.0 MiB/s"


def test_off_a_terminal_at_most_one_plain_line_every_ten_seconds():
    out, clock = io.StringIO(), Clock()
    bar = Progress("convocate:0.1.0", 100 * MIB, out=out, clock=clock)
    for _ in range(100):  # 100 updates over 20 s
        clock.now += 0.2
        bar.advance(MIB)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) <= 20 / PLAIN_INTERVAL_S + 2, lines
    assert lines[0].startswith("convocate:0.1.0 [") and lines[-1].endswith("in 0:20")


def test_off_a_terminal_it_can_stay_silent():
    out = io.StringIO()
    with Progress("convocate:0.1.0", 10, out=out, clock=Clock(), plain_interval=None) as bar:
        bar.advance(5)
    assert out.getvalue() == ""


def test_a_long_line_is_cut_to_the_terminal_width():
    out = FakeTerminal()
    Progress("x" * 200, 10, out=out, clock=Clock(), width=60).advance(1)
    assert len(out.getvalue()) == 1 + 59


def test_an_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="unit"):
        Progress("x", unit="parsecs")
