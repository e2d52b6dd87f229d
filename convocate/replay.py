"""``convocate replay`` and ``convocate grep``: read the sessions' terminal recordings (issue 19 item 2).

The recordings live on the agents (asciicast v2, one file per start of the recorder); this
module fetches them with ``recording_list`` and ``recording_read`` (chunked, whole lines),
then plays them in the operator's terminal (:class:`Player`), prints their plain text or
events, or writes one ``.cast`` file any asciinema player plays. ``grep`` asks every agent's
``recording_grep`` at once. The TUI's ``p`` key runs the same player.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convocate.common import messages
from convocate.common.errors import BadRequest, ConvocateError, NotFound
from convocate.common.fsutil import atomic_write
from convocate.common.timefmt import format_rfc3339, parse_rfc3339
from convocate.player import IDLE_LIMIT_S, play_in_terminal

if TYPE_CHECKING:  # the parser (add_parsers) is built for every verb: no asyncssh for it (issue 17)
    from convocate.client import AgentClient
    from convocate.cluster import Cluster
    from convocate.common import asciicast
    from convocate.common.ops.params import RecordingGrepParams
    from convocate.common.ops.results import RecordingFile

PROG = "convocate"
_RELATIVE = re.compile(r"-?(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: argparse takes ``-10m`` for an option; these values are arguments (``--since -10m``).
_NEGATIVE_ARG = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(?:\.\d+)?[smhd]$")
TIME_HELP = "RFC 3339 (2026-11-21T14:29:00Z) or relative to now (-30s, -10m, -2h, -1d)"



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
