"""The host a ``convocate-host`` step acts on: this machine through sudo, or another over SSH.

Every provisioning step is a sequence of commands run as root on a target and of files read or
written there. :class:`LocalTarget` runs them here (``sudo -n`` unless already root);
:class:`SSHTarget` runs them on ``--host`` over one asyncssh connection made with the operator's
own keys, agent and ``known_hosts`` (OpenSSH's files), as ``--user`` through ``sudo -n``
(sudo(8): ``-n`` fails instead of prompting, so a missing NOPASSWD rule is a clear error, not a
hung deploy). Both offer the same operations, so a step never knows which one it drives.

Files are written atomically (a temporary file in the same directory, synced, then renamed over
the target) and only when their bytes, mode or owner differ, which is what makes every step
idempotent and able to say whether it changed something.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import getpass
import hashlib
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from convocate.common import messages
from convocate.common.errors import ConvocateError, HostKeyMismatch, Unreachable

#: How long a command may run before the step gives up, in seconds (apt upgrades are slow).
DEFAULT_TIMEOUT_S = 1800.0
CONNECT_TIMEOUT_S = 20.0

#: Writes stdin to a temporary file beside $1, gives it mode $2 and owner $3, syncs it and renames
#: it over $1; the temporary file never outlives a failure. With $4 (a SHA-256, or "-" for "does not
#: exist") the rename happens only if $1 still is that, else it exits 3 (compare-and-swap).
_WRITE_SCRIPT = """\
set -eu
tmp=$(mktemp "$(dirname -- "$1")/.convocate-host.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod "$2" "$tmp"
chown "$3" "$tmp"
sync -- "$tmp"
if [ -n "${4:-}" ]; then
    now=-
    [ ! -e "$1" ] || now=$(sha256sum < "$1" | cut -d' ' -f1)
    [ "$now" = "$4" ] || exit 3
fi
mv -f -- "$tmp" "$1"
trap - EXIT
sync -- "$(dirname -- "$1")"
"""
#: How :func:`Target.write_file` names "the file must not exist yet" for ``expect_sha256``.
ABSENT = "-"

#: Prints "MODE OWNER:GROUP SHA256" of $1, or nothing when it does not exist.
_STAT_SCRIPT = """\
set -eu
[ -e "$1" ] || exit 0
printf '%s %s\\n' "$(stat -c '%a %U:%G' -- "$1")" "$(sha256sum < "$1" | cut -d' ' -f1)"
"""


class HostError(ConvocateError):
    """A command or file operation on a target failed; the message names the host and the command."""

    code = "host"
    exit_code = 1


class FileChanged(HostError):
    """A compare-and-swap write found the file changed since it was read (someone else wrote it)."""


class SudoRequired(HostError):
    """The target's user cannot run ``sudo -n`` (no NOPASSWD rule)."""

    exit_code = 77  # EX_NOPERM


@dataclass(frozen=True)
class CommandResult:
    """How a command ended.

    Attributes:
        argv: The command as run (without the sudo prefix).
        returncode: Its exit status.
        stdout: Everything it wrote to stdout.
        stderr: Everything it wrote to stderr.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout as text (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def detail(self) -> str:
        """The last lines of stderr (or stdout), for an error message."""
        text = (self.stderr or self.stdout).decode("utf-8", errors="replace").strip()
        lines = text.splitlines()
        return "\n".join(lines[-15:]) if lines else "no output"


@dataclass(frozen=True)
class FileState:
    """Mode, owner and content hash of a file on a target."""

    mode: int
    owner: str
    sha256: str


class Process(abc.ABC):
    """A command running on a target with its stdin and stdout open, for streams (image transfer)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the command's stdin."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the queued stdin data is flowing (backpressure)."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """Send end of file on stdin."""

    @abc.abstractmethod
    async def read(self, size: int) -> bytes:
        """Read up to ``size`` bytes of stdout; ``b""`` at the end."""

    @abc.abstractmethod
    async def wait(self) -> CommandResult:
        """Wait for the command to end; stdout already read through :meth:`read` is not repeated."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the command (best effort)."""


#: Bytes moved per read when one command's output is fed to another.
RELAY_CHUNK = 1 << 20


async def relay(source: Process, sink: Process, *,
                observe: Callable[[bytes], None] | None = None) -> tuple[int, CommandResult, CommandResult]:
    """Feed ``source``'s stdout to ``sink``'s stdin (with backpressure), then wait for both.

    Args:
        source: The command whose output is sent.
        sink: The command that receives it.
        observe: Called with each chunk on its way (hashing, progress).

    Returns:
        ``(bytes moved, source's result, sink's result)``.

    Raises:
        Whatever stopped the transfer; both commands are killed first.
    """
    moved = 0
    try:
        while chunk := await source.read(RELAY_CHUNK):
            if observe is not None:
                observe(chunk)
            sink.write(chunk)
            await sink.drain()
            moved += len(chunk)
        await sink.close_stdin()
    except BaseException:
        source.kill()
        sink.kill()
        raise
    return moved, await source.wait(), await sink.wait()


class Target(abc.ABC):
    """A host that provisioning steps run on, as root.

    Attributes:
        description: How messages name the host (``local host``, ``admin@10.0.0.5``).
        address: The host name or address other hosts reach it by.
        local: True for this machine.
        dry_run: True when writes are only recorded (``--dry-run``).
    """

    description: str
    address: str
    local: bool
    #: True for a :class:`DryRunTarget`: commands not marked ``reads`` are recorded, not run.
    dry_run: bool = False

    @abc.abstractmethod
    async def _exec(self, argv: Sequence[str], input: bytes | None, timeout: float) -> CommandResult:
        """Run ``argv`` as root and collect its output."""

    @abc.abstractmethod
    async def open_process(self, argv: Sequence[str], *, reads: bool = False) -> Process:
        """Start ``argv`` as root with stdin and stdout open (``reads``: as for :meth:`run`)."""

    async def close(self) -> None:  # noqa: B027 - a local target has nothing to release
        """Release the connection, if any."""

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
                  timeout: float = DEFAULT_TIMEOUT_S, what: str | None = None, reads: bool = False) -> CommandResult:
        """Run a command as root on the target.

        Args:
            argv: The command and its arguments (no shell unless you run one).
            input: Bytes for its stdin; None gives it an empty stdin.
            check: Raise when it exits non-zero.
            timeout: Seconds before it is abandoned.
            what: What the command is for, for the error message.
            reads: The caller's word that the command only reads (changes nothing on the host): a
                :class:`DryRunTarget` runs such commands and only records the others. Never guessed
                from the command; every call site says so.

        Returns:
            Its result.

        Raises:
            HostError: it failed (with ``check``), timed out, or could not be started.
        """
        try:
            result = await asyncio.wait_for(self._exec(argv, input, timeout), timeout)
        except TimeoutError:
            raise HostError(messages.HOST_COMMAND_TIMEOUT.format(
                host=self.description, command=shlex.join(argv), seconds=timeout)) from None
        if check and not result.ok:
            raise HostError(messages.HOST_COMMAND_FAILED.format(
                host=self.description, what=what or "a step", command=shlex.join(argv),
                status=result.returncode, detail=result.detail()))
        return result

    async def sh(self, script: str, *args: str, **kwargs) -> CommandResult:
        """Run a POSIX shell script as root; ``args`` become ``$1``, ``$2``, ..."""
        return await self.run(["sh", "-c", script, "sh", *args], **kwargs)

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the target."""
        return (await self.run(["test", "-e", path], check=False, reads=True)).ok

    async def read_file(self, path: str) -> bytes | None:
        """The bytes of ``path``, or None when it does not exist.

        Raises:
            HostError: it exists but cannot be read.
        """
        result = await self.sh('[ -e "$1" ] || exit 3; exec cat -- "$1"', path, check=False, reads=True)
        if result.returncode == 3:
            return None
        if not result.ok:
            raise HostError(messages.HOST_COMMAND_FAILED.format(
                host=self.description, what=f"reading {path}", command=f"cat {path}",
                status=result.returncode, detail=result.detail()))
        return result.stdout

    async def file_state(self, path: str) -> FileState | None:
        """Mode, owner and SHA-256 of ``path``, or None when it does not exist."""
        out = (await self.sh(_STAT_SCRIPT, path, what=f"inspecting {path}", reads=True)).text.split()
        if not out:
            return None
        return FileState(int(out[0], 8), out[1], out[2])

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root",
                         expect_sha256: str | None = None) -> bool:
        """Make ``path`` hold exactly ``data`` with ``mode`` and ``owner``, atomically.

        Nothing is written when the file already matches. The parent directory must exist.

        Args:
            path: Absolute path on the target.
            data: The whole content.
            mode: Permission bits.
            owner: ``user:group``.
            expect_sha256: Replace the file only if it still has this SHA-256 (:data:`ABSENT`: only if it
                does not exist), for a file another program writes too.

        Returns:
            True when something changed.

        Raises:
            FileChanged: ``expect_sha256`` no longer holds; nothing was written.
            HostError: it could not be written; the old file (if any) is intact.
        """
        wanted = FileState(mode, owner, hashlib.sha256(data).hexdigest())
        if await self.file_state(path) == wanted:
            return False
        result = await self.sh(_WRITE_SCRIPT, path, f"{mode:o}", owner, expect_sha256 or "", input=data, check=False)
        if result.returncode == 3 and expect_sha256:
            raise FileChanged(f"{self.description}: {path} changed while it was being updated")
        if not result.ok:
            raise HostError(messages.HOST_COMMAND_FAILED.format(
                host=self.description, what=f"writing {path}", command=f"replace {path}",
                status=result.returncode, detail=result.detail()))
        return True

    async def dir_state(self, path: str) -> list[str]:
        """``[mode in octal, "user:group"]`` of the directory ``path``, or ``[]`` when it is none."""
        return (await self.sh('[ -d "$1" ] && stat -c "%a %U:%G" -- "$1" || true', path, reads=True)).text.split()

    async def ensure_dir(self, path: str, *, mode: int = 0o755, owner: str = "root:root") -> bool:
        """Make ``path`` a directory (parents too) with ``mode`` and ``owner``; True when something changed."""
        if await self.dir_state(path) == [f"{mode:o}", owner]:
            return False
        user, _, group = owner.partition(":")
        await self.run(["install", "-d", "-m", f"{mode:o}", "-o", user, "-g", group or user, path],
                       what=f"creating {path}")
        return True


class _LocalProcess(Process):
    def __init__(self, proc: asyncio.subprocess.Process, argv: tuple[str, ...]) -> None:
        self._proc = proc
        self._argv = argv

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)

    async def drain(self) -> None:
        assert self._proc.stdin is not None
        await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await self._proc.stdin.wait_closed()

    async def read(self, size: int) -> bytes:
        assert self._proc.stdout is not None
        return await self._proc.stdout.read(size)

    async def wait(self) -> CommandResult:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        rest, err = await asyncio.gather(self._proc.stdout.read(), self._proc.stderr.read())
        return CommandResult(self._argv, await self._proc.wait(), rest, err)

    def kill(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()


class LocalTarget(Target):
    """This machine: commands run here, through ``sudo -n`` unless this process is root.

    Args:
        address: How other hosts reach this one (for registering it); defaults to its host name.
    """

    local = True

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.uname().nodename
        self.description = "local host"
        self._prefix: tuple[str, ...] = () if os.geteuid() == 0 else ("sudo", "-n", "--")

    async def check_sudo(self) -> None:
        """Make sure commands can run as root here.

        Raises:
            SudoRequired: not root, and sudo needs a password.
        """
        if not self._prefix:
            return
        result = await self._exec(["true"], None, 30)
        if not result.ok:
            raise SudoRequired(messages.HOST_SUDO_REQUIRED.format(
                host=self.description, user=os.environ.get("USER", "this user"), detail=result.detail()))

    async def _exec(self, argv: Sequence[str], input: bytes | None, timeout: float) -> CommandResult:
        argv = tuple(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._prefix, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            return CommandResult(argv, 127, b"", str(e).encode())
        try:
            out, err = await proc.communicate(input or b"")
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        return CommandResult(argv, proc.returncode or 0, out, err)

    async def open_process(self, argv: Sequence[str], *, reads: bool = False) -> Process:
        argv = tuple(argv)
        proc = await asyncio.create_subprocess_exec(
            *self._prefix, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return _LocalProcess(proc, argv)


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


class _NullProcess(Process):
    """What a dry run hands out for a stream that would change the host: it takes and gives nothing."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self._argv = argv

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def close_stdin(self) -> None:
        pass

    async def read(self, size: int) -> bytes:
        return b""

    async def wait(self) -> CommandResult:
        return CommandResult(self._argv, 0, b"", b"")

    def kill(self) -> None:
        pass


