"""Attach the operator's terminal to a session: raw mode, relay, resize, reattach, restore.

The local terminal is put in raw mode and its bytes go unchanged to the attach
channel; the session's screen comes back the same way. ``SIGWINCH`` becomes an
SSH ``window-change``. When tmux's client exits (detach, prefix + d) the agent
ends the channel with exit status 0 and the terminal is restored exactly as it
was. When the agent goes away instead (a restart, a crash, the network), the
session keeps running in its container: the relay says so on one line and
attaches again as soon as the agent answers, until the operator presses
Ctrl-C or :data:`REATTACH_FOR_S` pass. When a move detaches the operator (exit
status :data:`~convocate.common.protocol.ATTACH_EXIT_MOVING`), the relay says so
and, given a way to find the session (:func:`follow_moves`), attaches again on
the agent where it runs next, until Ctrl-C or :data:`FOLLOW_MOVE_FOR_S` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO, TypeVar

import asyncssh

from convocate.client import AgentClient
from convocate.common import messages
from convocate.common.constants import RELAY_CHUNK
from convocate.common.errors import ConfigError, ConvocateError, ProtocolError, Unreachable, error_from_code
from convocate.common.ops.params import GetParams
from convocate.common.protocol import ATTACH_EXIT_DETACHED, ATTACH_EXIT_MOVING, Response

#: How long to keep trying to reattach after the agent went away, in seconds.
REATTACH_FOR_S = 300.0
#: How long to wait for a moving session to run on its new agent, in seconds (a big home takes a while).
FOLLOW_MOVE_FOR_S = 1800.0
#: Seconds between two looks for a moving session.
FOLLOW_MOVE_POLL_S = 1.0
#: Longest wait for the copy a move detached the operator from to stop, in seconds.
FOLLOW_MOVE_LEAVE_S = 30.0
#: Where a moving session runs next, given the agent it left: the client of its agent, once it runs there.
Relocate = Callable[[AgentClient], Awaitable[AgentClient]]
T = TypeVar("T")
CTRL_C = b"\x03"


@contextlib.contextmanager
def raw_terminal(fd: int):
    """Put ``fd`` in raw mode for the block and restore its settings afterwards."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error_line(first: bytes) -> ConvocateError | None:
    """The agent's refusal, if the channel's first bytes are an error response line (DESIGN §3).

    An agent refuses an attach with one :class:`~convocate.common.protocol.Response` line before
    any terminal byte; an accepted attach starts with tmux's output, which is never a JSON object.
    """
    try:
        response = Response.parse(first.split(b"\n", 1)[0])
    except ProtocolError:
        return None
    return None if response.ok else error_from_code(response.code, response.error or "attach refused")


class _Relay:
    """One terminal, relayed to successive attach channels."""

    def __init__(self, client: AgentClient, session_id: str, in_fd: int, out_fd: int, read_only: bool) -> None:
        self.client = client
        self.session_id = session_id
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.read_only = read_only
        self.process: asyncssh.SSHClientProcess | None = None
        self.aborted = asyncio.Event()

    def on_input(self) -> None:
        try:
            data = os.read(self.in_fd, RELAY_CHUNK)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.in_fd)
            return
        if self.process is None:  # reattaching: only Ctrl-C means something
            if CTRL_C in data:
                self.aborted.set()
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self.process.stdin.write(data)

    def on_resize(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                cols, rows = os.get_terminal_size(self.out_fd)
                self.process.change_terminal_size(cols, rows)

    def say(self, text: str) -> None:
        _write_all(self.out_fd, f"\r\n[convocate] {text}\r\n".encode())

    async def open(self) -> None:
        cols, rows = os.get_terminal_size(self.out_fd)
        self.process = await self.client.open_attach(self.session_id, cols=cols, rows=rows, read_only=self.read_only,
                                                     term=os.environ.get("TERM", "xterm-256color"))

    async def pump(self) -> int | None:
        """Copy the session's output until the channel ends.

        Returns:
            The channel's exit status (:data:`~convocate.common.protocol.ATTACH_EXIT_DETACHED` and
            the others), or None when the connection was lost.

        Raises:
            ConvocateError: the agent refused the attach.
        """
        assert self.process is not None
        first = True
        try:
            while True:
                try:
                    data = await self.process.stdout.read(RELAY_CHUNK)
                except (OSError, asyncssh.Error):
                    return None
                if not data:
                    break
                if first:
                    first = False
                    refused = _error_line(data)
                    if refused is not None:
                        raise refused
                _write_all(self.out_fd, data)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait_closed(), 5)
            return self.process.exit_status
        finally:
            self.process.close()
            self.process = None

    async def reattach(self, deadline: float) -> None:
        """Open a new channel as soon as the agent answers.

        Raises:
            Unreachable: the deadline passed or the operator pressed Ctrl-C.
        """
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                await self.open()
                return
            except Unreachable as e:
                if loop.time() + delay > deadline:
                    raise Unreachable(f"gave up reattaching: {e}") from e
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.aborted.wait(), delay)
            if self.aborted.is_set():
                raise Unreachable("reattach cancelled; the session keeps running")
            delay = min(delay * 2, 5.0)

    async def until(self, work: Awaitable[T], deadline: float, what: str) -> T:
        """``work``'s result, unless the operator presses Ctrl-C or ``deadline`` passes first.

        Raises:
            Unreachable: cancelled or too late (``what`` says what was waited for).
        """
        loop = asyncio.get_running_loop()
        task, aborted = asyncio.ensure_future(work), asyncio.ensure_future(self.aborted.wait())
        try:
            await asyncio.wait({task, aborted}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, aborted):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, aborted, return_exceptions=True)
        if task.done() and not task.cancelled():
            return task.result()
        raise Unreachable(f"{'cancelled' if self.aborted.is_set() else 'gave up'} waiting for {what}")


