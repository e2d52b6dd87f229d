"""Reads under load (issue 17): ``get``/``list``/``ping`` while 20 clients run lifecycle ops, and create without start.

Figures, each beside a baseline of the same run:

- read p50/p99 (``get``, ``list``, ``ping`` on channels of their own) while 20 clients create (a third
  started), delete, clone, kill and restart for :data:`DURATION_S`, beside ``ping`` on the same agent
  with nothing else running; and ``get``, ``list`` alone beside the ``ping`` requests of the same load
  (what reading the sessions adds, with the machine's and SSH's share taken out); and the same
  reads in turn on one held channel of a client in a process of its own, as the TUI and the CLI read,
  beside a held channel's ``ping`` from such a process with nothing else running: two such clients at
  once, one at the default CPU weight (sharing the CPUs with the load, as a CLI on the agent host would)
  and one with a cgroup of the agent's weight (as the operator's TUI on the shell host, whose CPUs the
  agent host's load does not touch);
- the agent's event loop thread during that load: its time on a CPU and its time runnable but waiting
  for one (the kernel's sched-stats), per second of load;
- lifecycle ops per second under that load, beside a direct docker-SDK loop of the same Docker work
  (create + start + stop + remove of a stand-in container, as many as the started creates and
  restarts made), run alone: what dockerd itself takes;
- ``create`` without start (mean of :data:`CREATES`, one channel each), beside its floor: the rpc
  ``ping`` on the same connection plus the durable writes a create cannot skip (one record written
  atomically and fsynced, and the fsync of the two directories its renames land in), timed alone.

The agent runs in a CPU cgroup of its own with the ``CPUWeight=`` of its packaged unit
(:func:`~tests.bench.common.cpu_weighted`), as systemd runs it on an agent host.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import docker

from convocate.common.fsutil import atomic_write, fsync_dir
from tests.bench.common import (
    Figure,
    connect,
    cpu_weighted,
    held_round_trips,
    join_cgroup,
    percentile,
    scratch_cluster,
    thread_schedstat,
    unit_cpu_weight,
)
from tests.conftest import rpc, rpc_ok

CLIENTS = 20
DURATION_S = 15.0
CREATES = 100
READ_OPS = ("get", "list", "ping")


async def _one(conn, op: str, params: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = await rpc(conn, op, params)
    return (time.perf_counter() - started) * 1000, response


async def _load(cluster, seeds: list[str]) -> tuple[dict[str, list[float]], dict[str, int], float]:
    """20 clients until the deadline; returns read times (ms) by op, counts (``requests`` answered, ``life``:
    lifecycle ops that succeeded, ``starts``: containers they started) and the seconds it took."""
    known = list(seeds)
    reads: dict[str, list[float]] = {op: [] for op in READ_OPS}
    done = {"requests": 0, "life": 0, "starts": 0}
    deadline = time.monotonic() + DURATION_S

    async def client(n: int) -> None:
        rng = random.Random(n)
        async with connect(cluster) as conn:
            k = 0
            while time.monotonic() < deadline:
                k += 1
                op = rng.choices(["get", "list", "ping", "create", "clone", "delete", "kill", "restart"],
                                 [14, 12, 4, 14, 8, 12, 12, 12])[0]
                sid = rng.choice(known) if known else ""
                params: dict = {}
                if op == "get" or op in ("delete", "kill", "restart"):
                    params = {"id": sid}
                elif op == "create":
                    params = {"name": f"load {n}-{k}", "start": rng.random() < 0.3}
                elif op == "clone":
                    params = {"source_id": sid, "name": f"clone {n}-{k}"}
                if "id" in params and not sid:
                    continue
                ms, response = await _one(conn, op, params)
                done["requests"] += 1
                if op in READ_OPS:
                    reads[op].append(ms)
                    continue
                if response["ok"]:
                    done["life"] += 1
                    if op in ("create", "clone"):
                        known.append(response["result"]["uuid"])
                        done["starts"] += bool(response["result"].get("running"))
                    elif op == "restart":
                        done["starts"] += 1
                    elif op == "delete" and sid in known:
                        known.remove(sid)

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    return reads, done, time.monotonic() - started


async def _held(cluster, requests: list[tuple[str, dict]], *, rounds: int = 0, until: float = 0.0) -> list[float]:
    """:func:`~tests.bench.common.held_round_trips` of ``requests`` on a connection of its own; every answer a success."""
    async with connect(cluster) as conn:
        return await held_round_trips(conn, requests, rounds=rounds, until=until, answer_prefix=b'{"ok":true')


def _held_process(port: int, host_key: str, client_key: str, requests: list[tuple[str, dict]], rounds: int,
                  until: float, cgroup_procs: Path | None) -> list[float]:
    """:func:`_held` in a process of its own, as an operator's TUI is, not on the loop of the 20 load
    clients (``until`` is ``time.monotonic``, CLOCK_MONOTONIC, the same clock in every process); the
    process first joins ``cgroup_procs`` where given."""
    join_cgroup(cgroup_procs, os.getpid())
    cluster = SimpleNamespace(port=port, shell_key_path=Path(client_key),
                              paths=SimpleNamespace(agent_host_key=Path(host_key)))
    return asyncio.run(_held(cluster, requests, rounds=rounds, until=until))


async def _held_elsewhere(pool: ProcessPoolExecutor, cluster, requests: list[tuple[str, dict]], *, rounds: int = 0,
                          until: float = 0.0, cgroup_procs: Path | None = None) -> list[float]:
    return await asyncio.get_running_loop().run_in_executor(
        pool, _held_process, cluster.port, str(cluster.paths.agent_host_key), str(cluster.shell_key_path),
        requests, rounds, until, cgroup_procs)


def _docker_floor(image: str, count: int, root: Path) -> float:
    """Seconds dockerd takes for ``count`` create + start + stop + remove of the image, one after the other."""
    client = docker.from_env()
    started = time.monotonic()
    try:
        for i in range(count):
            c = client.containers.create(image, detach=True, init=True, labels={"convocate.root": str(root)},
                                         name=f"convocate-bench-load-{i}", nano_cpus=int(0.2e9),
                                         mem_limit=128 << 20)
            c.start()
            c.stop(timeout=10)
            c.remove(force=True)
    finally:
        client.close()
    return time.monotonic() - started


def _write_floor(rounds: int = 50) -> float:
    """Mean ms of the durable writes of one create: a record (atomic, fsynced) and two directory fsyncs."""
    with tempfile.TemporaryDirectory(prefix="convocate-bench-load-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        (base / "records").mkdir()
        (base / "homes").mkdir()
        times = []
        for i in range(rounds):
            started = time.perf_counter()
            atomic_write(base / "records" / f"{i}.json", b"{" + b" " * 600 + b"}\n", mode=0o640)
            (base / "homes" / str(i)).mkdir()
            fsync_dir(base / "homes")
            times.append((time.perf_counter() - started) * 1000)
        return statistics.mean(times)


def run(image: str) -> list[Figure]:
    """Measure; returns the figures."""
    figures: list[Figure] = []
    weight = unit_cpu_weight()
    with scratch_cluster(image) as cluster, \
            cpu_weighted(f"{cluster.root.name}-agent", weight) as agent_group, \
            cpu_weighted(f"{cluster.root.name}-reader", weight) as reader_group:
        join_cgroup(agent_group, cluster.process.pid)
        weighted = f"CPUWeight {weight}" if agent_group and reader_group else "the default CPU weight (no cgroup)"

        async def measure() -> None:
            async with connect(cluster) as conn:
                await rpc_ok(conn, "settings-set", {"default_cpus": 0.2, "default_memory_mb": 128})
                ping_alone = [(await _one(conn, "ping", {}))[0] for _ in range(200)]
                creates = []
                for i in range(CREATES):
                    ms, response = await _one(conn, "create", {"name": f"plain {i}"})
                    assert response["ok"], response
                    creates.append(ms)
                ping_after = [(await _one(conn, "ping", {}))[0] for _ in range(100)]
                seeds = [s["uuid"] for s in await rpc_ok(conn, "list")][:20]
                watched = (await rpc_ok(conn, "create", {"name": "watched"}))["uuid"]  # no load client knows it
            pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
            held_alone = await _held_elsewhere(pool, cluster, [("ping", {})], rounds=200)
            figures.append(Figure("create without start, mean", "ms", statistics.mean(creates),
                                  statistics.mean(ping_after), "rpc ping on the same connection"))
            figures.append(Figure("create without start, mean", "ms", statistics.mean(creates),
                                  statistics.mean(ping_after) + _write_floor(),
                                  "rpc ping + record write/fsync + 2 dir fsyncs"))
            reading = [("get", {"id": watched}), ("list", {}), ("ping", {})]
            until = time.monotonic() + DURATION_S
            held_reads = asyncio.gather(_held_elsewhere(pool, cluster, reading, until=until),
                                        _held_elsewhere(pool, cluster, reading, until=until, cgroup_procs=reader_group))
            loop_before = thread_schedstat(cluster.process.pid)
            reads, done, seconds = await _load(cluster, seeds)
            life, starts = done["life"], done["starts"]
            loop_after = thread_schedstat(cluster.process.pid)
            held, held_weighted = await held_reads
            pool.shutdown()
            every_read = [ms for op in READ_OPS for ms in reads[op]]
            for q in (0.5, 0.99):
                figures.append(Figure(f"read p{int(q * 100)} under 20 clients' lifecycle ops", "ms",
                                      percentile(every_read, q), percentile(ping_alone, q),
                                      "rpc ping, nothing else running"))
            for op in ("get", "list"):  # what reading the state adds to a request under the same load
                for q in (0.5, 0.99):
                    figures.append(Figure(f"{op} p{int(q * 100)} under load", "ms", percentile(reads[op], q),
                                          percentile(reads["ping"], q), "rpc ping under the same load"))
            for where, times in (("reader at the default CPU weight", held),
                                 (f"reader at {weighted} (as on the shell host)", held_weighted)):
                for q in (0.5, 0.99):
                    figures.append(Figure(f"read p{int(q * 100)} on a held channel under load, {where}", "ms",
                                          percentile(times, q), percentile(held_alone, q),
                                          "ping on a held channel, nothing else running"))
            for i, what in enumerate(("on a CPU", "runnable, waiting for a CPU")):
                figures.append(Figure(f"agent loop thread under load ({weighted}): {what}", "ms/s",
                                      (loop_after[i] - loop_before[i]) / seconds))
            figures.append(Figure("agent loop thread's CPU per request under load", "ms",
                                  (loop_after[0] - loop_before[0]) / done["requests"], None,
                                  f"{done['requests'] / seconds:.0f} requests/s from the 20 clients"))
            figures.append(Figure("lifecycle ops/s under load", "ops/s", life / seconds, None, "", False))
            floor = await asyncio.to_thread(_docker_floor, image, max(1, starts), cluster.root)
            figures.append(Figure("lifecycle: seconds of load run", "s", seconds, floor,
                                  f"dockerd alone: {max(1, starts)} create+start+stop+remove via the SDK"))

        asyncio.run(measure())
    return figures
