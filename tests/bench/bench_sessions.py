"""Session benchmarks: create→running, attach first byte, keystroke echo, relay throughput.

Baselines, measured in the same run on the same image:
- create→running against ``docker run -d`` (docker SDK) of the same image with the same mounts,
  both until ``tmux has-session`` answers (the session can be attached);
- attach against ``docker exec -it <ctr> tmux attach`` run on a local pty, driven the same way
  (first byte of the screen, then one key and its echo);
- relay throughput: a large output shown in a session (a 1-CPU one of its own) through tmux and
  the SSH relay, from the command that shows it until its last line arrives; against the same
  output shown the same way through ``docker exec -it <ctr> tmux attach`` on a local pty (tmux
  without the relay: the ratio is the relay's own cost), and against ``docker exec <ctr> cat`` of
  the same bytes (no tmux, no SSH: what tmux itself costs). Median of 3, the two alternated.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import select
import shutil
import struct
import tempfile
import termios
import time
import uuid as uuidlib
from pathlib import Path

import docker

from tests.bench.common import Figure, median, percentile, scratch_cluster
from tests.conftest import connect, rpc_ok
from tests.harness import python
from tests.test_agent_attach import open_attach

UID = "1337:1337"
#: The throughput session: a whole CPU, and memory for tmux's scrollback of the output.
THROUGHPUT_CPUS = 1.0
THROUGHPUT_MEMORY_MB = 1024
THROUGHPUT_COLS, THROUGHPUT_ROWS = 200, 50
THROUGHPUT_ROUNDS = 3
#: Bytes asked of an attach channel per read: more than asyncssh's 2 MiB channel window, which a
#: reader must empty at once for the window to hold (see convocate.terminal).
SSH_READ_BYTES = 4 << 20


def _wait_tmux(container, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.exec_run(["tmux", "has-session", "-t", "main"], user=UID,
                              environment={"HOME": "/home/claude"}).exit_code == 0:
            return
        time.sleep(0.01)
    raise RuntimeError("tmux did not come up")


def _docker_run_baseline(client: docker.DockerClient, image: str, root, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        home = root / f"baseline-{uuidlib.uuid4().hex[:8]}"
        home.mkdir()
        os.chown(home, 1337, 1337)
        started = time.perf_counter()
        container = client.containers.run(
            image, detach=True, init=True, labels={"convocate.root": str(root)},
            environment={"CLAUDE_UID": "1337", "CLAUDE_GID": "1337"}, nano_cpus=200_000_000,
            mem_limit=256 << 20, mounts=[docker.types.Mount("/home/claude", str(home), type="bind")])
        try:
            _wait_tmux(container)
            times.append((time.perf_counter() - started) * 1000)
        finally:
            container.remove(force=True)
    return times


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in ms (``/proc/<pid>/stat`` fields 14-15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _pty_attach(argv: list[str], key: bytes, echo: bytes, rounds: int, env: dict[str, str] | None = None,
                watch_pid: int | None = None) -> tuple[float, list[float], float, float]:
    """Run ``argv`` on a pty: time to its first output byte, then key→echo round trips.

    Returns:
        ``(first byte ms, echo ms per round, CPU ms the command used during the echoes, CPU ms
        ``watch_pid`` used during them)``.
    """
    pid, fd = pty.fork()
    if pid == 0:
        if env is not None:
            os.execvpe(argv[0], argv, env)
        os.execvp(argv[0], argv)
    try:
        started = time.perf_counter()
        select.select([fd], [], [], 30)
        first = (time.perf_counter() - started) * 1000
        _drain(fd, 0.5)
        echoes = []
        cpu0 = _cpu_ms(pid)
        watched0 = _cpu_ms(watch_pid) if watch_pid else 0.0
        for _ in range(rounds):
            sent = time.perf_counter()
            os.write(fd, key)
            buf = b""
            while echo not in buf:
                r, _, _ = select.select([fd], [], [], 10)
                if not r:
                    raise RuntimeError("no echo")
                buf += os.read(fd, 65536)
            echoes.append((time.perf_counter() - sent) * 1000)
            os.write(fd, b"\x7f")  # erase it again
            _drain(fd, 0.05)
        cpu = _cpu_ms(pid) - cpu0
        watched = (_cpu_ms(watch_pid) - watched0) if watch_pid else 0.0
        return first, echoes, cpu, watched
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def _show_big(container, marker: str) -> str:
    """Open a tmux window (current for every attached client) that prints /tmp/big, then ``marker``.

    Returns:
        The window's ID, for :func:`_close_window`.
    """
    return container.exec_run(["tmux", "new-window", "-P", "-F", "#{window_id}", "-t", "main",
                               f"cat /tmp/big; echo {marker}; sleep 60"],
                              user=UID, environment={"HOME": "/home/claude"}).output.decode().strip()


def _close_window(container, window: str) -> None:
    """Close a window of :func:`_show_big` (its scrollback would pile up in tmux's memory)."""
    container.exec_run(["tmux", "kill-window", "-t", window], user=UID, environment={"HOME": "/home/claude"})


def _terminal_clients(container) -> list[str]:
    """The ttys of the session's tmux clients that are terminals (not the recorder's control-mode client)."""
    out = container.exec_run(["tmux", "list-clients", "-F", "#{client_control_mode} #{client_tty}"], user=UID,
                             environment={"HOME": "/home/claude"}).output.decode()
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("0 ")]


