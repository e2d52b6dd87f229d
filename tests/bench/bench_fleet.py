"""Fleet benchmark (issue 18): how long placement takes to decide at 20 agents.

Figure: ``placement decision, 20 agents`` (p50 and p99 of 30): asking every agent for its
``capacity`` over held SSH connections and ranking them
(:func:`convocate.fleet.ranking`), what ``convocate new`` without ``--agent`` waits for before its
``create``. Baseline: ``Cluster.list()`` of the same agents over the same connections, one round trip
to each, what ``convocate ls`` waits for. A second figure is the ranking alone (pure, no I/O).
The agents are tests/fake_agents.py's stand-ins (real SSH, canned answers, 50 sessions each).

Run: ``.venv/bin/python -m tests.bench.bench_fleet``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from convocate.cluster import Cluster
from convocate.common.paths import Paths
from convocate.fleet import ranking
from convocate.placement import AgentLoad, rank
from tests.bench.bench_tui import AGENTS, serve_fake_cluster
from tests.bench.common import Figure, percentile

RUNS = 30


async def _measure(root: Path) -> tuple[list[float], list[float], list[AgentLoad]]:
    cluster = Cluster(Paths(root))
    try:
        await cluster.list()  # connect to every agent before the clock starts
        decide, listing = [], []
        for _ in range(RUNS):
            started = time.perf_counter()
            await ranking(cluster.clients.values(), 1.0, 1024)
            decide.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await cluster.list()
            listing.append((time.perf_counter() - started) * 1000)
        loads = [AgentLoad.from_wire(c.agent_id, await c.call("capacity")) for c in cluster.clients.values()]
        return decide, listing, loads
    finally:
        await cluster.close()


def run(image: str | None = None) -> list[Figure]:
    """The fleet figures with their baselines (for tests/bench/run.py)."""
    root = Path(tempfile.mkdtemp(prefix="convocate-bench-fleet-"))
    loop, _fakes = serve_fake_cluster(root)
    try:
        decide, listing, loads = asyncio.run(_measure(root))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        shutil.rmtree(root, ignore_errors=True)
    pure = []
    for _ in range(200):
        started = time.perf_counter()
        rank(loads, 1.0, 1024)
        pure.append((time.perf_counter() - started) * 1000)
    label = f"{AGENTS} agents"
    return [Figure(f"placement decision, {label} p50", "ms", percentile(decide, 0.5), percentile(listing, 0.5),
                   f"Cluster.list() of the same {AGENTS} agents"),
            Figure(f"placement decision, {label} p99", "ms", percentile(decide, 0.99), percentile(listing, 0.99),
                   f"Cluster.list() of the same {AGENTS} agents"),
            Figure(f"placement ranking alone, {label} p50", "ms", percentile(pure, 0.5))]


if __name__ == "__main__":
    from tests.bench.run import table
    print(table(run()))
    sys.exit(0)
