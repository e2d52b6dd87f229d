"""Recording benchmarks (issue 19): what recording a session's terminal costs.

Two sessions of the same size on one agent, one started with ``recording`` on and one with it off (the
setting applies at a session's start), show the same large output in a tmux window of their own while
nobody is attached, alternated three times. Per MB of output shown:

- CPU: the agent's own (``/proc/<pid>/stat`` utime + stime), the session container's (Docker's stats of its
  cgroup: tmux drawing for the recorder's control-mode client as well as its own), and
  dockerd's plus the container's shim (the exec stream's copies); the baseline is the same output in the
  session recorded off, so the ratio is what recording adds;
- bytes written to the recording per byte of output (no baseline: asciicast's JSON framing and the
  terminal's escape sequences are the overhead);
- the time tmux takes to show the output, recorded against unrecorded (does the recorder slow the pane?);
- relay throughput with an operator attached, recorded against unrecorded (bench_sessions's measure).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid as uuidlib
from pathlib import Path

import docker

from tests.bench.bench_sessions import UID, _wait_no_clients, _wait_tmux, relay_throughput
from tests.bench.common import Figure, connect, median, scratch_cluster
from tests.conftest import rpc_ok

CPUS = 0.8
MEMORY_MB = 1024
ROUNDS = 3
HOME_ENV = {"HOME": "/home/claude"}
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (proc(5) fields 14 and 15)


def _container_cpu_s(container) -> float:
    """The container's CPU time so far, from Docker's stats (its cgroup's usage; Docker API ``/stats``)."""
    return container.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _dockerd_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd":
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError("no dockerd process")


def _recording_bytes(paths, sid: str) -> int:
    folder = paths.session_recordings_dir(sid)
    return sum(f.stat().st_size for f in folder.glob("*.cast")) if folder.is_dir() else 0


def _show_detached(container, total: int) -> float:
    """Show /tmp/big in a new window with nobody attached; seconds until the pane has printed all of it."""
    marker = uuidlib.uuid4().hex
    started = time.perf_counter()
    window = container.exec_run(["tmux", "new-window", "-d", "-P", "-F", "#{window_id}", "-t", "main",
                                 f"cat /tmp/big; touch /tmp/done-{marker}; sleep 60"],
                                user=UID, environment=HOME_ENV).output.decode().strip()
    deadline = time.monotonic() + 120
    while container.exec_run(["test", "-e", f"/tmp/done-{marker}"], user=UID).exit_code != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the output did not end within 120 s")
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    time.sleep(1.5)  # the recorder's last flush
    container.exec_run(["tmux", "kill-window", "-t", window], user=UID, environment=HOME_ENV)
    return elapsed


def run(image: str, megabytes: int = 10) -> list[Figure]:
    client = docker.from_env()
    figures: list[Figure] = []
    with scratch_cluster(image) as cluster:
        async def sessions() -> dict[bool, str]:
            made = {}
            async with connect(cluster) as ssh:
                for recording in (False, True):
                    await rpc_ok(ssh, "settings-set", {"recording": recording})
                    result = await rpc_ok(ssh, "create", {"name": f"rec-{'on' if recording else 'off'}",
                                                          "cpus": CPUS, "memory_mb": MEMORY_MB, "start": True})
                    made[recording] = result["uuid"]
            return made

        sids = asyncio.run(sessions())
        containers = {rec: client.containers.get(f"convocate-session-{sid}") for rec, sid in sids.items()}
        size = megabytes << 20
        for c in containers.values():
            _wait_tmux(c)
            c.exec_run(["sh", "-c", f"head -c {size} /dev/urandom | base64 -w 100 > /tmp/big"], user=UID)
        total = int(containers[True].exec_run(["stat", "-c", "%s", "/tmp/big"], user=UID).output)
        time.sleep(1.0)
        agent_pid, dockerd = cluster.process.pid, _dockerd_pid()  # type: ignore[union-attr]
        cpu: dict[bool, dict[str, list[float]]] = {rec: {"agent": [], "container": [], "docker": [], "time": [],
                                                         "bytes": []} for rec in sids}
        for _ in range(ROUNDS):  # alternated: drift on a shared machine hits both alike
            for rec, c in containers.items():
                c.reload()
                init = c.attrs["State"]["Pid"]
                shim = _ppid(init)
                before = (_proc_cpu_s(agent_pid), _container_cpu_s(c), _proc_cpu_s(dockerd) + _proc_cpu_s(shim),
                          _recording_bytes(cluster.paths, sids[rec]))
                cpu[rec]["time"].append(_show_detached(c, total))
                after = (_proc_cpu_s(agent_pid), _container_cpu_s(c), _proc_cpu_s(dockerd) + _proc_cpu_s(shim),
                         _recording_bytes(cluster.paths, sids[rec]))
                mb = total / (1 << 20)
                for i, key in enumerate(("agent", "container", "docker")):
                    cpu[rec][key].append((after[i] - before[i]) * 1000 / mb)
                cpu[rec]["bytes"].append((after[3] - before[3]) / total)
        for key, what in (("agent", "agent CPU"), ("container", "session container CPU (tmux and its clients)"),
                          ("docker", "dockerd + shim CPU")):
            figures.append(Figure(f"recording: {what} per MB of output (median)", "ms",
                                  median(cpu[True][key]), median(cpu[False][key]), "the same, recording off"))
        figures.append(Figure("recording: time to show the output, nobody attached (median)", "s",
                              median(cpu[True]["time"]), median(cpu[False]["time"]), "the same, recording off"))
        figures.append(Figure("recording: bytes recorded per byte of output (median)", "B/B",
                              median(cpu[True]["bytes"]), None, None))
        relay: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for rec, c in containers.items():
                relay[rec].append(relay_throughput(cluster, sids[rec], c, total))
                _wait_no_clients(c)
        figures.append(Figure("relay throughput, recording on (median)", "MB/s", median(relay[True]),
                              median(relay[False]), "the same session size, recording off", lower_is_better=False))
    client.close()
    return figures
