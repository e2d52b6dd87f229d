"""asciicast v2 recordings: parse, merge, strip ANSI, split into plain-text lines, export (issue 19).

The format is https://docs.asciinema.org/manual/asciicast/v2/: a header line (a JSON object with
``version`` 2, ``width``, ``height``, ``timestamp`` in unix seconds, optional ``env`` and
``title``), then one JSON array per line, ``[t, code, data]``, ``t`` in seconds since the
header's ``timestamp`` and ``code`` one of ``o`` (output), ``i`` (input), ``r`` (resize,
``"WxH"``) and ``m`` (marker). The agent writes one file per start of its recorder, named by
its UTC start (:data:`FILE_NAME_PATTERN`), so several files make one session's timeline; a file's
last line may be torn by a ``kill -9`` and is skipped.

Shared by the agent (``recording_grep``) and the CLI (``convocate replay`` and ``grep``); pure
functions, no I/O beyond what a caller hands in.

Stripping ANSI and splitting output into lines live in :mod:`convocate.common.ansitext`; ``strip_ansi``
and ``LineSplitter`` are re-exported here (``X as X``) for the callers that use ``asciicast.X``.
"""

from __future__ import annotations

import calendar
import heapq
import json
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from convocate.common import messages
from convocate.common.ansitext import PENDING_MAX as PENDING_MAX
from convocate.common.ansitext import ROW_MOVES as ROW_MOVES
from convocate.common.ansitext import TAB_WIDTH as TAB_WIDTH
from convocate.common.ansitext import LineSplitter as LineSplitter
from convocate.common.ansitext import strip_ansi as strip_ansi
from convocate.common.timefmt import format_rfc3339

#: A recording's file name: its recorder's UTC start, ``%Y%m%dT%H%M%S.%fZ.cast``.
FILE_NAME_PATTERN = re.compile(r"(\d{8}T\d{6}\.\d{6})Z\.cast")
#: The event codes of asciicast v2.
EVENT_CODES = frozenset("oirm")


class CastFormatError(ValueError):
    """A line that is not asciicast v2; the message names the source and the line number."""


@dataclass(frozen=True)
class Header:
    """A recording's first line.

    Attributes:
        width: Terminal columns.
        height: Terminal rows.
        timestamp: Start of the recording, unix seconds (float).
        env: The header's ``env`` (``TERM``, ``SHELL``), may be empty.
        title: The header's ``title``, may be empty.
    """

    width: int
    height: int
    timestamp: float
    env: dict[str, str] = field(default_factory=dict)
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": 2, "width": self.width, "height": self.height,
                               "timestamp": int(self.timestamp) if self.timestamp == int(self.timestamp)
                               else self.timestamp}
        if self.env:
            out["env"] = self.env
        if self.title:
            out["title"] = self.title
        return out


class Event(NamedTuple):
    """One event on an absolute timeline: ``time`` in unix seconds, ``code`` in ``oirm``, ``data``."""

    time: float
    code: str
    data: str


@dataclass
class Cast:
    """One parsed recording file.

    Attributes:
        name: Its file name (or any label, for error messages).
        header: Its first line.
        events: Its events with absolute times (header timestamp + t), in file order.
        torn: Whether a torn last line was skipped.
    """

    name: str
    header: Header
    events: list[Event]
    torn: bool = False


def file_start_ns(name: str) -> int:
    """The start time a recording's file name carries, integer nanoseconds since the epoch.

    Raises:
        CastFormatError: ``name`` does not match :data:`FILE_NAME_PATTERN`.
    """
    m = FILE_NAME_PATTERN.fullmatch(name)
    if not m:
        raise CastFormatError(messages.CAST_BAD_NAME.format(name=name))
    stamp, micro = m.group(1).split(".")
    try:
        secs = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S"))
    except ValueError:
        raise CastFormatError(messages.CAST_BAD_NAME.format(name=name)) from None
    return secs * 1_000_000_000 + int(micro) * 1000


def file_start(name: str) -> float:
    """The start time a recording's file name carries, unix seconds (see :func:`file_start_ns`)."""
    return file_start_ns(name) / 1e9


def file_name(start: float) -> str:
    """The file name for a recording started at ``start`` (unix seconds), UTC, microseconds."""
    secs = int(start)
    micro = round((start - secs) * 1e6)
    if micro >= 1_000_000:
        secs, micro = secs + 1, micro - 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{micro:06d}Z.cast"


def parse_header(line: str | bytes, source: str = "recording") -> Header:
    """Parse a header line.

    Raises:
        CastFormatError: not JSON, not an object, ``version`` not 2, or ``width``/``height``/``timestamp``
            missing or of the wrong type; the message says ``<source> line 1``.
    """
    def bad(reason: str) -> CastFormatError:
        return CastFormatError(messages.CAST_BAD_HEADER.format(source=source, reason=reason))

    try:
        obj = json.loads(line)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise bad("not a JSON object")
    if obj.get("version") != 2:
        raise bad(f"version is {obj.get('version')!r}, not 2")
    for key in ("width", "height"):
        if not isinstance(obj.get(key), int) or isinstance(obj.get(key), bool) or obj[key] <= 0:
            raise bad(f'"{key}" must be a positive integer')
    stamp = obj.get("timestamp", 0)
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        raise bad('"timestamp" must be a number')
    env = obj.get("env") or {}
    if not isinstance(env, dict):
        raise bad('"env" must be an object')
    title = obj.get("title") or ""
    return Header(obj["width"], obj["height"], float(stamp), {str(k): str(v) for k, v in env.items()},
                  str(title))


