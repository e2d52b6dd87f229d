"""Attach the operator's terminal to a session: raw mode, relay, resize, reattach, restore.

The local terminal is put in raw mode and its bytes go unchanged to the attach
channel; the session's screen comes back the same way. ``SIGWINCH`` becomes an
SSH ``window-change``. When tmux's client exits (detach, prefix + d) the agent
ends the channel with exit status 0 and the terminal is restored exactly as it
was. When the agent goes away instead (a restart, a crash, the network), the
session keeps running in its container: the relay says so on one line and
attaches again as soon as the agent answers, until the operator presses
Ctrl-C or :data:`REATTACH_FOR_S` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Callable
from typing import BinaryIO

import asyncssh

from convocate.client import AgentClient
from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError, Unreachable, error_from_code

RELAY_CHUNK = 64 * 1024
#: How long to keep trying to reattach after the agent went away, in seconds.
REATTACH_FOR_S = 300.0
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
    """The agent's refusal, if the channel's first bytes are an error line (DESIGN §3)."""
    if not first.startswith(b'{"ok":false'):
        return None
    try:
        obj = json.loads(first.split(b"\n", 1)[0])
    except ValueError:
        return None
    return error_from_code(obj.get("code"), str(obj.get("error", "attach refused")))


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

    async def pump(self) -> bool:
        """Copy the session's output until the channel ends; True if it ended cleanly (detach, session over).

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
                    return False
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
            return self.process.exit_status == 0
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


ResizeWatcher = Callable[[Callable[[], None]], Callable[[], None]]


async def attach_terminal(client: AgentClient, session_id: str, name: str, *, read_only: bool = False,
                          stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
                          reattach_for: float = REATTACH_FOR_S, watch_resize: ResizeWatcher | None = None) -> None:
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

    Raises:
        ConfigError: stdin or stdout is not a terminal.
        Unreachable: the agent went away and did not come back in time.
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
        def watch_resize(handler: Callable[[], None]) -> Callable[[], None]:
            loop.add_signal_handler(signal.SIGWINCH, handler)
            return lambda: loop.remove_signal_handler(signal.SIGWINCH)

    with raw_terminal(in_fd):
        loop.add_reader(in_fd, relay.on_input)
        unwatch = watch_resize(relay.on_resize)
        try:
            while not await relay.pump():
                relay.say(f"lost the connection to agent {client.agent_id}; the session keeps running. "
                          "Reattaching... (Ctrl-C gives up)")
                await relay.reattach(loop.time() + reattach_for)
        finally:
            loop.remove_reader(in_fd)
            unwatch()
