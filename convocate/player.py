"""The terminal player of ``convocate replay``: timing, pause, step, speed and seek over recorded output.

Pure terminal work on parsed recordings (:mod:`convocate.common.asciicast`): no agent, no network.
:mod:`convocate.replay` fetches the recordings and runs :func:`play_in_terminal`.
"""

from __future__ import annotations

import bisect
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING

from convocate.common import messages
from convocate.common.errors import ConfigError

if TYPE_CHECKING:
    from convocate.common import asciicast

PROG = "convocate"
#: Default of ``--idle-limit``: a longer pause of the session plays as this many seconds.
IDLE_LIMIT_S = 2.0
#: Seconds ``]`` and ``[`` seek.
SEEK_S = 10.0

# Put back what a recording may have switched on: attributes, cursor, mouse, bracketed paste,
# application keys; then leave the alternate screen and restore the title saved at the start.
_ENTER = "\x1b[22;0t\x1b[?1049h\x1b[0m\x1b[H\x1b[2J"
_CLEAR = "\x1b[0m\x1b[H\x1b[2J"
_LEAVE = ("\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?1l\x1b>"
          "\x1b[?1049l\x1b[23;0t")
#: The terminal title the player sets once it has played the last event (tests wait for it).
END_TITLE = "convocate replay {name}: end"


class Player:
    """Plays recorded output in a terminal: timing, pause, step, speed, seek.

    Time runs on the recording's clock with every pause longer than ``idle_limit`` shortened
    to it, divided by ``speed``. Seeking redraws from the start of the file that holds the
    target, writing its output up to the target at once (no sleeping), so the screen is what
    the session showed then. Once the last event is played the player stays on that screen
    (title :data:`END_TITLE`) until ``q``; ``[`` still seeks back.

    Args:
        casts: The files, oldest first.
        write: Writes bytes to the terminal.
        read_key: Waits up to ``timeout`` seconds (None: forever) for input; returns b"" on timeout.
        speed: Playback speed factor (> 0).
        idle_limit: Longest pause played, in seconds of the recording; 0 or None plays every pause.
        name: The session's name, for the title.
    """

    def __init__(self, casts: list[asciicast.Cast], write: Callable[[bytes], None],
                 read_key: Callable[[float | None], bytes], *, speed: float = 1.0,
                 idle_limit: float | None = IDLE_LIMIT_S, name: str = "") -> None:
        self.write = write
        self.read_key = read_key
        self.speed = speed
        self.name = name
        self.events: list[asciicast.Event] = []
        self.file_of: list[int] = []  # index of the first event of each event's file
        for cast in casts:
            first = len(self.events)
            self.events += [e for e in cast.events if e.code in "or"]
            self.file_of += [first] * (len(self.events) - first)
        self.times = [e.time for e in self.events]
        self.virtual: list[float] = []
        v = 0.0
        for i, t in enumerate(self.times):
            if i:
                gap = max(0.0, t - self.times[i - 1])
                v += min(gap, idle_limit) if idle_limit else gap
            self.virtual.append(v)
        self.pos = 0
        self.paused = False

    def _emit(self, upto: int) -> None:
        """Write the output of events ``pos..upto-1`` and move there."""
        data = "".join(e.data for e in self.events[self.pos:upto] if e.code == "o")
        if data:
            self.write(data.encode("utf-8", "replace"))
        self.pos = upto

    def seek(self, target: float) -> None:
        """Redraw the screen as it was at ``target`` (unix seconds): its file's output from the start, at once."""
        j = bisect.bisect_right(self.times, target) - 1
        if j < 0:
            self.write(_CLEAR.encode())
            self.pos = 0
            return
        self.write(_CLEAR.encode())
        self.pos = self.file_of[j]
        self._emit(j + 1)

    def _now_time(self) -> float:
        return self.times[self.pos - 1] if self.pos else (self.times[0] if self.times else 0.0)

    def play(self, since: float | None = None, until: float | None = None) -> None:
        """Play until ``q`` (or Ctrl-C); from ``since`` (the screen redrawn as it was then), to ``until``."""
        end = bisect.bisect_right(self.times, until) if until is not None else len(self.events)
        if since is not None:
            self.seek(since)
        anchor_wall, anchor_v = time.monotonic(), self.virtual[self.pos] if self.pos < end else 0.0
        ended = False
        while True:
            if self.pos >= end:
                if not ended:
                    self.write(f"\x1b]2;{END_TITLE.format(name=self.name)}\x07".encode())
                    ended = True
                timeout: float | None = None
            elif self.paused:
                timeout = None
            else:
                due = anchor_wall + (self.virtual[self.pos] - anchor_v) / self.speed
                timeout = due - time.monotonic()
                if timeout <= 0:
                    upto = self.pos + 1  # write everything already due at once, checking keys between batches
                    now_v = anchor_v + (time.monotonic() - anchor_wall) * self.speed
                    while upto < end and self.virtual[upto] <= now_v and upto - self.pos < 4096:
                        upto += 1
                    self._emit(upto)
                    timeout = 0.0
            keys = self.read_key(timeout)
            if not keys:
                continue
            for key in keys.decode("latin-1"):
                if key in "qQ\x03":
                    return
                if key == " ":
                    self.paused = not self.paused
                elif key == "." and self.paused and self.pos < end:
                    self._emit(self.pos + 1)
                elif key in "+=":
                    self.speed *= 2
                elif key in "-_":
                    self.speed /= 2
                elif key in "][":
                    target = self._now_time() + (SEEK_S if key == "]" else -SEEK_S)
                    self.seek(min(target, self.times[end - 1]) if end else target)  # never past --until
                    if self.pos < end:
                        ended = False
                else:
                    continue
                anchor_wall = time.monotonic()
                anchor_v = self.virtual[self.pos] if self.pos < len(self.virtual) else 0.0


def _read_key(fd: int) -> Callable[[float | None], bytes]:
    def read(timeout: float | None) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 64) if ready else b""
    return read


def _write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def play_in_terminal(casts: list[asciicast.Cast], name: str, *, speed: float = 1.0,
                     idle_limit: float | None = IDLE_LIMIT_S, since: float | None = None,
                     until: float | None = None, in_fd: int = 0, out_fd: int = 1) -> str:
    """Play ``casts`` in this terminal (raw mode, the alternate screen), restoring it on every exit.

    Returns:
        A note for after the replay (the terminal was smaller than the recording), else ``""``.

    Raises:
        ConfigError: stdin or stdout is not a terminal.
    """
    if not (os.isatty(in_fd) and os.isatty(out_fd)):
        raise ConfigError(messages.REPLAY_NEEDS_TERMINAL)
    header = casts[0].header
    cols, rows = os.get_terminal_size(out_fd)
    note = ""
    if cols < header.width or rows < header.height:
        note = messages.REPLAY_SMALL_TERMINAL.format(width=header.width, height=header.height, cols=cols, rows=rows)
        sys.stderr.write(f"{PROG}: {note}\n")
    write = _write_all(out_fd)
    saved = termios.tcgetattr(in_fd)
    try:
        tty.setraw(in_fd, termios.TCSANOW)
        write(_ENTER.encode())
        Player(casts, write, _read_key(in_fd), speed=speed, idle_limit=idle_limit, name=name).play(since, until)
    finally:
        try:
            write(_LEAVE.encode())
        finally:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
    return note