def parse_event(line: str | bytes, lineno: int, source: str = "recording") -> tuple[float, str, str]:
    """Parse an event line into ``(t, code, data)``, ``t`` relative to the header.

    Raises:
        CastFormatError: not a ``[number >= 0, code, string]`` array; the message names the line.
    """
    def bad(reason: str) -> CastFormatError:
        return CastFormatError(messages.CAST_BAD_EVENT.format(source=source, line=lineno, reason=reason))

    try:
        obj = json.loads(line)
    except ValueError as e:
        raise bad(f"not JSON ({e})") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise bad("not a [time, code, data] array")
    t, code, data = obj
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0:
        raise bad("time must be a number >= 0")
    if code not in EVENT_CODES:
        raise bad(f"code {code!r} is not one of o, i, r, m")
    if not isinstance(data, str):
        raise bad("data must be a string")
    return float(t), code, data


def parse_cast(text: str, name: str = "recording") -> Cast:
    """Parse one recording file's text.

    A last line without its newline that does not parse is a torn write (``kill -9``) and is
    skipped; any other bad line is an error. Blank lines are ignored.

    Raises:
        CastFormatError: the header or an event line is not asciicast v2 (names the line).
    """
    lines = text.split("\n")
    torn_candidate = not text.endswith("\n")
    if not lines or not lines[0].strip():
        raise CastFormatError(messages.CAST_BAD_HEADER.format(source=name, reason="the file is empty"))
    header = parse_header(lines[0], name)
    events: list[Event] = []
    torn = False
    last = len(lines) - 1
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, code, data = parse_event(line, i, name)
        except CastFormatError:
            if torn_candidate and i - 1 == last:
                torn = True
                break
            raise
        events.append(Event(header.timestamp + t, code, data))
    return Cast(name, header, events, torn)


def merge(casts: Iterable[Cast]) -> Iterator[Event]:
    """Every event of several files on one timeline, ordered by absolute time (stable within a file)."""
    return heapq.merge(*(c.events for c in casts), key=lambda e: e.time)


def window(events: Iterable[Event], since: float | None = None, until: float | None = None) -> Iterator[Event]:
    """The events with ``since <= time <= until`` (either bound may be None)."""
    for e in events:
        if since is not None and e.time < since:
            continue
        if until is not None and e.time > until:
            break
        yield e


# --- plain text ---------------------------------------------------------------------------------
def plain_lines(events: Iterable[Event]) -> Iterator[tuple[float, str]]:
    """The plain-text lines of the ``o`` events (see :class:`LineSplitter`), with their times."""
    splitter = LineSplitter()
    last = 0.0
    for e in events:
        if e.code == "o":
            last = e.time
            yield from splitter.feed(e.time, e.data)
    yield from splitter.flush(last)


# --- export -----------------------------------------------------------------------------------
def export_lines(casts: list[Cast], since: float | None = None, until: float | None = None) -> Iterator[str]:
    """The lines of one asciicast v2 file holding ``casts`` on one timeline.

    The header takes the first file's size, ``env`` and ``title``, and the first file's start
    (or ``since``, when given) rounded down to a whole second, as v2 wants an integer. Events are re-timed onto that timeline; each later
    file whose size differs starts with an ``r`` event; markers are kept. With ``since``, the
    output of the file that holds ``since`` from that file's start is put at time 0, so a player
    starts from the screen the session showed at ``since``.

    Raises:
        ValueError: ``casts`` is empty.
    """
    if not casts:
        raise ValueError("nothing to export")
    first = casts[0].header
    # asciicast v2's timestamp is an integer: the fraction goes into the events' times.
    base = float(math.floor(first.timestamp if since is None else max(since, first.timestamp)))
    yield json.dumps(Header(first.width, first.height, base, first.env, first.title).to_json(), ensure_ascii=False)
    size = (first.width, first.height)
    for cast in casts:
        if (cast.header.width, cast.header.height) != size:
            size = (cast.header.width, cast.header.height)
            t = max(0.0, cast.header.timestamp - base)
            if until is None or cast.header.timestamp <= until:
                yield json.dumps([round(t, 6), "r", f"{size[0]}x{size[1]}"])
        for e in cast.events:
            if until is not None and e.time > until:
                return
            if e.time < base:
                if e.code in "or":
                    yield json.dumps([0.0, e.code, e.data], ensure_ascii=False)
                continue
            yield json.dumps([round(e.time - base, 6), e.code, e.data], ensure_ascii=False)


def event_json(event: Event, file: str) -> str:
    """One event as a JSON line for ``convocate replay --json``: absolute time (RFC 3339 and unix s)."""
    return json.dumps({"time": format_rfc3339(round(event.time * 1e9)), "t": round(event.time, 6),
                       "code": event.code, "data": event.data, "file": file}, ensure_ascii=False)