class DryRunTarget(Target):
    """A target for ``--dry-run``: reads happen, writes are recorded as what would change.

    Commands the call site marks ``reads=True`` (and the file reads of :class:`Target`) run on the
    wrapped target; every other command, file write, directory creation and stream into a command
    is recorded in :attr:`planned` (and told to ``on_plan``, the report) and treated as having
    succeeded with no output. A file this run would have written reads back as written, so later
    steps see the state the real run would leave.

    Args:
        inner: The real target.

    Attributes:
        planned: One line per would-be change, in order.
        on_plan: Called with each such line (``LiveReport.would``); None to only record.
    """

    dry_run = True

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.description = inner.description
        self.address = inner.address
        self.local = inner.local
        self.planned: list[str] = []
        self.on_plan: Callable[[str], None] | None = None
        self._written: dict[str, tuple[bytes, FileState]] = {}
        self._dirs: dict[str, list[str]] = {}

    def _plan(self, line: str) -> None:
        self.planned.append(line)
        if self.on_plan is not None:
            self.on_plan(line)

    async def _exec(self, argv: Sequence[str], input: bytes | None, timeout: float) -> CommandResult:
        return await self.inner._exec(argv, input, timeout)  # only reached for reads (see run)

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
                  timeout: float = DEFAULT_TIMEOUT_S, what: str | None = None, reads: bool = False) -> CommandResult:
        """Run ``argv`` on the real target if it only reads, else record it (see :meth:`Target.run`)."""
        if reads:
            return await self.inner.run(argv, input=input, check=check, timeout=timeout, what=what, reads=True)
        self._plan(messages.DRY_RUN_COMMAND.format(command=shlex.join(argv), what=f" ({what})" if what else ""))
        return CommandResult(tuple(argv), 0, b"", b"")

    async def open_process(self, argv: Sequence[str], *, reads: bool = False) -> Process:
        if reads:
            return await self.inner.open_process(argv, reads=True)
        self._plan(messages.DRY_RUN_STREAM.format(command=shlex.join(argv), what=""))
        return _NullProcess(tuple(argv))

    async def read_file(self, path: str) -> bytes | None:
        if path in self._written:
            return self._written[path][0]
        return await self.inner.read_file(path)

    async def file_state(self, path: str) -> FileState | None:
        if path in self._written:
            return self._written[path][1]
        return await self.inner.file_state(path)

    async def exists(self, path: str) -> bool:
        return path in self._written or path in self._dirs or await self.inner.exists(path)

    async def dir_state(self, path: str) -> list[str]:
        return self._dirs[path] if path in self._dirs else await self.inner.dir_state(path)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root",
                         expect_sha256: str | None = None) -> bool:
        """Record the write :meth:`Target.write_file` would make; True when it would change the file."""
        wanted = FileState(mode, owner, hashlib.sha256(data).hexdigest())
        if await self.file_state(path) == wanted:
            return False
        self._written[path] = (data, wanted)
        self._plan(messages.DRY_RUN_WRITE.format(path=path, size=len(data), mode=mode, owner=owner))
        return True

    async def ensure_dir(self, path: str, *, mode: int = 0o755, owner: str = "root:root") -> bool:
        """Record the directory :meth:`Target.ensure_dir` would make or fix; True when it would change."""
        if await self.dir_state(path) == [f"{mode:o}", owner]:
            return False
        self._dirs[path] = [f"{mode:o}", owner]
        self._plan(messages.DRY_RUN_DIR.format(path=path, mode=mode, owner=owner))
        return True

    async def close(self) -> None:
        await self.inner.close()


