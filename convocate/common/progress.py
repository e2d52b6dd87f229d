"""Progress bars for long transfers and builds, drawn only where a person is looking.

On a terminal (the stream's ``isatty()``) a :class:`Progress` redraws one line in place
(carriage return) at most every :data:`TTY_INTERVAL_S`, with the bar, done/total, the rate
and the time left. Anywhere else (a log, a pipe, a systemd journal) it writes at most one
plain line every :data:`PLAIN_INTERVAL_S`, or nothing at all with ``plain_interval=None``,
so logs never fill with carriage returns. Two kinds:

- bytes (``unit="bytes"``): ``convocate:0.1.0 [######......]  48% 120.0 MiB/250.0 MiB 35.1 MiB/s ETA 0:04``;
- steps (``unit="steps"``), e.g. docker build's ``Step 3/12``: ``build [###.........] step 3/12 ETA 1:20 RUN apt-get ...``.

The clock and the stream are parameters, so the drawing is tested with a fake clock and a
``StringIO`` that claims to be a terminal.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Least time between two redraws on a terminal, in seconds.
TTY_INTERVAL_S = 0.2
#: Least time between two plain lines when the stream is not a terminal, in seconds.
PLAIN_INTERVAL_S = 10.0
BAR_WIDTH = 24
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float) -> str:
    """``count`` bytes in binary units with one decimal (``1.5 MiB``); plain bytes below 1 KiB."""
    value = float(count)
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` or ``M:SS`` for a duration in seconds (rounded up, so 0.2 s is ``0:01``)."""
    total = max(0, int(seconds + 0.999))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 80


class Progress:
    """One progress bar.

    Args:
        label: What is in progress (``convocate:0.1.0``, ``building the session image``).
        total: Bytes or steps expected; None or 0 when unknown (no bar, no ETA).
        unit: ``"bytes"`` or ``"steps"``.
        out: The stream (stderr).
        clock: Monotonic seconds (``time.monotonic``).
        plain_interval: Seconds between lines when ``out`` is not a terminal; None for no lines at all.
        width: Line width on a terminal, in columns; longer lines are cut [the terminal's width, else 80].

    Attributes:
        done: Bytes or steps done so far.
        tty: Whether ``out`` is a terminal.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "bytes", out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, plain_interval: float | None = PLAIN_INTERVAL_S,
                 width: int | None = None) -> None:
        if unit not in ("bytes", "steps"):
            raise ValueError(f"unit must be 'bytes' or 'steps', not {unit!r}")
        self.label = label
        self.total = total or None
        self.unit = unit
        self.out = out if out is not None else sys.stderr
        self.clock = clock
        self.plain_interval = plain_interval
        self.tty = _is_tty(self.out)
        self.width = width or _columns(self.out)
        self.done = 0
        self.text = ""
        self.started = clock()
        self._drawn_at: float | None = None
        self._drawn_width = 0
        self._finished = False

    # --- feeding ---------------------------------------------------------------------------------------
    def advance(self, amount: int) -> None:
        """Add ``amount`` bytes (or steps) done, and redraw if it is time."""
        self.update(self.done + amount)

    def update(self, done: int, text: str | None = None) -> None:
        """Set the amount done (and, for steps, what the current step is), and redraw if it is time.

        Args:
            done: Bytes or steps done so far.
            text: The current step's description (``RUN apt-get install ...``), if any.
        """
        self.done = done
        if text is not None:
            self.text = text
        now = self.clock()
        interval = TTY_INTERVAL_S if self.tty else self.plain_interval
        if interval is None:
            return
        if self._drawn_at is None or now - self._drawn_at >= interval:
            self._draw(now)

    def step(self, number: int, total: int | None = None, text: str = "") -> None:
        """Steps mode: step ``number`` of ``total`` has begun (docker build's ``Step 3/12 : RUN ...``)."""
        if total:
            self.total = total
        self.update(number, text)

    def finish(self) -> None:
        """Draw the final state and end the line; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if self.tty or self.plain_interval is not None:
            self._draw(self.clock(), final=True)

    # --- drawing --------------------------------------------------------------------------------------
    def rate(self, now: float) -> float | None:
        """Average bytes (or steps) per second since the start; None before any time has passed."""
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 and self.done > 0 else None

    def eta(self, now: float) -> float | None:
        """Seconds left at the average rate; None when the total or the rate is unknown."""
        rate = self.rate(now)
        if not self.total or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def line(self, now: float, *, final: bool = False) -> str:
        """The text of the bar at time ``now`` (without carriage return or newline)."""
        parts = [self.label]
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(BAR_WIDTH * fraction)
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]")
            if self.unit == "bytes":
                parts.append(f"{fraction * 100:3.0f}%")
        rate = self.rate(now)
        if self.unit == "bytes":
            parts.append(f"{format_bytes(self.done)}/{format_bytes(self.total)}" if self.total
                         else format_bytes(self.done))
            if rate:
                parts.append(f"{format_bytes(rate)}/s")
        else:
            parts.append(f"step {self.done}/{self.total}" if self.total else f"step {self.done}")
        if final:
            parts.append(f"in {format_duration(now - self.started)}")
        else:
            eta = self.eta(now)
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)}")
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def _draw(self, now: float, final: bool = False) -> None:
        self._drawn_at = now
        text = self.line(now, final=final)
        if self.tty:
            text = text[:max(10, self.width - 1)]
            pad = " " * max(0, self._drawn_width - len(text))  # wipe what a longer line left
            self._drawn_width = len(text)
            self.out.write(f"\r{text}{pad}" + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
