"""The SSH target: ``--host`` reached over one asyncssh connection made with the operator's own keys,
agent and ``known_hosts`` (OpenSSH's files), commands run as ``--user`` through ``sudo -n`` (sudo(8)).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from convocate.common import messages
from convocate.common.errors import HostKeyMismatch, Unreachable
from convocate_host.target import (
    CONNECT_TIMEOUT_S,
    CommandResult,
    Process,
    SudoRequired,
    Target,
)


class _SSHProcess(Process):
    def __init__(self, proc: asyncssh.SSHClientProcess, argv: tuple[str, ...]) -> None:
        self._proc = proc
        self._argv = argv

    def write(self, data: bytes) -> None:
        self._proc.stdin.write(data)

    async def drain(self) -> None:
        await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        self._proc.stdin.write_eof()

    async def read(self, size: int) -> bytes:
        return await self._proc.stdout.read(size)

    async def wait(self) -> CommandResult:
        rest, err = await asyncio.gather(self._proc.stdout.read(), self._proc.stderr.read())
        completed = await self._proc.wait()
        status = completed.exit_status if completed.exit_status is not None else 255
        return CommandResult(self._argv, status, rest, err)

    def kill(self) -> None:
        self._proc.close()


class SSHTarget(Target):
    """Another host, over SSH with the operator's credentials, as ``user`` through ``sudo -n``.

    Use :meth:`connect` to make one.

    Attributes:
        user: The login user.
        connection: The open asyncssh connection.
    """

    local = False

    def __init__(self, address: str, user: str, port: int, connection: asyncssh.SSHClientConnection) -> None:
        self.address = address
        self.user = user
        self.port = port
        self.connection = connection
        where = f"[{address}]" if ":" in address else address
        self.description = f"{user}@{where}" + (f":{port}" if port != 22 else "")
        self._sudo = user != "root"

    @classmethod
    async def connect(cls, address: str, *, user: str, port: int = 22, identity: Path | None = None,
                      known_hosts: Path | None = None) -> SSHTarget:
        """Log in to ``address`` and check that ``sudo -n`` works there.

        Args:
            address: Host name or IP address.
            user: Login user (root, or a user with NOPASSWD sudo).
            port: SSH port.
            identity: A private key to use instead of the operator's default keys and agent.
            known_hosts: A known_hosts file instead of ``~/.ssh/known_hosts``.

        Raises:
            HostKeyMismatch: the host key is unknown or differs from known_hosts.
            Unreachable: the host cannot be reached or refused the login.
            SudoRequired: the user cannot use ``sudo -n``.
        """
        options: dict = {"username": user, "connect_timeout": CONNECT_TIMEOUT_S, "keepalive_interval": 30,
                         "keepalive_count_max": 4}
        if identity is not None:
            options.update(client_keys=[str(identity)], agent_path=None)
        if known_hosts is not None:
            options["known_hosts"] = str(known_hosts)
        where = f"{user}@{address}:{port}"
        try:
            conn = await asyncssh.connect(address, port, **options)
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyMismatch(messages.HOST_SSH_HOST_KEY.format(
                host=where, known_hosts=known_hosts or "~/.ssh/known_hosts", detail=e.reason)) from e
        except asyncssh.PermissionDenied as e:
            raise Unreachable(messages.HOST_SSH_UNREACHABLE.format(host=where, detail=f"login refused: {e.reason}")) \
                from e
        except (TimeoutError, OSError, asyncssh.Error) as e:
            raise Unreachable(messages.HOST_SSH_UNREACHABLE.format(host=where, detail=str(e) or type(e).__name__)) \
                from e
        target = cls(address, user, port, conn)
        if target._sudo:
            result = await target._exec(["true"], None, 60)
            if not result.ok:
                conn.close()
                raise SudoRequired(messages.HOST_SUDO_REQUIRED.format(host=target.description, user=user,
                                                                      detail=result.detail()))
        return target

    def _command(self, argv: Sequence[str]) -> str:
        return shlex.join((["sudo", "-n", "--"] if self._sudo else []) + list(argv))

    async def _exec(self, argv: Sequence[str], input: bytes | None, timeout: float) -> CommandResult:
        argv = tuple(argv)
        try:
            proc = await self.connection.create_process(self._command(argv), encoding=None)
            if input:
                proc.stdin.write(input)
            proc.stdin.write_eof()  # always: asyncssh sends no EOF for an empty input of its own
            completed = await proc.wait()
        except (OSError, asyncssh.Error) as e:
            raise Unreachable(messages.HOST_SSH_UNREACHABLE.format(host=self.description, detail=str(e))) from e
        status = completed.exit_status if completed.exit_status is not None else 255
        return CommandResult(argv, status, bytes(completed.stdout or b""), bytes(completed.stderr or b""))

    async def open_process(self, argv: Sequence[str], *, reads: bool = False) -> Process:
        argv = tuple(argv)
        try:
            proc = await self.connection.create_process(self._command(argv), encoding=None)
        except (OSError, asyncssh.Error) as e:
            raise Unreachable(messages.HOST_SSH_UNREACHABLE.format(host=self.description, detail=str(e))) from e
        return _SSHProcess(proc, argv)

    async def close(self) -> None:
        self.connection.close()
        await self.connection.wait_closed()
