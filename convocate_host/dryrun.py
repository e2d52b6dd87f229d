"""The ``--dry-run`` target: wraps a real one, runs the commands marked ``reads`` and only records the
others (every write, package install, restart and reboot), so a run says what it would change.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Sequence

from convocate.common import messages
from convocate_host.target import (
    DEFAULT_TIMEOUT_S,
    CommandResult,
    FileState,
    Process,
    Target,
)


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
