"""The ``convocate-agent-transfer`` SSH subsystem: one move's export or import over one channel.

Header line (JSON): ``{"op": "export", "id": UUID}`` or ``{"op": "import", "meta": <session.json object>}``.

- export: the agent answers one line, a Response whose result is ``{"meta": session.json object,
  "bytes": the files' total (for the progress bar)}``, then the transfer tar
  (:mod:`convocate_agent.transferexport`); the channel closes after it (exit 0). An error is the one
  line (exit 1).
- import: the client sends the tar after the header and then EOF; the agent answers one line, a
  Response whose result is ``{"uuid", "files", "bytes", "skipped"}`` (exit 0) or an error (exit 1)
  (:mod:`convocate_agent.transferimport`).

The session's lock is held for the whole channel on either side.
"""

from __future__ import annotations

from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate_agent.transfer import CHUNK, HOME_PREFIX, RECORDINGS_PREFIX, describe, tree_bytes
from convocate_agent.transferexport import export_tree
from convocate_agent.transferimport import import_session

#: Longest header accepted, in bytes (a session.json object is well below it).
TRANSFER_HEADER_MAX = 64 * 1024


class _ChannelWriter:
    """A blocking file-like over an async SSH writer, for tarfile running in a worker thread."""

    def __init__(self, writer: Any, loop: Any) -> None:
        self.writer, self.loop = writer, loop

    def write(self, data: bytes) -> int:
        import asyncio

        async def put() -> None:
            self.writer.write(bytes(data))
            await self.writer.drain()

        asyncio.run_coroutine_threadsafe(put(), self.loop).result()
        return len(data)

    def flush(self) -> None:
        pass


class _ChannelReader:
    """A blocking file-like over an async SSH reader, for tarfile running in a worker thread."""

    def __init__(self, reader: Any, loop: Any, first: bytes = b"") -> None:
        self.reader, self.loop, self.buf = reader, loop, first

    def read(self, n: int = -1) -> bytes:
        import asyncio

        if self.buf:
            out = self.buf if n < 0 else self.buf[:n]
            self.buf = self.buf[len(out):]
            return out
        size = CHUNK if n < 0 else min(n, CHUNK)
        return asyncio.run_coroutine_threadsafe(self.reader.read(size), self.loop).result()


def parse_transfer_header(line: bytes) -> dict[str, Any]:
    """Decode and check a transfer header.

    Raises:
        BadRequest: ``bad transfer header: ...`` naming the field.
    """
    from convocate.common.framing import decode_object
    from convocate.common.model import SessionMeta, validate_uuid

    def bad(detail: str) -> BadRequest:
        return BadRequest(messages.TRANSFER_BAD_HEADER.format(detail=detail))

    try:
        obj = decode_object(line, what="header")
    except BadRequest as e:
        raise bad(e.message) from e
    op = obj.get("op")
    if op == "export":
        if set(obj) - {"op", "id"}:
            raise bad(messages.UNKNOWN_FIELD.format(field=sorted(set(obj) - {"op", "id"})[0]))
        try:
            return {"op": op, "id": validate_uuid(obj.get("id"))}
        except BadRequest as e:
            raise bad(e.message) from e
    if op == "import":
        if set(obj) - {"op", "meta"}:
            raise bad(messages.UNKNOWN_FIELD.format(field=sorted(set(obj) - {"op", "meta"})[0]))
        try:
            return {"op": op, "meta": SessionMeta.from_json(obj.get("meta"))}
        except BadRequest as e:
            raise bad(e.message) from e
    raise bad('"op" must be "export" or "import"')


async def serve_transfer_channel(process: Any, service: Any, caller: Any) -> None:
    """Serve one ``convocate-agent-transfer`` channel (see the module doc for the wire).

    Args:
        process: The asyncssh server process (``encoding=None``).
        service: The agent's :class:`~convocate_agent.service.AgentService`; its ``store``,
            ``runtime``, ``locks`` and ``paths`` are used.
        caller: Who opened the channel (for the log).
    """
    import asyncio
    import logging

    from convocate.common.errors import ConvocateError, InternalError
    from convocate.common.framing import encode_line
    from convocate.common.protocol import Response

    log = logging.getLogger("convocate_agent.transfer")  # the name the move log lines had before the split
    loop = asyncio.get_running_loop()
    stdin = process.stdin
    data = b""
    try:
        while b"\n" not in data:
            chunk = await asyncio.wait_for(stdin.read(CHUNK), 60)
            if not chunk:
                break
            data += chunk
            if len(data) > TRANSFER_HEADER_MAX and b"\n" not in data[:TRANSFER_HEADER_MAX]:
                raise BadRequest(messages.TRANSFER_BAD_HEADER.format(detail="header line too long"))
        line, _, rest = data.partition(b"\n")
        header = parse_transfer_header(line)
        if header["op"] == "export":
            sid = header["id"]
            meta = service.store.load(sid)
            with service.locks.hold(sid, "move-export"):
                state = await service.runtime.container(sid)
                if state is not None and state.running:
                    from convocate.common.errors import Conflict
                    raise Conflict(messages.SESSION_RUNNING.format(id=sid))
                trees = {HOME_PREFIX: service.paths.session_dir(sid),
                         RECORDINGS_PREFIX: service.paths.session_recordings_dir(sid)}
                size = await asyncio.to_thread(lambda: sum(tree_bytes(d) for d in trees.values()))
                process.stdout.write(encode_line(Response.success({"meta": meta.to_json(), "bytes": size}).to_wire()))
                manifest = await asyncio.to_thread(export_tree, _ChannelWriter(process.stdout, loop), trees)
                # The stopped container holds nothing a restart keeps (restart makes a new one from the
                # home), and its name (convocate-session-<uuid>) would keep the target from starting the
                # session where both agents share a dockerd (tests, a demo). A rollback's restart makes it again.
                await service.runtime.remove(sid)
            log.info("move: exported session %s to %s (%s)", sid, caller.peer, describe(manifest))
            process.exit(0)
            return
        meta = header["meta"]
        result = await import_session(service, meta, _ChannelReader(stdin, loop, rest))
        log.info("move: imported session %s from %s (%s)", meta.uuid, caller.peer, result)
        process.stdout.write(encode_line(Response.success(result).to_wire()))
        process.exit(0)
    except ConvocateError as e:
        _fail(process, Response.failure(e).to_wire(), encode_line)
    except (TimeoutError, OSError) as e:
        log.warning("move: transfer channel from %s failed: %s", getattr(caller, "peer", "?"), e)
        _fail(process, Response.failure(InternalError(str(e) or type(e).__name__)).to_wire(), encode_line)


def _fail(process: Any, wire: dict[str, Any], encode_line: Any) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        process.stdout.write(encode_line(wire))
        process.exit(1)
