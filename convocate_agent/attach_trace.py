"""An opt-in per-hop time trace of the attach relay, for the keystroke benchmark.

When the agent's environment sets :data:`TRACE_ENV` to a directory, every attach channel records
the time of each hop a chunk takes through the relay and writes them, when the channel ends, to
``<dir>/<session uuid>-<channel start ns>.trace``: one line ``HOP NS BYTES`` per chunk, ``NS`` on
``CLOCK_MONOTONIC`` (``time.monotonic_ns``), which every process on the host shares, so the
benchmark can line the agent's hops up with its own send and receive times. The hops:

- ``ssh_recv``: the operator's bytes handed to the relay by the SSH channel;
- ``exec_write``: the same bytes handed to the Docker exec socket (the kernel has them);
- ``exec_read``: the session's bytes read from the Docker exec socket;
- ``ssh_send``: the same bytes handed to the SSH channel (encrypted and written to the transport).

Off (the variable unset, as in every installed agent), the relay holds ``None`` instead of a
trace and pays one ``is not None`` test per chunk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from convocate.common.fsutil import atomic_write

#: Environment variable naming the directory the agent writes attach traces to (benchmarks only).
TRACE_ENV = "CONVOCATE_ATTACH_TRACE"
#: The hops recorded, in the order a keystroke and its echo pass them.
HOPS = ("ssh_recv", "exec_write", "exec_read", "ssh_send")
#: Most hops kept per channel (a trace is for a benchmark's hundred keystrokes, not a session's day).
MAX_MARKS = 100_000


class HopTrace:
    """The hop times of one attach channel, kept in memory until :meth:`save`.

    Args:
        directory: Where :meth:`save` writes the trace file.
        session_id: The session's UUID (names the file).
    """

    def __init__(self, directory: Path, session_id: str) -> None:
        self.directory = directory
        self.session_id = session_id
        self.started_ns = time.monotonic_ns()
        self.marks: list[tuple[str, int, int]] = []

    @classmethod
    def from_env(cls, session_id: str) -> HopTrace | None:
        """A trace when :data:`TRACE_ENV` names a directory, else ``None`` (tracing off)."""
        directory = os.environ.get(TRACE_ENV)
        return cls(Path(directory), session_id) if directory else None

    def mark(self, hop: str, nbytes: int) -> None:
        """Record that ``nbytes`` passed ``hop`` (one of :data:`HOPS`) now."""
        if len(self.marks) < MAX_MARKS:
            self.marks.append((hop, time.monotonic_ns(), nbytes))

    def save(self) -> Path:
        """Write the trace file (atomically, 0600) and return its path.

        Raises:
            OSError: the directory is missing or not writable.
        """
        path = self.directory / f"{self.session_id}-{self.started_ns}.trace"
        atomic_write(path, "".join(f"{hop} {ns} {n}\n" for hop, ns, n in self.marks).encode(), mode=0o600)
        return path


def read_trace(path: Path) -> list[tuple[str, int, int]]:
    """Parse a trace file of :meth:`HopTrace.save` into ``(hop, ns, bytes)`` tuples, in file order.

    Raises:
        OSError: the file cannot be read.
        ValueError: a line is not ``HOP NS BYTES``.
    """
    marks = []
    for line in path.read_text().splitlines():
        hop, ns, n = line.split()
        marks.append((hop, int(ns), int(n)))
    return marks
