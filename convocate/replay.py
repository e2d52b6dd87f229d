"""``convocate replay`` and ``convocate grep``: read the sessions' terminal recordings (issue 19 item 2).

The recordings live on the agents (asciicast v2, one file per start of the recorder); this
module fetches them with ``recording_list`` and ``recording_read`` (chunked, whole lines),
then plays them in the operator's terminal (:class:`Player`), prints their plain text or
events, or writes one ``.cast`` file any asciinema player plays. ``grep`` asks every agent's
``recording_grep`` at once. The TUI's ``p`` key runs the same player.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import select
import sys
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, ConvocateError, NotFound
from convocate.common.fsutil import atomic_write
from convocate.common.timefmt import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:  # the parser (add_parsers) is built for every verb: no asyncssh for it (issue 17)
    from convocate.client import AgentClient
    from convocate.cluster import Cluster
    from convocate.common import asciicast
    from convocate.common.ops.params import RecordingGrepParams
    from convocate.common.ops.results import RecordingFile

PROG = "convocate"
#: Default of ``--idle-limit``: a longer pause of the session plays as this many seconds.
IDLE_LIMIT_S = 2.0
#: Seconds ``]`` and ``[`` seek.
SEEK_S = 10.0
_RELATIVE = re.compile(r"-?(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: argparse takes ``-10m`` for an option; these values are arguments (``--since -10m``).
_NEGATIVE_ARG = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(?:\.\d+)?[smhd]$")
TIME_HELP = "RFC 3339 (2026-11-21T14:29:00Z) or relative to now (-30s, -10m, -2h, -1d)"

# Put back what a recording may have switched on: attributes, cursor, mouse, bracketed paste,
# application keys; then leave the alternate screen and restore the title saved at the start.
_ENTER = "\x1b[22;0t\x1b[?1049h\x1b[0m\x1b[H\x1b[2J"
_CLEAR = "\x1b[0m\x1b[H\x1b[2J"
_LEAVE = ("\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?1l\x1b>"
          "\x1b[?1049l\x1b[23;0t")
#: The terminal title the player sets once it has played the last event (tests wait for it).
END_TITLE = "convocate replay {name}: end"


def parse_time(value: str, now: float | None = None) -> float:
    """``--since``/``--until``: an RFC 3339 time or ``-N[smhd]`` before now; unix seconds.

    Raises:
        BadRequest: neither form.
    """
    m = _RELATIVE.fullmatch(value.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return parse_rfc3339(value.strip()) / 1e9
    except ValueError:
        raise BadRequest(messages.REPLAY_BAD_TIME.format(value=value)) from None


def _time_arg(value: str) -> float:
    try:
        return parse_time(value)
    except BadRequest as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def _rfc3339(t: float) -> str:
    return format_rfc3339(round(t * 1e9))


# --- fetching -----------------------------------------------------------------------------
@dataclass
class Target:
    """A session whose recordings to read: the agent holding them, its UUID and name."""

    client: AgentClient
    uuid: str
    name: str


async def resolve(cluster: Cluster, ref: str) -> Target:
    """A session by name, UUID or prefix, as other commands resolve it; else one in an agent's trash.

    Raises:
        NotFound, AmbiguousReference: as :meth:`Cluster.resolve`.
    """
    try:
        found = await cluster.resolve(ref)
        return Target(found.client, found.view.meta.uuid, found.view.meta.name)
    except NotFound as not_found:
        error = not_found
    from convocate.cluster import each_agent  # not at the top: the parser, built for every verb, needs none
    from convocate.common.ops.params import TrashParams

    answers, _ = await each_agent(cluster.clients.values(), lambda c: c.request(TrashParams()))
    for client, entries in answers:
        for e in reversed(entries):  # oldest deletion last: the newest wins
            if ref in (e.uuid, e.name) or (len(ref) >= 4 and e.uuid.startswith(ref)):
                return Target(client, e.uuid, e.name or e.uuid[:8])
    raise error


def _in_window(files: list[RecordingFile], since: float | None, until: float | None) -> list[RecordingFile]:
    """The files that may hold events in ``[since, until]`` (a file lasts until the next one starts)."""
    out = []
    for i, f in enumerate(files):
        start = parse_rfc3339(f.started) / 1e9
        following = parse_rfc3339(files[i + 1].started) / 1e9 if i + 1 < len(files) else None
        if until is not None and start > until:
            continue
        if since is not None and following is not None and following <= since:
            continue
        out.append(f)
    return out


async def fetch(target: Target, since: float | None = None, until: float | None = None) -> list[asciicast.Cast]:
    """The session's recording files that overlap ``[since, until]``, parsed, oldest first.

    Raises:
        NotFound: the agent has no recordings of the session.
        CastFormatError (as BadRequest): a file is not asciicast v2 (names the file and line).
    """
    from convocate.common import asciicast  # not at the top: the parser needs none (issue 17)
    from convocate.common.ops.params import RecordingListParams, RecordingReadParams

    files = await target.client.request(RecordingListParams(id=target.uuid))
    casts = []
    for f in _in_window(files, since, until):
        parts: list[str] = []
        offset = 0
        while True:
            chunk = await target.client.request(RecordingReadParams(id=target.uuid, file=f.file, offset=offset))
            parts.append(chunk.data)
            if chunk.next_offset == offset or chunk.eof:
                break
            offset = chunk.next_offset
        text = "".join(parts)
        if not text.strip():
            continue  # a recorder that had not written its header yet
        try:
            casts.append(asciicast.parse_cast(text, f"{target.name} {f.file}"))
        except asciicast.CastFormatError as e:
            raise BadRequest(str(e)) from None
    return casts


# --- the player -------------------------------------------------------------------------------
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


# --- the commands -----------------------------------------------------------------------------
def _window_text(since: float | None, until: float | None) -> str:
    parts = ([f" since {_rfc3339(since)}"] if since is not None else []) + \
            ([f" until {_rfc3339(until)}"] if until is not None else [])
    return "".join(parts)


async def cmd_replay(args: argparse.Namespace, cluster: Cluster) -> int:
    """``convocate replay``: play, ``--cat``, ``--json`` or ``--export`` one session's recordings."""
    from convocate.common import asciicast  # not at the top: the parser needs none (issue 17)

    if args.since is not None and args.until is not None and args.until < args.since:
        raise BadRequest(messages.GREP_BAD_WINDOW.format(since=_rfc3339(args.since), until=_rfc3339(args.until)))
    target = await resolve(cluster, args.ref)
    casts = await fetch(target, args.since, args.until)
    events = list(asciicast.window(asciicast.merge(casts), args.since, args.until))
    if not events and not args.export:
        raise NotFound(messages.REPLAY_NOTHING.format(name=target.name, window=_window_text(args.since, args.until)))
    if args.export:
        if not casts:
            raise NotFound(messages.REPLAY_NOTHING.format(name=target.name,
                                                          window=_window_text(args.since, args.until)))
        text = "\n".join(asciicast.export_lines(casts, args.since, args.until)) + "\n"
        atomic_write(Path(args.export), text.encode("utf-8"), mode=0o600)
        print(f"wrote {args.export}: {target.name} ({target.uuid[:8]}), {len(events)} events"
              f"{_window_text(args.since, args.until)}", file=sys.stderr)
        return 0
    if args.json:
        names = {id(e): c.name.rsplit(" ", 1)[-1] for c in casts for e in c.events}
        for e in events:
            print(asciicast.event_json(e, names.get(id(e), "")))
        return 0
    if args.cat:
        for t, line in asciicast.plain_lines(events):
            if (args.since is None or t >= args.since) and (args.until is None or t <= args.until):
                print(line)
        return 0
    note = play_in_terminal(casts, target.name, speed=args.speed, idle_limit=args.idle_limit or None,
                            since=args.since, until=args.until)
    if note:
        print(f"{PROG}: {note}", file=sys.stderr)
    return 0