def follow_moves(cluster: Any, session_id: str) -> Relocate:
    """A :data:`Relocate` that looks for the session across ``cluster`` until a copy of it is ready.

    First the copy the operator was detached from stops (a move stops it after detaching; at most
    :data:`FOLLOW_MOVE_LEAVE_S`), then the first copy that runs (and is not locked) counts; an attach
    that reaches it while it is still starting waits on the agent for its tmux (``open_attach``). Any
    agent counts, the one it left included (a move that rolled back restarts it there).

    Args:
        cluster: A :class:`convocate.cluster.Cluster`.
        session_id: The session's UUID.
    """
    async def copies() -> list[Any]:
        listing = await cluster.list()
        return [found for found in listing.sessions if found.view.meta.uuid == session_id]

    async def still_runs(left: AgentClient) -> bool:
        try:
            return (await left.request(GetParams(id=session_id))).running
        except ConvocateError:  # gone from there, or that agent cannot say: look everywhere
            return False

    async def relocate(left: AgentClient) -> AgentClient:
        loop = asyncio.get_running_loop()
        leave_by = loop.time() + FOLLOW_MOVE_LEAVE_S
        while loop.time() < leave_by and await still_runs(left):
            await asyncio.sleep(FOLLOW_MOVE_POLL_S / 4)
        while True:
            for found in await copies():
                if found.view.running and not found.view.locked:
                    return found.client
            await asyncio.sleep(FOLLOW_MOVE_POLL_S)

    return relocate


ResizeWatcher = Callable[[Callable[[], None]], Callable[[], None]]


async def attach_terminal(client: AgentClient, session_id: str, name: str, *, read_only: bool = False,
                          stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
                          reattach_for: float = REATTACH_FOR_S, watch_resize: ResizeWatcher | None = None,
                          relocate: Relocate | None = None) -> AgentClient:
    """Relay the controlling terminal to a session until the operator detaches.

    Args:
        client: The agent holding the session.
        session_id: The session UUID.
        name: Session name, for the hint line.
        read_only: Attach as an observer.
        reattach_for: Seconds to keep trying when the agent goes away.
        watch_resize: Installs a window-size handler and returns its remover. By
            default ``SIGWINCH`` on this event loop, which needs the main thread;
            a caller running this on another thread (the TUI) brings its own.
        relocate: Finds the session when a move detached the operator (:func:`follow_moves`);
            None ends the attach then, with a line saying so.

    Returns:
        The client of the agent the operator was last attached through (another than
        ``client`` when the session moved).

    Raises:
        ConfigError: stdin or stdout is not a terminal.
        Unreachable: the agent went away and did not come back in time, or a moving session did not
            run anywhere in time.
        ConvocateError: the agent refused the attach (its message and code).
    """
    in_file = stdin or sys.stdin.buffer
    out_file = stdout or sys.stdout.buffer
    in_fd, out_fd = in_file.fileno(), out_file.fileno()
    if not (os.isatty(in_fd) and os.isatty(out_fd)):
        raise ConfigError("attach needs a terminal on stdin and stdout")
    _write_all(out_fd, (messages.ATTACH_HINT.format(name=name, id=session_id) + "\r\n").encode())
    relay = _Relay(client, session_id, in_fd, out_fd, read_only)
    await relay.open()
    loop = asyncio.get_running_loop()
    if watch_resize is None:
        watch_resize = _sigwinch_watcher(loop)
    with raw_terminal(in_fd):
        loop.add_reader(in_fd, relay.on_input)
        unwatch = watch_resize(relay.on_resize)
        try:
            await _relay_until_detached(relay, name, reattach_for, relocate)
        finally:
            loop.remove_reader(in_fd)
            unwatch()
    return relay.client


def _sigwinch_watcher(loop: asyncio.AbstractEventLoop) -> ResizeWatcher:
    """The default :data:`ResizeWatcher`: ``SIGWINCH`` on ``loop`` (which needs the main thread)."""
    def watch_resize(handler: Callable[[], None]) -> Callable[[], None]:
        loop.add_signal_handler(signal.SIGWINCH, handler)
        return lambda: loop.remove_signal_handler(signal.SIGWINCH)

    return watch_resize


async def _relay_until_detached(relay: _Relay, name: str, reattach_for: float, relocate: Relocate | None) -> None:
    """Pump ``relay`` until the operator detaches, following a move or reattaching after a lost link.

    Returns early (with a line saying so) when a move detached the operator and ``relocate`` is None.

    Raises:
        Unreachable: as :func:`attach_terminal`.
        ConvocateError: an agent refused the (re)attach.
    """
    loop = asyncio.get_running_loop()
    while (status := await relay.pump()) != ATTACH_EXIT_DETACHED:
        if status == ATTACH_EXIT_MOVING:
            if relocate is None:
                relay.say(messages.ATTACH_MOVED_AWAY.format(name=name))
                return
            relay.say(messages.ATTACH_MOVING.format(name=name, agent=relay.client.agent_id))
            relay.client = await relay.until(relocate(relay.client), loop.time() + FOLLOW_MOVE_FOR_S,
                                             f"{name} to run again")
            relay.say(messages.ATTACH_FOLLOWED.format(name=name, agent=relay.client.agent_id))
            await relay.open()
            continue
        relay.say(f"lost the connection to agent {relay.client.agent_id}; the session keeps running. "
                  "Reattaching... (Ctrl-C gives up)")
        await relay.reattach(loop.time() + reattach_for)
