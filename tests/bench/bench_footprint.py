"""Footprint benchmarks: the agent's memory, and how fast the zipapps start.

- agent RSS idle, and with 100 sessions listed; baseline: a Python process that imports the
  same libraries (asyncssh, docker) and does nothing (what the interpreter alone costs).
- zipapp start, cold (first run: shiv extracts into an empty SHIV_ROOT) and warm; baseline:
  ``python3 -sE -c pass`` (the interpreter's own start).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench.common import Figure, scratch_cluster
from tests.conftest import connect, rpc_ok
from tests.harness import REPO, python


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _baseline_rss() -> float:
    proc = subprocess.Popen([python(), "-c", "import asyncssh, docker, sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        time.sleep(1.5)
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return (time.perf_counter() - started) * 1000


def zipapp_figures(pyz: Path, runs: int = 5) -> list[Figure]:
    env = dict(os.environ)
    floor = statistics.median(_timed(["/usr/bin/python3", "-sE", "-c", "pass"], env) for _ in range(runs))
    colds, warms = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as root:
            env["SHIV_ROOT"] = root
            colds.append(_timed(["/usr/bin/python3", "-sE", str(pyz), "version"], env))
            warms.append(statistics.median(_timed(["/usr/bin/python3", "-sE", str(pyz), "version"], env)
                                           for _ in range(3)))
    name = pyz.stem
    return [Figure(f"{name} zipapp start, cold (extracts)", "ms", statistics.median(colds), floor,
                   "python3 -sE -c pass"),
            Figure(f"{name} zipapp start, warm", "ms", statistics.median(warms), floor, "python3 -sE -c pass")]


def run(image: str, sessions: int = 100) -> list[Figure]:
    baseline = _baseline_rss()
    with scratch_cluster(image) as cluster:
        assert cluster.process is not None
        time.sleep(1.0)
        idle = rss_mib(cluster.process.pid)

        async def fill() -> None:
            async with connect(cluster) as ssh:
                for i in range(0, sessions, 20):
                    await asyncio.gather(*(rpc_ok(ssh, "create", {"name": f"fp-{i + j}"}) for j in range(20)))
                for _ in range(5):
                    await rpc_ok(ssh, "list")

        asyncio.run(fill())
        loaded = rss_mib(cluster.process.pid)
    figures = [Figure("agent RSS, idle", "MiB", idle, baseline, "python importing asyncssh + docker, idle"),
               Figure(f"agent RSS, {sessions} sessions listed", "MiB", loaded, baseline,
                      "python importing asyncssh + docker, idle")]
    zipapps = REPO / "build" / "zipapps"
    for role in ("convocate-agent", "convocate"):
        pyz = zipapps / f"{role}.pyz"
        if pyz.exists():
            figures += zipapp_figures(pyz)
    return figures