async def grep(cluster: Cluster, params: RecordingGrepParams,
               only: AgentClient | None = None) -> tuple[list[dict[str, Any]], dict[str, ConvocateError], list[str]]:
    """``recording_grep`` on every agent (or ``only``) at once.

    Returns:
        ``(matches with "agent_id", oldest first; agent ID -> error; notes of truncated searches)``.
    """
    from convocate.cluster import each_agent

    answers, errors = await each_agent([only] if only is not None else cluster.clients.values(),
                                       lambda c: c.request(params))
    matches: list[dict[str, Any]] = []
    notes: list[str] = []
    for client, result in answers:
        matches += [{**m, "agent_id": client.agent_id} for m in result.matches]
        if result.truncated:
            notes.append(messages.GREP_TRUNCATED.format(agent=client.agent_id, reason=result.reason))
    matches.sort(key=lambda m: m["time"])
    return matches, errors, notes


async def cmd_grep(args: argparse.Namespace, cluster: Cluster) -> int:
    """``convocate grep PATTERN``: exit 0 with matches, 1 without (grep's convention)."""
    from convocate.common.ops.params import RecordingGrepParams

    session, only = None, None
    if args.session:
        target = await resolve(cluster, args.session)
        session, only = target.uuid, target.client
    params = RecordingGrepParams(pattern=args.pattern, id=session,
                                 since=None if args.since is None else _rfc3339(args.since),
                                 until=None if args.until is None else _rfc3339(args.until))
    matches, errors, notes = await grep(cluster, params, only)
    if args.json:
        import json

        for m in matches:
            print(json.dumps(m, ensure_ascii=False))
    else:
        for m in matches:
            print(f"{m['name'] or m['id'][:8]}  {m['time'][:19].replace('T', ' ')}  {m['line']}")
    for agent_id, error in sorted(errors.items()):
        print(f"{PROG}: " + messages.GREP_AGENT_FAILED.format(agent=agent_id, error=error), file=sys.stderr)
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    if matches:
        return 0
    if errors and len(errors) == (1 if only else len(cluster.clients)):
        return next(iter(errors.values())).exit_code
    return 1


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``replay`` and ``grep`` to the ``convocate`` parser's subcommands."""
    p = sub.add_parser("replay", parents=[common], help="play a session's terminal recording",
                       description="Play a session's recorded terminal at its recorded size (keys: "
                       f"{messages.REPLAY_KEYS}), or print it (--cat, --json) or write it as one asciicast v2 "
                       f"file (--export). TIME is {TIME_HELP}.")
    p.add_argument("ref", help="session name, UUID or UUID prefix (also a deleted one in the trash)")
    p.add_argument("--since", type=_time_arg, metavar="TIME", help="start at TIME [the first recording]")
    p.add_argument("--until", type=_time_arg, metavar="TIME", help="stop at TIME [the end]")
    p.add_argument("--speed", type=_positive, default=1.0, metavar="N", help="playback speed factor [%(default)s]")
    p.add_argument("--idle-limit", type=float, default=IDLE_LIMIT_S, metavar="S",
                   help="play a pause longer than S seconds as S; 0 plays every pause [%(default)s]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cat", action="store_true", help="print the plain text (ANSI stripped), one line each")
    mode.add_argument("--export", metavar="FILE.cast", type=Path,
                      help="write one asciicast v2 file any asciinema player plays")
    p.set_defaults(func=cmd_replay)
    p._negative_number_matcher = _NEGATIVE_ARG  # --since -10m

    p = sub.add_parser("grep", parents=[common], help="search the sessions' recordings",
                       description="Search the plain text (ANSI stripped) of every session's recordings on every "
                       "agent with a Python regular expression; prints SESSION-NAME  TIME (UTC)  LINE. Exit 0 "
                       f"with matches, 1 without. TIME is {TIME_HELP}.")
    p.add_argument("pattern", help="Python regular expression (re.search on each line)")
    p.add_argument("--session", metavar="REF", help="only this session (name, UUID or prefix)")
    p.add_argument("--since", type=_time_arg, metavar="TIME", help="only lines from TIME on")
    p.add_argument("--until", type=_time_arg, metavar="TIME", help="only lines up to TIME")
    p.set_defaults(func=cmd_grep)
    p._negative_number_matcher = _NEGATIVE_ARG
