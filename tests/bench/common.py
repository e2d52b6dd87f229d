"""What every benchmark shares: a figure with its baseline, percentiles, and a scratch cluster."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common.framing import encode_line
from convocate.common.protocol import RPC_MAX_PKTSIZE, RPC_SUBSYSTEM
from convocate.common.sshclient import CIPHERS
from tests.conftest import connect as _connect
from tests.harness import REPO, LocalCluster, remove_containers


@dataclass(frozen=True)
class Figure:
    """One measured figure and the baseline it is compared with, measured in the same run.

    Attributes:
        name: What was measured.
        unit: ``ms``, ``MB/s``, ``MiB``, ``events/s`` ...
        value: convocate's figure.
        baseline: The baseline's figure, or None when there is none.
        baseline_name: What the baseline is.
        lower_is_better: Whether smaller values are better (latencies, memory).
    """

    name: str
    unit: str
    value: float
    baseline: float | None = None
    baseline_name: str = ""
    lower_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """value / baseline (how many times the baseline's cost, or its throughput)."""
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def connect(cluster: LocalCluster, key: asyncssh.SSHKey | None = None,
            **options: Any) -> contextlib.AbstractAsyncContextManager[asyncssh.SSHClientConnection]:
    """:func:`tests.conftest.connect` offering the ciphers convocate's own clients offer
    (:data:`convocate.common.sshclient.CIPHERS`, AES-GCM first), so that a benchmark's SSH link negotiates
    what the operators' CLI and TUI and the agents negotiate, not asyncssh's default order
    (chacha20-poly1305 first, about three times the cost per packet here; SSH takes the client's first
    choice the server has, RFC 4253 section 7.1)."""
    return _connect(cluster, key, encryption_algs=list(CIPHERS), **options)


async def connect_loopback(port: int, host_key: asyncssh.SSHKey,
                           client_key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    """An SSH connection to one of the benchmark's own listeners on loopback (a floor, a sink), pinning
    ``host_key`` and offering the ciphers of :func:`connect`."""
    return await asyncssh.connect("127.0.0.1", port, username="claude", client_keys=[client_key],
                                  known_hosts=([host_key.convert_to_public()], [], []), agent_path=None,
                                  config=None, encoding=None, encryption_algs=list(CIPHERS))


@contextlib.contextmanager
def scratch_cluster(image: str, **kwargs) -> Iterator[LocalCluster]:
    """A local cluster under a temporary root, torn down afterwards (containers included).

    The root is removed when the benchmark succeeds, and kept (with the daemons' logs) when it fails.
    """
    root = Path(tempfile.mkdtemp(prefix="convocate-bench-"))
    cluster = LocalCluster(root=root, image=image, **kwargs)
    ok = False
    try:
        cluster.install()
        cluster.start()
        yield cluster
        ok = True
    finally:
        cluster.stop_all()
        remove_containers(root)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"bench: kept {root} (logs: agent.log, status.log)", file=sys.stderr)


async def held_round_trips(conn: asyncssh.SSHClientConnection, requests: list[tuple[str, dict[str, Any]]], *,
                           subsystem: str = RPC_SUBSYSTEM, rounds: int = 0, until: float = 0.0,
                           answer_prefix: bytes = b"{") -> list[float]:
    """Round trips (ms) of ``requests`` (``(op, params)``, in turn) on one held channel, each answered before
    the next is written, as the TUI and the CLI read (``convocate.client.HELD_OPS``).

    Stops after ``rounds``, or at ``until`` (``time.monotonic``). Each answer must be a line starting
    with ``answer_prefix``.
    """
    process = await conn.create_process(subsystem=subsystem, encoding=None, max_pktsize=RPC_MAX_PKTSIZE)
    times: list[float] = []
    try:
        while len(times) < rounds or time.monotonic() < until:
            op, params = requests[len(times) % len(requests)]
            line = encode_line({"op": op, "params": params, "id": len(times)})
            started = time.perf_counter()
            process.stdin.write(line)
            answer = await process.stdout.readline()
            times.append((time.perf_counter() - started) * 1000)
            assert answer.startswith(answer_prefix) and answer.endswith(b"\n"), answer
    finally:
        process.close()
    return times


AGENT_UNIT = REPO / "packaging" / "systemd" / "convocate-agent.service"
CGROUP_FS = Path("/sys/fs/cgroup")


def unit_cpu_weight(unit: Path = AGENT_UNIT) -> int:
    """The ``CPUWeight=`` of a packaged systemd unit (systemd.resource-control(5); 100 when it sets none)."""
    weights = [line.split("=", 1)[1].strip() for line in unit.read_text().splitlines()
               if line.startswith("CPUWeight=")]
    return int(weights[-1]) if weights else 100


@contextlib.contextmanager
def cpu_weighted(name: str, weight: int) -> Iterator[Path | None]:
    """A CPU cgroup of its own with ``weight``, as systemd gives a unit its ``CPUWeight=``.

    Write a PID to the yielded ``cgroup.procs`` to move that process (all its threads) in. cgroup v2:
    ``cpu.weight`` is the weight itself; cgroup v1: ``cpu.shares`` is ``weight * 1024 / 100``, systemd's
    own conversion (its ``cgroup_cpu_weight_to_shares``). The group is removed afterwards; a process still
    in it goes back to the root group first. Yields None, and says so on stderr, where no group can be
    made (not root, no CPU controller): the processes then keep the default weight.
    """
    unified = (CGROUP_FS / "cgroup.controllers").exists()
    parent = CGROUP_FS if unified else CGROUP_FS / "cpu"
    group = parent / f"convocate-bench-{name}"
    try:
        if unified and "cpu" not in (CGROUP_FS / "cgroup.subtree_control").read_text().split():
            (CGROUP_FS / "cgroup.subtree_control").write_text("+cpu")
        group.mkdir()
        if unified:
            (group / "cpu.weight").write_text(str(weight))
        else:
            (group / "cpu.shares").write_text(str(weight * 1024 // 100))
    except OSError as e:
        print(f"bench: no CPU cgroup {group} ({e}); its processes keep the default weight", file=sys.stderr)
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group / "cgroup.procs"
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                (parent / "cgroup.procs").write_text(pid)
        group.rmdir()


def join_cgroup(procs: Path | None, pid: int) -> None:
    """Move process ``pid`` into the group of :func:`cpu_weighted` (nothing when there is none)."""
    if procs is not None:
        procs.write_text(str(pid))


def thread_schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """A thread's ``(ms on a CPU, ms runnable but waiting for one)`` so far, from ``/proc/PID/task/TID/schedstat``
    (the kernel's sched-stats: run time and run-queue delay, in ns). ``tid`` defaults to the main thread."""
    fields = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()
    return int(fields[0]) / 1e6, int(fields[1]) / 1e6