def _detach_terminals(container) -> None:
    for tty in _terminal_clients(container):
        container.exec_run(["tmux", "detach-client", "-t", tty], user=UID, environment={"HOME": "/home/claude"})


def _wait_no_clients(container, timeout: float = 10.0) -> None:
    """Wait until no terminal is attached (an ended attach's client may take a moment to go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _terminal_clients(container):
            return
        time.sleep(0.05)
    raise RuntimeError("a tmux client stayed attached")


async def _quiet(process, quiet: float) -> None:
    """Read an attach channel until it has been silent for ``quiet`` seconds."""
    with contextlib.suppress(TimeoutError):
        while await asyncio.wait_for(process.stdout.read(SSH_READ_BYTES), quiet):
            pass


def _pty_throughput(argv: list[str], container, total: int) -> float:
    """MB/s of :func:`_show_big` seen through ``argv`` (a tmux client) run on a local pty of the bench's size."""
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", THROUGHPUT_ROWS, THROUGHPUT_COLS, 0, 0))
        os.execvp(argv[0], argv)
    try:
        _drain(fd, 0.5)
        marker = uuidlib.uuid4().hex
        started = time.perf_counter()
        window = _show_big(container, marker)
        tail = b""
        while marker.encode() not in tail:
            if not select.select([fd], [], [], 60)[0]:
                raise RuntimeError("no output from docker exec -it within 60 s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError("docker exec -it ended before the output did")
            tail = (tail + chunk)[-200:]
        elapsed = time.perf_counter() - started
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
        # Docker cannot end an exec: its tmux client outlives the killed CLI until detached.
        _detach_terminals(container)
    _close_window(container, window)
    return total / elapsed / (1 << 20)


def _drain(fd: int, quiet: float) -> None:
    while select.select([fd], [], [], quiet)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def relay_throughput(cluster, sid: str, container, total: int) -> float:
    """MB/s of :func:`_show_big` (``total`` bytes) seen through an attach of ``sid`` over the agent's relay."""

    async def measure() -> float:
        async with connect(cluster) as ssh:
            process, _ = await open_attach(ssh, sid, cols=THROUGHPUT_COLS, rows=THROUGHPUT_ROWS)
            await _quiet(process, 0.5)
            marker = uuidlib.uuid4().hex
            started = time.perf_counter()
            window = _show_big(container, marker)
            tail = b""
            while marker.encode() not in tail:  # the pane's last line, after all of the file
                chunk = await asyncio.wait_for(process.stdout.read(SSH_READ_BYTES), 60)
                if not chunk:
                    raise RuntimeError("the attach ended before the output did")
                tail = (tail + chunk)[-200:]
            elapsed = time.perf_counter() - started
            process.close()
        _close_window(container, window)
        return total / elapsed / (1 << 20)

    return asyncio.run(measure())


def run(image: str, runs: int = 5, echo_rounds: int = 100, megabytes: int = 20) -> list[Figure]:
    from convocate_agent.attach_trace import TRACE_ENV

    figures: list[Figure] = []
    client = docker.from_env()
    trace_dir = Path(tempfile.mkdtemp(prefix="convocate-attach-trace-"))
    with scratch_cluster(image, extra_env={TRACE_ENV: str(trace_dir)}) as cluster:
        baseline = _docker_run_baseline(client, image, cluster.root, runs)

        async def sessions() -> tuple[list[float], str]:
            times = []
            sid = ""
            async with connect(cluster) as ssh:
                await rpc_ok(ssh, "settings-set", {"default_cpus": 0.2, "default_memory_mb": 256})
                for i in range(runs):
                    started = time.perf_counter()
                    made = await rpc_ok(ssh, "create", {"name": f"bench-{i}", "start": True})
                    times.append((time.perf_counter() - started) * 1000)
                    if i < runs - 1:
                        await rpc_ok(ssh, "kill", {"id": made["uuid"]})
                    sid = made["uuid"]
            return times, sid

        created, sid = asyncio.run(sessions())
        figures.append(Figure("create -> running (median)", "ms", median(created), median(baseline),
                              "docker run -d, same image and mounts, until tmux answers"))
        container = client.containers.get(f"convocate-session-{sid}")
        _wait_tmux(container)
        time.sleep(1.0)  # let the stand-in draw its prompt

        # --- attach through convocate vs docker exec -it ---------------------------------------
        async def relay_attach() -> float:
            async with connect(cluster) as ssh:
                started = time.perf_counter()
                process, _ = await open_attach(ssh, sid, cols=100, rows=30)
                await process.stdout.read(65536)
                first = (time.perf_counter() - started) * 1000
                process.close()
                return first

        first = asyncio.run(relay_attach())
        _wait_no_clients(container)
        argv = ["/usr/bin/docker", "exec", "-it", "-u", UID, "-e", "HOME=/home/claude", "-e", "TERM=xterm-256color",
                container.id, "tmux", "attach-session", "-t", "main"]
        # The keystroke figures go through `convocate attach` on a local pty, the path operators
        # type through (terminal.py, the client's SSH, the agent's relay), against docker exec -it
        # on a local pty; alternated, half the rounds each time, so that drift hits both alike.
        cluster.register()
        echoes, base_echoes, cpu, agent_cpu, base_cpu, base_first = [], [], 0.0, 0.0, 0.0, 0.0
        for _ in range(2):
            _, e, c, a = _pty_attach([python(), "-m", "convocate", "attach", sid], b"x", b"x", echo_rounds // 2,
                                     env=cluster.env, watch_pid=cluster.process.pid)
            echoes, cpu, agent_cpu = echoes + e, cpu + c, agent_cpu + a
            _wait_no_clients(container)
            f, e, c, _ = _pty_attach(argv, b"x", b"x", echo_rounds // 2)
            base_first = base_first or f
            base_echoes, base_cpu = base_echoes + e, base_cpu + c
            _detach_terminals(container)  # Docker cannot end an exec: its tmux client outlives the CLI
            _wait_no_clients(container)
        figures.append(Figure("attach: first screen byte", "ms", first, base_first, "docker exec -it tmux attach"))
        for q in (0.5, 0.99):
            figures.append(Figure(f"keystroke echo p{int(q * 100)}", "ms", percentile(echoes, q),
                                  percentile(base_echoes, q), "docker exec -it tmux attach (both on a local pty)"))
        n = len(echoes)
        figures.append(Figure("keystroke CPU, convocate attach + agent, per key", "ms", (cpu + agent_cpu) / n,
                              base_cpu / len(base_echoes), "the docker exec -it process, per key"))
        figures.append(Figure("keystroke CPU, agent alone, per key", "ms", agent_cpu / n,
                              base_cpu / len(base_echoes), "the docker exec -it process, per key"))
        if trace_dir is not None:
            traced, legs = traced_echoes(cluster, sid, echo_rounds, trace_dir)
            figures.append(Figure("keystroke echo p50, asyncssh client (traced)", "ms", percentile(traced, 0.5),
                                  percentile(base_echoes, 0.5), "docker exec -it tmux attach"))
            for label, values in legs.items():
                figures.append(Figure(f"keystroke hop: {label} (median)", "ms", median(values)))
            _wait_no_clients(container)

        # --- throughput ------------------------------------------------------------------------------
        # A session of its own with a whole CPU (the ones above have 0.2, at which tmux alone
        # manages ~5 MB/s and would hide the relay's cost) and room for tmux's scrollback.
        async def throughput_session() -> str:
            async with connect(cluster) as ssh:
                made = await rpc_ok(ssh, "create", {"name": "bench-throughput", "cpus": THROUGHPUT_CPUS,
                                                    "memory_mb": THROUGHPUT_MEMORY_MB, "start": True})
                return made["uuid"]

        tsid = asyncio.run(throughput_session())
        container = client.containers.get(f"convocate-session-{tsid}")
        _wait_tmux(container)
        time.sleep(1.0)
        size = megabytes << 20
        container.exec_run(["sh", "-c", f"head -c {size} /dev/urandom | base64 -w 100 > /tmp/big"], user=UID)
        total = int(container.exec_run(["stat", "-c", "%s", "/tmp/big"], user=UID).output)

        argv = ["/usr/bin/docker", "exec", "-it", "-u", UID, "-e", "HOME=/home/claude", "-e", "TERM=xterm-256color",
                container.id, "tmux", "attach-session", "-t", "main"]
        relay_runs, direct_runs = [], []
        for _ in range(THROUGHPUT_ROUNDS):  # alternated, so that drift on a shared machine hits both alike
            relay_runs.append(relay_throughput(cluster, tsid, container, total))
            _wait_no_clients(container)
            direct_runs.append(_pty_throughput(argv, container, total))
            _wait_no_clients(container)
        started = time.perf_counter()
        out = container.exec_run(["cat", "/tmp/big"], user=UID).output
        cat_mbs = len(out) / (time.perf_counter() - started) / (1 << 20)
        figures.append(Figure("relay throughput (session output, median)", "MB/s", median(relay_runs),
                              median(direct_runs), "docker exec -it tmux attach on a local pty (tmux, no relay)",
                              lower_is_better=False))
        figures.append(Figure("relay throughput (session output, median)", "MB/s", median(relay_runs), cat_mbs,
                              "docker exec cat (no tmux, no SSH)", lower_is_better=False))
    client.close()
    shutil.rmtree(trace_dir, ignore_errors=True)
    return figures


# --- per-hop trace of the keystroke echo (issue 17) -------------------------------------------------
#: The legs of one keystroke's round trip, from the benchmark's send to its receive of the echo,
#: split at the agent's hops (convocate_agent.attach_trace).
TRACE_LEGS = (("client_send", "ssh_recv", "client -> agent (SSH)"),
              ("ssh_recv", "exec_write", "agent: SSH -> exec socket"),
              ("exec_write", "exec_read", "dockerd + tmux + echo"),
              ("exec_read", "ssh_send", "agent: exec socket -> SSH"),
              ("ssh_send", "client_recv", "agent -> client (SSH)"))


def echo_legs(sends: list[tuple[int, int]], marks: list[tuple[str, int, int]]) -> dict[str, list[float]]:
    """Split each keystroke's round trip at the agent's hops.

    Args:
        sends: ``(sent_ns, echoed_ns)`` per keystroke, on ``CLOCK_MONOTONIC``.
        marks: The agent's trace of the same channel (``attach_trace.read_trace``).

    Returns:
        For each leg of :data:`TRACE_LEGS` (by its label), the leg's time per keystroke in ms;
        a keystroke whose hops are not all in the trace is left out.
    """
    legs: dict[str, list[float]] = {label: [] for _, _, label in TRACE_LEGS}
    for sent, echoed in sends:
        times = {"client_send": sent, "client_recv": echoed}
        cursor = sent
        for hop in ("ssh_recv", "exec_write", "exec_read", "ssh_send"):
            found = next((ns for h, ns, _ in marks if h == hop and cursor <= ns <= echoed), None)
            if found is None:
                break
            times[hop] = cursor = found
        else:
            for start, end, label in TRACE_LEGS:
                legs[label].append((times[end] - times[start]) / 1e6)
    return legs


def traced_echoes(cluster, sid: str, rounds: int, trace_dir) -> tuple[list[float], dict[str, list[float]]]:
    """Keystroke echoes through the relay (an asyncssh client in this process), split per hop.

    The agent must run with ``CONVOCATE_ATTACH_TRACE`` set to ``trace_dir``.
    """
    from convocate_agent.attach_trace import read_trace

    async def measure() -> list[tuple[int, int]]:
        async with connect(cluster) as ssh:
            process, _ = await open_attach(ssh, sid, cols=100, rows=30)
            await _quiet(process, 0.5)
            sends = []
            for _ in range(rounds):
                sent = time.monotonic_ns()
                process.stdin.write(b"x")
                got = b""
                while b"x" not in got:
                    got += await process.stdout.read(65536)
                sends.append((sent, time.monotonic_ns()))
                process.stdin.write(b"\x7f")
                await _quiet(process, 0.02)
            process.close()
            await process.wait_closed()
            return sends

    before = set(trace_dir.glob("*.trace"))
    sends = asyncio.run(measure())
    deadline = time.monotonic() + 3
    while not (new := set(trace_dir.glob("*.trace")) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not new:
        raise RuntimeError("the agent wrote no attach trace (is CONVOCATE_ATTACH_TRACE set for it?)")
    marks = read_trace(sorted(new)[-1])
    return [(b - a) / 1e6 for a, b in sends], echo_legs(sends, marks)


def operator_echoes(cluster, sid: str, rounds: int) -> list[float]:
    """Keystroke echoes through ``convocate attach`` on a local pty: the path operators type through."""
    _, echoes, _, _ = _pty_attach([python(), "-m", "convocate", "attach", sid], b"x", b"x", rounds, env=cluster.env)
    return echoes
