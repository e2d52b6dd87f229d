"""The host a ``convocate-host`` step acts on: this machine through sudo, or another over SSH.

Every provisioning step is a sequence of commands run as root on a target and of files read or
written there. :class:`LocalTarget` runs them here (``sudo -n`` unless already root);
:class:`~convocate_host.sshtarget.SSHTarget` runs them on ``--host`` over one asyncssh connection made with the operator's
own keys, agent and ``known_hosts`` (OpenSSH's files), as ``--user`` through ``sudo -n``
(sudo(8): ``-n`` fails instead of prompting, so a missing NOPASSWD rule is a clear error, not a
hung deploy). Both offer the same operations, so a step never knows which one it drives.

Files are written atomically (a temporary file in the same directory, synced, then renamed over
the target) and only when their bytes, mode or owner differ, which is what makes every step
idempotent and able to say whether it changed something. The SSH target lives in
:mod:`convocate_host.sshtarget`, the ``--dry-run`` wrapper in :mod:`convocate_host.dryrun`, the
command-line options and :func:`~convocate_host.opentarget.open_target` in :mod:`convocate_host.opentarget`.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from convocate.common import messages
from convocate.common.errors import ConvocateError

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
    #: True for a :class:`~convocate_host.dryrun.DryRunTarget`: commands not marked ``reads`` are recorded, not run.
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
                :class:`~convocate_host.dryrun.DryRunTarget` runs such commands and only records the others. Never guessed
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
