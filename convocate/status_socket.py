"""status-serve's local socket: every subscriber's newline JSON out, its refresh lines in.

``/run/convocate/status.sock`` (group ``claude``, 0660): each new subscriber gets the
:class:`~convocate.status_hub.StatusHub`'s replay, then every event as it comes, in batches. A local
subscriber may send nothing but newline-terminated lines; one that sends :data:`SUBSCRIBER_INPUT_MAX`
bytes without a newline is disconnected. The one line that does something is
``{"refresh": "<agent-id>"}`` of a known agent (issue 17); anything else is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
from collections.abc import Callable
from pathlib import Path

from convocate.common.errors import BadRequest
from convocate.common.framing import decode_object
from convocate.status_hub import StatusHub, SubscriberQueue, take_all

#: status-serve's log lines keep the logger name they have always had (its log format prints it).
log = logging.getLogger("convocate.status_server")

#: Bytes a local subscriber may send without a newline before it is disconnected (64 KiB). What they
#: send is read in chunks and thrown away but for refresh lines, so this bounds one line only.
SUBSCRIBER_INPUT_MAX = 64 * 1024
#: Longest subscriber line read as a request (``{"refresh": "<agent-id>"}`` is 24 bytes).
REFRESH_LINE_MAX = 256


class LocalSocket:
    """The Unix socket of status-serve's local subscribers, fed from ``hub``.

    Args:
        hub: The agent states and subscriber queues.
        path: Where the socket is bound (a file left there by a previous run is replaced).
        group: Group given the socket (0660); a missing group leaves its creator's.
        on_refresh: Called with the ID of a known agent a subscriber asked to list again.
    """

    def __init__(self, hub: StatusHub, path: Path, group: str, on_refresh: Callable[[str], None]) -> None:
        self.hub = hub
        self.path = path
        self.group = group
        self.on_refresh = on_refresh
        self._server: asyncio.AbstractServer | None = None
        self._writers: dict[SubscriberQueue, asyncio.StreamWriter] = {}

    async def open(self) -> None:
        """Bind the socket and start taking subscribers.

        Raises:
            OSError: the path cannot be bound.
        """
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket file left by a previous run
        self._server = await asyncio.start_unix_server(self._subscriber, path=str(path))
        os.chmod(path, 0o660)
        try:
            os.chown(path, -1, grp.getgrnam(self.group).gr_gid)
        except KeyError:
            log.info("group %s does not exist; %s keeps the group of its creator", self.group, path)
        except PermissionError as e:
            log.warning("cannot give %s to group %s: %s", path, self.group, e)

    def close(self) -> None:
        """Stop taking subscribers and remove the socket file (the subscribers' tasks end with the loop's)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def flush(self) -> None:
        """Write each subscriber's queued lines to its socket now, if the socket took all written before.

        Each subscriber's writer task wakes once per turn of the loop, and one wake moves at most one
        socket buffer (about 200 KiB) to the kernel; with many busy agents a turn can queue more.
        Flushing after every agent batch too keeps the local socket in step, while a subscriber that
        does not read still fills its transport buffer and is left to its writer's ``drain``.
        """
        for queue, writer in self._writers.items():
            if queue.empty() or queue.closing or writer.transport.get_write_buffer_size():
                continue
            writer.write(b"".join(take_all(queue)))  # type: ignore[arg-type]

    async def _read_input(self, reader: asyncio.StreamReader) -> None:
        """Read what a subscriber sends, in chunks; act on refresh lines, throw the rest away; return at
        EOF or a runaway line.

        A line is acted on only when it is whole within one chunk and at most :data:`REFRESH_LINE_MAX`
        bytes: ``{"refresh": AGENT_ID}`` of an agent status-serve knows lists that agent again. Nothing
        else is kept, so memory stays bounded by one chunk. A subscriber that sends
        :data:`SUBSCRIBER_INPUT_MAX` bytes without a newline is told off in the log and disconnected.
        """
        since_newline = 0
        while chunk := await reader.read(SUBSCRIBER_INPUT_MAX):
            for line in chunk.split(b"\n")[:-1]:
                if len(line) <= REFRESH_LINE_MAX:
                    self._refresh_asked(line)
            end = chunk.rfind(b"\n")
            since_newline = len(chunk) - end - 1 if end >= 0 else since_newline + len(chunk)
            if since_newline >= SUBSCRIBER_INPUT_MAX:
                log.warning("status socket: a subscriber sent %d bytes without a newline; disconnecting it",
                            since_newline)
                return

    def _refresh_asked(self, line: bytes) -> None:
        """A subscriber's ``{"refresh": AGENT_ID}``: list that agent again (an unknown agent or another line: nothing)."""
        try:
            message = decode_object(line, what="subscriber line")
        except BadRequest:
            return
        agent_id = message.get("refresh")
        if isinstance(agent_id, str) and agent_id in self.hub.agents:
            self.on_refresh(agent_id)

    async def _subscriber(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue = self.hub.subscribe()
        self._writers[queue] = writer
        gone = asyncio.ensure_future(self._read_input(reader))  # returns when they left or misbehaved
        try:
            while not gone.done():
                if queue.empty():
                    ready = asyncio.ensure_future(queue.ready.wait())
                    done, _ = await asyncio.wait({ready, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if ready not in done:
                        ready.cancel()
                        return
                lines = take_all(queue)  # all at once, and in the same step as the write: order is kept
                end = lines.index(None) if None in lines else len(lines)
                if lines[:end]:
                    writer.write(b"".join(lines[:end]))  # type: ignore[arg-type]
                    await writer.drain()
                if end < len(lines):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            gone.cancel()
            self.hub.subscribers.discard(queue)
            self._writers.pop(queue, None)
            writer.close()
