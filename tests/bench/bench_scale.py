"""Scale benchmark (issue 17 item 5): N sessions on one agent, N operators, N RPC channels.

One real agent (``convocate-agent serve``, a subprocess) runs N stand-in sessions of the smallest
limits (``cpus`` 0.01, Docker's floor, and ``memory_mb`` 64); then:

- agent RSS (``/proc/PID/status`` VmRSS) and PSS (``/proc/PID/smaps_rollup``) with 0 and N sessions,
  recording on and off; baseline: a Python process that imports asyncssh and docker and does
  nothing (the footprint benchmark's);
- agent idle CPU, % of one core over ``IDLE_S`` seconds (``/proc/PID/stat`` utime + stime), with N
  sessions recording on and off; baseline: the same agent with 0 sessions; and dockerd + containerd
  over the same windows (what the recorders' N exec streams cost there), recording on against off;
- ``list`` p50 at N sessions, a channel per call; baseline: ``ping`` the same way;
- N concurrent ``ping`` channels on ONE SSH connection, all open at once: time until every answer
  is in, failures (must be 0); baseline: one ping;
- N concurrent attach channels on ONE connection (the TUI's case: one connection per agent), one
  per session: time until every one has its first screen byte, then until every one has the
  echo of a key; failures (must be 0); baseline: one attach alone;
- then raises the count on one connection (RPC channels: 2N, 3N ... up to ``RPC_CEILING``; attach
  channels, several per session: up to ``ATTACH_CEILING``) until something fails, and prints
  where and the error (stderr, and the figure "... most served").

Recording off is measured after an agent restart with the setting off (the sessions keep running:
the recorders are the only difference). Sizes: ``CONVOCATE_BENCH_SCALE_N`` (default 200),
``CONVOCATE_BENCH_SCALE_IDLE_S`` (30), ``CONVOCATE_BENCH_SCALE_RPC_CEILING`` (6 N),
``CONVOCATE_BENCH_SCALE_ATTACH_CEILING`` (3 N). It takes ~10 min at 200 on the build machine (most
of it dockerd creating and removing the containers); ``CONVOCATE_BENCH_SCALE_N=20
CONVOCATE_BENCH_SCALE_IDLE_S=5`` is a ~1.5 min run.

Admission keeps the sessions' reservations within 90% of the host's CPUs: 200 x 0.01 = 2 cores do not
fit in a 2-core host's 1.8, so the agent is started with ``--host-cpus`` large enough for N (the
sessions idle; the cgroup cap is then above the real cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common.framing import encode_line
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from tests.bench.bench_footprint import _baseline_rss, rss_mib
from tests.bench.bench_recording import _dockerd_pid, _proc_cpu_s
from tests.bench.common import Figure, connect, median, scratch_cluster
from tests.conftest import rpc_ok

CPUS = 0.05
MEMORY_MB = 64
CREATE_CONCURRENCY = 10
LIST_ROUNDS = 30
PING = encode_line({"op": "ping", "params": {}})
KEY = b"Z"
#: What the base: Python importing asyncssh + docker.
BASE_NAME = "python importing asyncssh + docker, idle"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss")


def _pid_of(comm: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    return int(entry.name)
            except OSError:
                continue
    return None


def idle_cpu(pid: int, seconds: float) -> tuple[float, float]:
    """% of one core the agent and dockerd + containerd used over ``seconds`` of nothing asked."""
    docker_pids = [p for p in (_dockerd_pid(), _pid_of("containerd")) if p]
    a0, d0, t0 = _proc_cpu_s(pid), sum(_proc_cpu_s(p) for p in docker_pids), time.monotonic()
    time.sleep(seconds)
    a1, d1, t1 = _proc_cpu_s(pid), sum(_proc_cpu_s(p) for p in docker_pids), time.monotonic()
    return (a1 - a0) * 100 / (t1 - t0), (d1 - d0) * 100 / (t1 - t0)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class _Gate:
    """Holds every channel open until all ``count`` are open (or failed to open): N at once, not N in turn."""

    def __init__(self, count: int) -> None:
        self.count, self.arrived = count, 0
        self.event = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.count:
            self.event.set()


async def _ping_on(conn: asyncssh.SSHClientConnection, gate: _Gate) -> str | None:
    """One ping on its own channel; None when answered, else what went wrong."""
    try:
        process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    except (asyncssh.Error, OSError) as e:
        gate.arrive()
        return f"open: {type(e).__name__}: {e}"
    gate.arrive()
    try:
        await gate.event.wait()
        process.stdin.write(PING)
        process.stdin.write_eof()
        out = await asyncio.wait_for(process.stdout.read(), 120)
        return None if json.loads(out.splitlines()[0]).get("ok") else f"answer: {out[:200]!r}"
    except (asyncssh.Error, OSError, ValueError, IndexError, TimeoutError) as e:
        return f"ping: {type(e).__name__}: {e}"
    finally:
        process.close()


async def concurrent_pings(conn: asyncssh.SSHClientConnection, count: int) -> tuple[float, list[str]]:
    """``count`` RPC channels opened at once on ``conn``, all held until every one is open, then pinged.

    Returns:
        Seconds from the first open to the last answer, and the failures.
    """
    started = time.perf_counter()
    gate = _Gate(count)
    results = await asyncio.gather(*(_ping_on(conn, gate) for _ in range(count)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)  # the agent's side of the closed channels goes
    return elapsed, [r for r in results if r is not None]


class _Attach:
    """One attach channel: first screen byte, then a key and its echo."""

    def __init__(self, conn: asyncssh.SSHClientConnection, sid: str) -> None:
        self.conn, self.sid = conn, sid
        self.process: Any = None
        self.first: float | None = None
        self.echo: float | None = None
        self.error: str | None = None

    async def open(self, started: float) -> None:
        try:
            self.process = await self.conn.create_process(subsystem=ATTACH_SUBSYSTEM, encoding=None)
            self.process.stdin.write(encode_line({"id": self.sid, "cols": 80, "rows": 24, "read_only": False,
                                                  "term": "xterm-256color"}))
            first = await asyncio.wait_for(self.process.stdout.read(1 << 20), 120)
            if not first:
                raise RuntimeError("the channel ended before any screen byte")
            if first.startswith(b'{"ok": false') or first.startswith(b'{"ok":false'):
                raise RuntimeError(first[:200].decode(errors="replace"))
            self.first = time.perf_counter() - started
            while True:  # the rest of the first screen
                try:
                    if not await asyncio.wait_for(self.process.stdout.read(1 << 20), 0.3):
                        raise RuntimeError("the channel ended after the first screen")
                except TimeoutError:
                    break
        except (asyncssh.Error, OSError, RuntimeError, TimeoutError) as e:
            self.error = f"{type(e).__name__}: {e}"

    async def key(self, started: float) -> None:
        if self.error is not None:
            return
        try:
            self.process.stdin.write(KEY)
            seen = b""
            while KEY not in seen:
                chunk = await asyncio.wait_for(self.process.stdout.read(1 << 20), 120)
                if not chunk:
                    raise RuntimeError("the channel ended before the echo")
                seen += chunk
            self.echo = time.perf_counter() - started
            self.process.stdin.write(b"\x7f")
        except (asyncssh.Error, OSError, RuntimeError, TimeoutError) as e:
            self.error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.process is not None:
            self.process.close()


async def wait_attaches_ended(log_path: Path, timeout: float = 600.0) -> float:
    """Wait until the agent's audit trail has an ``attach_end`` for every ``attach``; returns the seconds waited.

    Each ended attach's tmux client is detached through ``docker exec`` in its container, ~0.5 s
    each in a container of 0.05 CPUs: a burst of closed attaches takes the agent a while, and an
    agent stopped before then leaves its successor to detach the rest before it listens.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        text = log_path.read_text(errors="replace")
        if text.count('"op":"attach_end"') >= text.count('"op":"attach"'):
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def concurrent_attaches(conn: asyncssh.SSHClientConnection, sids: list[str], log_path: Path | None = None,
                              pid: int | None = None) -> tuple[float, float, list[str]]:
    """One attach channel per entry of ``sids``, all at once on ``conn``.

    Returns:
        Seconds until every attach had its first screen byte, until every one had its key's echo
        (both from the first open), and the failures.
    """
    attaches = [_Attach(conn, sid) for sid in sids]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(a.open(started) for a in attaches))
        first = max((a.first or 0.0) for a in attaches)
        if pid is not None:
            print(f"bench scale: {len(attaches)} attaches open: agent fds {_fds(pid)}, threads {_threads(pid)}, "
                  f"RSS {rss_mib(pid):.1f} MiB", file=sys.stderr, flush=True)
        keyed = time.perf_counter()
        await asyncio.gather(*(a.key(keyed) for a in attaches))
        echo = max((a.echo or 0.0) for a in attaches)
        return first, echo, [f"{a.sid[:8]}: {a.error}" for a in attaches if a.error]
    finally:
        for a in attaches:
            a.close()
        if log_path is not None:
            waited = await wait_attaches_ended(log_path)
            print(f"bench scale: the agent ended {len(attaches)} attaches in {waited:.1f} s after they closed",
                  file=sys.stderr, flush=True)


