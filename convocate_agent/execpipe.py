"""A docker exec's socket as the agent reads it: callbacks for an attach, a stream pair for the recorder.

:class:`convocate_agent.runtime.DockerRuntime` starts the exec (Engine API ``POST /exec/{id}/start``
with the connection hijacked) and wraps the socket it gets in an :class:`ExecStream`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast


class ExecPipe(asyncio.Protocol):
    """An attach exec's socket, read by callbacks: the session's bytes go on in the loop's own callback.

    A stream reader wakes a task for each chunk (one more turn of the event loop per keystroke's
    echo); this protocol hands each chunk to a consumer from ``data_received`` itself. Until a
    consumer is set with :meth:`start`, the bytes are held (tmux's first screen can arrive before
    the relay has started) and reading stops past :data:`HOLD_MAX` bytes.

    A consumer has ``data_received(bytes)``, ``connection_lost(exc)``, ``pause_writing()`` and
    ``resume_writing()``, as :class:`asyncio.Protocol` calls them: the last two say that the
    socket's send buffer passed its high-water mark and came back (the consumer stops feeding it
    meanwhile).
    """

    #: Bytes held before a consumer is set, after which reading pauses.
    HOLD_MAX = 1 << 20

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._consumer: Any = None
        self._held: list[bytes] = []
        self._held_len = 0
        self._lost: tuple[Exception | None] | None = None
        self._write_paused = False
        self._hold_paused = False  # reading paused by this protocol, holding HOLD_MAX bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.data_received(data)
            return
        self._held.append(data)
        self._held_len += len(data)
        if self._held_len > self.HOLD_MAX and self.transport is not None and not self._hold_paused:
            self._hold_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close the transport: Docker's end of the stream is the end of the attach

    def connection_lost(self, exc: Exception | None) -> None:
        if self._consumer is not None:
            self._consumer.connection_lost(exc)
        else:
            self._lost = (exc,)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._consumer is not None:
            self._consumer.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._consumer is not None:
            self._consumer.resume_writing()

    def start(self, consumer: Any) -> None:
        """Hand what was held, then every later chunk and the end, to ``consumer``."""
        self._consumer = consumer
        held, self._held, self._held_len = self._held, [], 0
        for data in held:
            consumer.data_received(data)
        if self._write_paused:
            consumer.pause_writing()
        if self._lost is not None:
            consumer.connection_lost(self._lost[0])
        elif self._hold_paused and self.transport is not None and not self.transport.is_closing():
            self._hold_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the exec's terminal (buffered by the transport when the socket is full)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


@dataclass
class ExecStream:
    """A started exec, as an asyncio stream pair (the recorder's) or an :class:`ExecPipe` (an attach's).

    Attributes:
        exec_id: Docker's exec ID (for resize and inspect).
        reader: Bytes from the exec's terminal (``None`` for an attach: see ``pipe``).
        writer: Bytes to the exec's terminal (``None`` for an attach: see ``pipe``).
        pipe: An attach's socket, read by callbacks (``None`` for a stream pair).
    """

    exec_id: str
    reader: asyncio.StreamReader | None
    writer: asyncio.StreamWriter | None
    _wrapper: Any = None
    pipe: ExecPipe | None = None

    def close(self) -> None:
        """Close the socket and the SDK's wrapper around it (both hold the fd)."""
        if self.writer is not None:
            self.writer.close()
        if self.pipe is not None and self.pipe.transport is not None:
            self.pipe.transport.close()
        try:
            if self._wrapper is not None:
                self._wrapper.close()
        except OSError:
            pass
