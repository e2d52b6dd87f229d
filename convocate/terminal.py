"""Attach the operator's terminal to a session: raw mode, relay, resize, restore.

The local terminal is put in raw mode and its bytes go unchanged to the attach
channel; the session's screen comes back the same way. ``SIGWINCH`` becomes an
SSH ``window-change``. When tmux's client exits (detach, prefix + d) the agent
closes the channel and the terminal is restored exactly as it was.
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
from typing import BinaryIO

import asyncssh

from convocate.client import AgentClient
from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError, error_from_code

RELAY_CHUNK = 64 * 1024


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


async def attach_terminal(client: AgentClient, session_id: str, name: str, *, read_only: bool = False,
                          stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """Relay the controlling terminal to a session until the operator detaches.

    Args:
        client: The agent holding the session.
        session_id: The session UUID.
        name: Session name, for the hint line.
        read_only: Attach as an observer.

    Raises:
        ConfigError: stdin or stdout is not a terminal.
        ConvocateError: the agent refused the attach (its message and code).
    """
    in_file = stdin or sys.stdin.buffer
    out_file = stdout or sys.stdout.buffer
    in_fd, out_fd = in_file.fileno(), out_file.fileno()
    if not (os.isatty(in_fd) and os.isatty(out_fd)):
        raise ConfigError("attach needs a terminal on stdin and stdout")
    cols, rows = os.get_terminal_size(out_fd)
    term = os.environ.get("TERM", "xterm-256color")
    out_file.write((messages.ATTACH_HINT.format(name=name, id=session_id) + "\r\n").encode())
    out_file.flush()
    process = await client.open_attach(session_id, cols=cols, rows=rows, term=term, read_only=read_only)
    loop = asyncio.get_running_loop()
    refused: list[ConvocateError] = []

    def on_input() -> None:
        try:
            data = os.read(in_fd, RELAY_CHUNK)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(in_fd)
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            process.stdin.write(data)

    def on_resize() -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            c, r = os.get_terminal_size(out_fd)
            process.change_terminal_size(c, r)

    with raw_terminal(in_fd):
        loop.add_reader(in_fd, on_input)
        loop.add_signal_handler(signal.SIGWINCH, on_resize)
        try:
            first = True
            while True:
                try:
                    data = await process.stdout.read(RELAY_CHUNK)
                except (OSError, asyncssh.Error):
                    break
                if not data:
                    break
                if first:
                    first = False
                    error = _error_line(data)
                    if error is not None:
                        refused.append(error)
                        break
                _write_all(out_fd, data)
        finally:
            loop.remove_reader(in_fd)
            loop.remove_signal_handler(signal.SIGWINCH)
            process.close()
    if refused:
        raise refused[0]
