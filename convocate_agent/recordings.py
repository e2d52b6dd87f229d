"""The read-only recording ops: ``recording_list``, ``recording_read``, ``recording_grep`` (issue 19 item 2).

The recorder writes ``Paths.session_recordings_dir(uuid)/<UTC start>.cast`` (asciicast v2, see
:mod:`convocate.common.asciicast`); these ops only read them. A file is named by the client
but opened only when its name matches :data:`~convocate.common.asciicast.FILE_NAME_PATTERN`
exactly, relative to the session's directory opened with ``O_NOFOLLOW``, itself with
``O_NOFOLLOW``, and only when it is a regular file: no ``../``, absolute path, NUL or planted
symlink reaches anything else (``tests/test_replay.py`` tries each). Every file access runs
in a worker thread (``asyncio.to_thread``), so a big recording never holds the event loop.

A session may be any UUID this agent has recordings for, a deleted session in the trash
included: its recordings are not part of its home and stay until the recorder's retention
drops them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

from convocate.common import asciicast, messages
from convocate.common.errors import BadRequest, ConvocateError, NotFound
from convocate.common.framing import MAX_LINE_BYTES
from convocate.common.model import is_uuid4
from convocate.common.ops.params import RecordingGrepParams, RecordingListParams, RecordingReadParams
from convocate.common.paths import Paths
from convocate.common.timefmt import format_rfc3339, parse_rfc3339
from convocate_agent.runtime import DockerRuntime
from convocate_agent.store import SessionStore

#: Room in a response line for ``data`` once escaped: a control byte becomes ``\\u00XX`` (6 bytes),
#: so 256 KiB of the worst file could need 1.5 MiB; the agent stops adding lines before this.
READ_DATA_BUDGET = MAX_LINE_BYTES - 4096
#: Bytes of recordings one ``recording_grep`` reads at most before it answers with ``truncated``.
GREP_SCAN_MAX_BYTES = 256 * 1024 * 1024
#: The longest line (characters) a pattern is matched against: a longer line is cut there, which
#: bounds the work of one match (the pattern itself is at most ``ops.GREP_PATTERN_MAX``).
GREP_LINE_MAX = 4096
#: Room in a response line for the matches (their escaped JSON); ``truncated`` when it is full.
GREP_RESULT_BUDGET = MAX_LINE_BYTES - 64 * 1024

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def validate_file(value: str) -> str:
    """The ``file`` param: a recording's bare file name, nothing else.

    Raises:
        BadRequest: not exactly ``YYYYmmddTHHMMSS.ffffffZ.cast`` (a path, ``..``, NUL, anything).
    """
    if not asciicast.FILE_NAME_PATTERN.fullmatch(value):
        raise BadRequest(messages.BAD_RECORDING_FILE.format(value=value))
    return value


class Recordings:
    """Reads the sessions' recordings for the RPC ops.

    Args:
        paths: The agent's layout (``Paths.session_recordings_dir``).
        store: The session records (a session's name, also from the trash).
        runtime: Docker (whether a session's container runs: its newest file is then ``current``).
    """

    def __init__(self, paths: Paths, store: SessionStore, runtime: DockerRuntime) -> None:
        self.paths = paths
        self.store = store
        self.runtime = runtime

    def session_name(self, session_id: str) -> str:
        """The session's name, from its record or its newest trash entry; ``""`` when neither knows it."""
        try:
            return self.store.load(session_id).name
        except ConvocateError:
            pass
        for entry in self.store.trash_entries():
            if entry.uuid == session_id and entry.meta is not None:
                return entry.meta.name
        return ""

    async def running(self, session_id: str) -> bool:
        try:
            state = await self.runtime.container(session_id)
        except ConvocateError:
            return False
        return state is not None and state.running

    # --- files ---------------------------------------------------------------------------
    def _open_dir(self, session_id: str) -> int:
        try:
            return os.open(self.paths.session_recordings_dir(session_id), _O_DIR)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(messages.NO_RECORDINGS.format(id=session_id)) from None
        except OSError as e:  # ELOOP: a symlink where the directory should be
            raise NotFound(f"{messages.NO_RECORDINGS.format(id=session_id)} ({e.strerror})") from None

    def _files(self, session_id: str) -> list[tuple[str, int, float]]:
        """``(name, bytes, mtime)`` of the session's regular recording files, oldest first."""
        dfd = self._open_dir(session_id)
        try:
            out = []
            for name in sorted(os.listdir(dfd)):
                try:
                    asciicast.file_start_ns(name)  # the pattern, and a real date
                except asciicast.CastFormatError:
                    continue
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((name, st.st_size, st.st_mtime))
            return out
        finally:
            os.close(dfd)

    def _open_file(self, session_id: str, name: str) -> int:
        validate_file(name)
        dfd = self._open_dir(session_id)
        try:
            fd = os.open(name, _O_FILE, dir_fd=dfd)
        except FileNotFoundError:
            raise NotFound(messages.NO_SUCH_RECORDING.format(id=session_id, file=name)) from None
        except OSError as e:  # ELOOP: a planted symlink
            raise BadRequest(messages.RECORDING_NOT_REGULAR.format(id=session_id, file=name)) from e
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadRequest(messages.RECORDING_NOT_REGULAR.format(id=session_id, file=name))
        return fd

    def sessions(self) -> list[str]:
        """UUIDs with a recordings directory on this agent."""
        try:
            return sorted(n for n in os.listdir(self.paths.recordings_dir) if is_uuid4(n))
        except FileNotFoundError:
            return []

    # --- ops -------------------------------------------------------------------------------
    async def list(self, params: RecordingListParams) -> list[dict[str, Any]]:
        """``recording_list {id}``: the session's files, oldest first.

        Returns:
            ``[{"file", "started" (RFC 3339, from the name), "bytes", "current"}]``; ``current`` marks
            the newest file while the session's container runs (the recorder may still append to it).

        Raises:
            NotFound: the agent has no recordings of that session.
        """
        session_id = params.id
        files = await asyncio.to_thread(self._files, session_id)
        running = bool(files) and await self.running(session_id)
        return [{"file": name, "started": format_rfc3339(asciicast.file_start_ns(name)), "bytes": size,
                 "current": running and i == len(files) - 1}
                for i, (name, size, _) in enumerate(files)]

    async def read(self, params: RecordingReadParams) -> dict[str, Any]:
        """``recording_read {id, file, offset, max_bytes}``: whole lines of one file from ``offset``.

        Returns:
            ``{"data": str, "next_offset": int, "eof": bool}``: ``data`` holds complete lines only (a
            torn or still-growing last line waits), at most ``max_bytes`` bytes of the file unless
            one line is longer (it then comes alone), and never more than fits in a response line
            once escaped; ``eof`` says no complete line follows ``next_offset`` now. A line too
            long for any response is skipped and counted in ``skipped_bytes``.

        Raises:
            BadRequest: a bad file name, a symlink or non-regular file, an offset inside a line.
            NotFound: no such session recordings or file.
        """
        return await asyncio.to_thread(self._read, params.id, params.file, params.offset, params.max_bytes)

    def _read(self, session_id: str, name: str, offset: int, max_bytes: int) -> dict[str, Any]:
        fd = self._open_file(session_id, name)
        try:
            size = os.fstat(fd).st_size
            if offset > size or (offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"):
                raise BadRequest(messages.RECORDING_BAD_OFFSET.format(offset=offset, file=name))
            chunk = os.pread(fd, max_bytes, offset)
            end = chunk.rfind(b"\n") + 1
            skipped = 0
            if end == 0 and len(chunk) == max_bytes:  # one line longer than max_bytes: it comes alone
                chunk = os.pread(fd, READ_DATA_BUDGET, offset)
                end = chunk.find(b"\n") + 1
                if end == 0:  # longer than any response can carry: skip it, if it is complete
                    skipped = self._line_length(fd, offset)
                    chunk = b""
                else:
                    chunk = chunk[:end]
            data: list[str] = []
            used = taken = 0
            for raw in chunk[:end].splitlines(keepends=True):
                text = raw.decode("utf-8", "replace")
                cost = len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                if used + cost > READ_DATA_BUDGET:
                    if not data:  # this one line alone is too long once escaped
                        skipped = len(raw)
                    break
                data.append(text)
                used += cost
                taken += len(raw)
            next_offset = offset + taken + skipped
            eof = next_offset >= size or self._line_length(fd, next_offset) == 0
            result: dict[str, Any] = {"data": "".join(data), "next_offset": next_offset, "eof": eof}
            if skipped:
                result["skipped_bytes"] = skipped
            return result
        finally:
            os.close(fd)

    @staticmethod
    def _line_length(fd: int, offset: int) -> int:
        """Bytes of the line at ``offset`` with its newline; 0 while it has none (torn or growing)."""
        length = 0
        while True:
            block = os.pread(fd, 1024 * 1024, offset + length)
            if not block:
                return 0
            nl = block.find(b"\n")
            if nl >= 0:
                return length + nl + 1
            length += len(block)

    async def grep(self, params: RecordingGrepParams) -> dict[str, Any]:
        """``recording_grep {pattern, id?, since?, until?, max_matches}``: search the plain-text lines.

        Lines are those of :func:`convocate.common.asciicast.plain_lines` (ANSI stripped), each cut
        at :data:`GREP_LINE_MAX` characters; ``pattern`` is Python ``re`` (``search``).

        Returns:
            ``{"matches": [{"id", "name", "file", "time" (RFC 3339), "line"}], "truncated": bool,
            "reason": str, "scanned_bytes": int}``, oldest first per session; ``truncated`` when
            ``max_matches``, :data:`GREP_SCAN_MAX_BYTES` or the response's size stopped the search.

        ``until`` before ``since`` was refused when the params were decoded
        (``RecordingGrepParams.check_together``).

        Raises:
            NotFound: ``id`` given and the agent has no recordings of it.
        """
        since = parse_rfc3339(params.since) / 1e9 if params.since else None
        until = parse_rfc3339(params.until) / 1e9 if params.until else None
        ids = [params.id] if params.id else await asyncio.to_thread(self.sessions)
        return await asyncio.to_thread(self._grep, re.compile(params.pattern), ids, since, until,
                                       params.max_matches, bool(params.id))

    def _grep(self, pattern: re.Pattern[str], ids: list[str], since: float | None, until: float | None,
              max_matches: int, strict: bool) -> dict[str, Any]:
        matches: list[dict[str, Any]] = []
        scanned = used = 0
        reason = ""
        for session_id in ids:
            try:
                files = self._files(session_id)
            except NotFound:
                if strict:
                    raise
                continue
            name = self.session_name(session_id)
            for i, (file, size, mtime) in enumerate(files):
                start = asciicast.file_start(file)
                end = asciicast.file_start(files[i + 1][0]) if i + 1 < len(files) else mtime
                if (until is not None and start > until) or (since is not None and max(end, mtime) < since):
                    continue
                if scanned + size > GREP_SCAN_MAX_BYTES:
                    reason = f"reading {GREP_SCAN_MAX_BYTES // (1024 * 1024)} MiB of recordings"
                    return {"matches": matches, "truncated": True, "reason": reason, "scanned_bytes": scanned}
                scanned += size
                for t, line in self._file_lines(session_id, file, since, until):
                    line = line[:GREP_LINE_MAX]
                    if not pattern.search(line):
                        continue
                    match = {"id": session_id, "name": name, "file": file,
                             "time": format_rfc3339(round(t * 1e9)), "line": line}
                    used += len(json.dumps(match, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 1
                    if used > GREP_RESULT_BUDGET:
                        reason = "a response's worth of matches"
                    elif len(matches) >= max_matches:
                        reason = f"{max_matches} matches"
                    if reason:
                        return {"matches": matches, "truncated": True, "reason": reason, "scanned_bytes": scanned}
                    matches.append(match)
        return {"matches": matches, "truncated": False, "reason": "", "scanned_bytes": scanned}

    def _file_lines(self, session_id: str, file: str, since: float | None,
                    until: float | None) -> Iterator[tuple[float, str]]:
        """The plain-text lines of one file within the window, read line by line."""
        fd = self._open_file(session_id, file)
        with os.fdopen(fd, "rb") as f:
            try:
                header = asciicast.parse_header(f.readline(), file)
            except asciicast.CastFormatError:
                return  # not a recording (yet): nothing to find in it
            splitter = asciicast.LineSplitter()
            last = header.timestamp
            for lineno, raw in enumerate(f, start=2):
                if not raw.endswith(b"\n"):
                    break  # a torn or growing last line waits
                try:
                    t, code, data = asciicast.parse_event(raw, lineno, file)
                except asciicast.CastFormatError:
                    continue
                if code != "o":
                    continue
                last = header.timestamp + t
                if until is not None and last > until:
                    break
                for when, line in splitter.feed(last, data):
                    if since is None or when >= since:
                        yield when, line
            for when, line in splitter.flush(last):
                if (since is None or when >= since) and (until is None or when <= until):
                    yield when, line
