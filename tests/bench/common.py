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
from tests.harness import LocalCluster, remove_containers


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