# --- command line ------------------------------------------------------------------------------------
#: The ``--host`` value that means this machine (for commands whose host option is required).
LOCAL = "local"


def add_ssh_options(parser: argparse.ArgumentParser) -> None:
    """The SSH options every ``convocate-host`` command takes (``--user --port --identity --known-hosts``)."""
    group = parser.add_argument_group("SSH")
    group.add_argument("--user", default=getpass.getuser(),
                       help="login user on remote hosts: root or one with NOPASSWD sudo [%(default)s]")
    group.add_argument("--port", type=int, default=22, help="SSH port of remote hosts [%(default)s]")
    group.add_argument("--identity", type=Path, help="private key to log in with [your SSH keys and agent]")
    group.add_argument("--known-hosts", type=Path, help="known_hosts file [~/.ssh/known_hosts]")


async def open_target(args: argparse.Namespace, host: str | None, *, local_address: str | None = None) -> Target:
    """This machine for no host (or ``local``), else an SSH login to ``host`` with the options of :func:`add_ssh_options`.

    With ``args.dry_run`` the target is wrapped in a :class:`DryRunTarget`.

    Raises:
        SudoRequired: sudo needs a password (here or there).
        HostKeyMismatch: the host key is not the known one.
        Unreachable: the host cannot be reached or refused the login.
    """
    target: Target
    if not host or host == LOCAL:
        local = LocalTarget(local_address)
        await local.check_sudo()
        target = local
    else:
        target = await SSHTarget.connect(host, user=args.user, port=args.port, identity=args.identity,
                                         known_hosts=args.known_hosts)
    return DryRunTarget(target) if getattr(args, "dry_run", False) else target
