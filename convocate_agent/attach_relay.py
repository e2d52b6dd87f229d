"""The byte pump of an attach: SSH channel <-> Docker exec socket, moved in the event loop's callbacks.

The operator's bytes arrive in asyncssh's ``data_received`` and are written to the exec socket in
that same callback; the session's bytes arrive in the socket's ``data_received``
(:class:`convocate_agent.execpipe.ExecPipe`) and are written to the SSH channel there. No task is
woken per chunk: with stream readers each keystroke and each echo took one more turn of the event
loop (issue 17: the relay's extra millisecond, docs/benchmarks.md "Typing through the relay").

Flow control, both ways, bounded:

- *Operator -> session.* When the exec socket's send buffer passes its high-water mark (Docker,
  or a pane that does not read, is not taking the bytes), feeding from the SSH channel is paused
  (``SSHProcess.pause_feeding``): asyncssh stops sending window adjusts and the operator is held
  to the channel window. asyncssh 2.24 grants a whole window on the first chunk it delivers after a
  pause, however much it still holds (the flaw ``convocate.common.framing.READ_CHUNK`` works
  around for stream readers), so on resume the relay takes *everything* asyncssh holds in one go,
  ignoring the socket's high-water mark while it does, and pauses again afterwards if the socket
  is still full. What the agent holds for one attach is then at most about two channel windows.
- *Session -> operator.* The relay is the SSH process's stdout reader (``SSHProcess.set_reader``):
  when the channel's send buffer passes its high-water mark (an operator that stops reading),
  asyncssh calls :meth:`TerminalRelay.pause_reading` and the exec socket stops being read, so
  Docker and tmux are held back instead of the agent buffering.

The client's EOF is never turned into a half-close towards Docker (MACHINE-NOTES: attach).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from convocate_agent.attach_trace import HopTrace
from convocate_agent.execpipe import ExecPipe

log = logging.getLogger(__name__)


class TerminalRelay:
    """Both directions of one attach channel.

    Args:
        process: The attach channel (``encoding=None``), after its header was read.
        pipe: The exec socket of ``tmux attach`` (:meth:`DockerRuntime.open_attach`).
        resize: Called with ``(cols, rows)`` on an SSH ``window-change``; resizes are applied one
            at a time, in order.
        trace: The hop trace, when tracing is on (:mod:`convocate_agent.attach_trace`).
        record_input: Called with each chunk the operator typed (the recorder's input hook), or
            ``None``.

    Attributes:
        ended: Resolves to True when Docker's stream ended (tmux's client exited), to False when
            the SSH channel could not take more output (it closed).
        input_bytes: Bytes relayed operator -> session (after the ``leftover`` of :meth:`start`).
        output_bytes: Bytes relayed session -> operator.
    """

    def __init__(self, process: asyncssh.SSHServerProcess, pipe: ExecPipe,
                 resize: Callable[[int, int], Awaitable[None]], *, trace: HopTrace | None = None,
                 record_input: Callable[[bytes], None] | None = None) -> None:
        self.process = process
        self.pipe = pipe
        self._resize = resize
        self.trace = trace
        self._record_input = record_input
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.input_bytes = 0
        self.output_bytes = 0
        self.error: BaseException | None = None
        self._feeding_paused = False  # SSH -> exec paused (the exec socket is full)
        self._taking_all = False  # inside a resume: take all asyncssh holds (see the module doc)
        self._resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self._resizer = asyncio.ensure_future(self._apply_resizes())

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, leftover: bytes = b"") -> None:
        """Write ``leftover`` (bytes sent with the header) and start relaying both ways."""
        if leftover:
            self.pipe.write(leftover)
        self.process.set_writer(self, False, None)  # asyncssh's _WriterProtocol: write(), write_exception() ...
        self.process.set_reader(self, False, None)  # ... and _ReaderProtocol: pause_reading(), resume_reading()
        self.pipe.start(self)
        # What asyncssh already holds (typed while the exec was starting), then everything after it.
        self.process.feed_recv_buf(None, self)

    async def stop(self) -> BaseException | None:
        """Stop relaying (the channel and the socket stay open for the caller to close).

        Returns:
            The error that ended the relay, if a bug did.
        """
        with contextlib.suppress(Exception):
            if None in self.process._writers:  # noqa: SLF001 (asyncssh keeps no public "has writer")
                self.process.clear_writer(None)
        with contextlib.suppress(Exception):
            if None in self.process._readers:  # noqa: SLF001
                self.process.clear_reader(None)
        self._resizer.cancel()
        await asyncio.gather(self._resizer, return_exceptions=True)
        if not self.ended.done():
            self.ended.cancel()
        return self.error

    def resize(self, cols: int, rows: int) -> None:
        """Queue a resize of the exec's TTY."""
        self._resizes.put_nowait((cols, rows))

    async def _apply_resizes(self) -> None:
        while True:
            cols, rows = await self._resizes.get()
            await self._resize(cols, rows)

    def _end(self, detached: bool, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        if not self.ended.done():
            self.ended.set_result(detached)

    # --- operator -> session: asyncssh's writer protocol ---------------------------------------
    def write(self, data: bytes) -> None:
        """A chunk from the SSH channel (called by asyncssh's ``data_received``)."""
        try:
            trace = self.trace
            if trace is not None:
                trace.mark("ssh_recv", len(data))
            self.input_bytes += len(data)
            self.pipe.write(data)
            if trace is not None:
                trace.mark("exec_write", len(data))
            if self._record_input is not None:
                self._record_input(data)
        except Exception as e:  # never into asyncssh's packet handling: it would drop the connection
            self._end(False, e)

    def write_exception(self, exc: Exception) -> None:
        """A channel request among the data: a window change resizes; a break or a signal is ignored."""
        if isinstance(exc, asyncssh.TerminalSizeChanged):
            self.resize(exc.width, exc.height)

    def write_eof(self) -> None:
        """The operator's EOF: keep showing output, never half-close Docker's stream."""

    def close(self) -> None:
        """asyncssh closes its readers and writers with the channel: the caller's clean-up does ours."""

    def pause_writing(self) -> None:
        """The exec socket's send buffer is full: hold the operator to the SSH channel window."""
        if self._taking_all or self._feeding_paused:
            return
        self._feeding_paused = True
        with contextlib.suppress(Exception):
            self.process.pause_feeding(None)

    def resume_writing(self) -> None:
        """The exec socket drained: take all asyncssh holds, then pause again if still full."""
        if not self._feeding_paused:
            return
        self._feeding_paused = False
        self._taking_all = True
        try:
            self.process.resume_feeding(None)  # asyncssh delivers its whole buffer, now (to write())
        except Exception as e:
            self._end(False, e)
        finally:
            self._taking_all = False
        transport = self.pipe.transport
        if transport is not None and transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            self.pause_writing()

    # --- session -> operator: the exec socket's consumer, and asyncssh's reader protocol -------
    def data_received(self, data: bytes) -> None:
        """A chunk from the exec socket (called by :class:`ExecPipe`)."""
        trace = self.trace
        if trace is not None:
            trace.mark("exec_read", len(data))
        self.output_bytes += len(data)
        try:
            self.process.stdout.write(data)
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            self._end(False)
            return
        except Exception as e:
            self._end(False, e)
            return
        if trace is not None:
            trace.mark("ssh_send", len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        """Docker's stream ended: tmux's client exited (a detach, or the session is over)."""
        self._end(True)

    def pause_reading(self) -> None:
        """The SSH channel's send buffer is full (the operator is not reading): stop reading Docker."""
        transport = self.pipe.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        """The SSH channel drained: read Docker again."""
        transport = self.pipe.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