def run(image: str) -> list[Figure]:
    n = _env_int("CONVOCATE_BENCH_SCALE_N", 200)
    idle_s = float(_env_int("CONVOCATE_BENCH_SCALE_IDLE_S", 30))
    rpc_ceiling = _env_int("CONVOCATE_BENCH_SCALE_RPC_CEILING", 6 * n)  # 1200 at 200: past the cap
    attach_ceiling = _env_int("CONVOCATE_BENCH_SCALE_ATTACH_CEILING", 3 * n)
    host_cpus = max(float(len(os.sched_getaffinity(0))), round(n * CPUS / 0.9 + 0.05, 2))
    figures: list[Figure] = []
    limits: list[str] = []

    def say(text: str) -> None:
        print(f"bench scale: {text}", file=sys.stderr, flush=True)

    baseline = _baseline_rss()
    with scratch_cluster(image, agent_args=["--host-cpus", str(host_cpus)]) as cluster:
        assert cluster.process is not None
        time.sleep(2.0)
        pid = cluster.process.pid
        rss0, pss0 = rss_mib(pid), pss_mib(pid)
        cpu0, docker0 = idle_cpu(pid, idle_s)
        say(f"0 sessions: RSS {rss0:.1f} MiB, PSS {pss0:.1f} MiB, idle CPU {cpu0:.2f}%, fds {_fds(pid)}, "
            f"threads {_threads(pid)}")

        async def create() -> tuple[list[str], float]:
            sids: list[str] = []
            started = time.perf_counter()
            async with connect(cluster) as ssh:
                for i in range(0, n, CREATE_CONCURRENCY):
                    made = await asyncio.gather(*(rpc_ok(ssh, "create", {
                        "name": f"scale-{i + j}", "cpus": CPUS, "memory_mb": MEMORY_MB, "start": True})
                        for j in range(min(CREATE_CONCURRENCY, n - i))))
                    sids += [m["uuid"] for m in made]
            return sids, time.perf_counter() - started

        sids, created_s = asyncio.run(create())
        say(f"{n} sessions created and started in {created_s:.0f} s")
        figures.append(Figure(f"scale: create+start {n} sessions ({CREATE_CONCURRENCY} at a time)", "s",
                              created_s))
        time.sleep(10.0)  # the recorders attach their control clients
        rss_on, pss_on = rss_mib(pid), pss_mib(pid)
        cpu_on, docker_on = idle_cpu(pid, idle_s)
        say(f"{n} sessions, recording on: RSS {rss_on:.1f} MiB, PSS {pss_on:.1f} MiB, idle CPU {cpu_on:.2f}%, "
            f"dockerd+containerd {docker_on:.2f}%, fds {_fds(pid)}, threads {_threads(pid)}")

        async def served() -> None:
            async with connect(cluster) as ssh:
                times = []
                for _ in range(LIST_ROUNDS):
                    t = time.perf_counter()
                    listed = await rpc_ok(ssh, "list")
                    times.append((time.perf_counter() - t) * 1000)
                assert len(listed) >= n, len(listed)
                pings = []
                for _ in range(LIST_ROUNDS):
                    t = time.perf_counter()
                    await rpc_ok(ssh, "ping")
                    pings.append((time.perf_counter() - t) * 1000)
                figures.append(Figure(f"scale: rpc list of {n} running p50", "ms", median(times), median(pings),
                                      "rpc ping p50, same connection"))
                one_ping = median(pings)
                elapsed, failed = await concurrent_pings(ssh, n)
                say(f"{n} concurrent RPC channels on one connection: {elapsed * 1000:.0f} ms, "
                    f"{len(failed)} failed {failed[:3]}")
                figures.append(Figure(f"scale: {n} concurrent rpc channels on one connection, all answered", "ms",
                                      elapsed * 1000, one_ping, "one rpc ping"))
                figures.append(Figure(f"scale: {n} concurrent rpc channels, failures", "channels", len(failed)))
                one_first, one_echo, one_failed = await concurrent_attaches(ssh, sids[:1], cluster.log_path, pid)
                first, echo, failed = await concurrent_attaches(ssh, sids, cluster.log_path, pid)
                say(f"{n} concurrent attaches on one connection: first bytes {first * 1000:.0f} ms, echoes "
                    f"{echo * 1000:.0f} ms, {len(failed)} failed {failed[:3]}")
                figures.append(Figure(f"scale: {n} concurrent attaches on one connection, all first screen bytes",
                                      "ms", first * 1000, one_first * 1000, "one attach alone"))
                figures.append(Figure(f"scale: {n} concurrent attaches on one connection, all key echoes", "ms",
                                      echo * 1000, one_echo * 1000, "one attach alone"))
                figures.append(Figure(f"scale: {n} concurrent attaches, failures", "channels", len(failed)))

                most = 0
                for count in range(n, rpc_ceiling + 1, n):
                    elapsed, failed = await concurrent_pings(ssh, count)
                    say(f"ramp: {count} RPC channels on one connection: {elapsed * 1000:.0f} ms, {len(failed)} failed")
                    if failed:
                        limits.append(f"{count} RPC channels on one connection: {len(failed)} failed, first: "
                                      f"{failed[0]}")
                        break
                    most = count
                figures.append(Figure(f"scale: rpc channels at once on one connection, most served (steps of {n}, "
                                      f"ceiling {rpc_ceiling})", "channels", most))
                most = 0
                for per in range(2, max(2, attach_ceiling // n) + 1):
                    count = per * n
                    first, echo, failed = await concurrent_attaches(ssh, sids * per, cluster.log_path, pid)
                    say(f"ramp: {count} attaches on one connection ({per} per session): first bytes "
                        f"{first * 1000:.0f} ms, echoes {echo * 1000:.0f} ms, {len(failed)} failed")
                    if failed:
                        limits.append(f"{count} attaches on one connection: {len(failed)} failed, first: {failed[0]}")
                        break
                    most = count
                figures.append(Figure(f"scale: attaches at once on one connection, most served (steps of {n}, "
                                      f"ceiling {attach_ceiling})", "channels", most or n))

        asyncio.run(served())
        say(f"after the ramps: RSS {rss_mib(pid):.1f} MiB, fds {_fds(pid)}, threads {_threads(pid)}")

        async def recording_off() -> None:
            async with connect(cluster) as ssh:
                await rpc_ok(ssh, "settings-set", {"recording": False})

        asyncio.run(recording_off())
        cluster.stop()
        started = time.perf_counter()
        cluster.start(timeout=600, same_port=True)
        restart_s = time.perf_counter() - started
        say(f"agent restart with {n} sessions running: listening after {restart_s:.1f} s")
        figures.append(Figure(f"scale: agent restart with {n} sessions running, until listening", "s", restart_s))
        assert cluster.process is not None
        pid = cluster.process.pid
        time.sleep(10.0)
        rss_off, pss_off = rss_mib(pid), pss_mib(pid)
        cpu_off, docker_off = idle_cpu(pid, idle_s)
        say(f"{n} sessions, recording off (agent restarted): RSS {rss_off:.1f} MiB, PSS {pss_off:.1f} MiB, "
            f"idle CPU {cpu_off:.2f}%, dockerd+containerd {docker_off:.2f}%, fds {_fds(pid)}, "
            f"threads {_threads(pid)}")
        say("tearing down (dockerd removes the containers)")
    figures = [
        Figure("scale: agent RSS, 0 sessions", "MiB", rss0, baseline, BASE_NAME),
        Figure(f"scale: agent RSS, {n} sessions, recording on", "MiB", rss_on, baseline, BASE_NAME),
        Figure(f"scale: agent RSS, {n} sessions, recording off", "MiB", rss_off, baseline, BASE_NAME),
        Figure(f"scale: agent PSS, {n} sessions, recording on", "MiB", pss_on, pss0, "agent PSS, 0 sessions"),
        Figure(f"scale: agent idle CPU, {n} sessions, recording on ({idle_s:g} s)", "% core", cpu_on, cpu0,
               "the same agent, 0 sessions"),
        Figure(f"scale: agent idle CPU, {n} sessions, recording off ({idle_s:g} s)", "% core", cpu_off, cpu0,
               "the same agent, 0 sessions"),
        Figure(f"scale: dockerd+containerd idle CPU, {n} sessions, recording on", "% core", docker_on, docker_off,
               "the same, recording off"),
        *figures,
    ]
    for line in limits:
        say(f"limit: {line}")
    if not limits:
        say("limit: nothing failed up to the ceilings")
    return figures
