"""Session benchmarks: create→running, attach first byte, keystroke echo, relay throughput.

Baselines, measured in the same run on the same image:
- create→running against ``docker run -d`` (docker SDK) of the same image with the same mounts,
  both until ``tmux has-session`` answers (the session can be attached);
- attach against ``docker exec -it <ctr> tmux attach`` run on a local pty, driven the same way
  (first byte of the screen, then one key and its echo);
- relay throughput (a large output in the session, through tmux and the SSH relay) against
  ``docker exec <ctr> cat`` of the same bytes (no tmux, no SSH).
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import time
import uuid as uuidlib

import docker

from tests.bench.common import Figure, median, percentile, scratch_cluster
from tests.conftest import connect, rpc_ok
from tests.test_agent_attach import open_attach

UID = "1337:1337"


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


def _pty_attach(argv: list[str], key: bytes, echo: bytes, rounds: int) -> tuple[float, list[float]]:
    """Run ``argv`` on a pty: time to its first output byte, then key→echo round trips."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    try:
        started = time.perf_counter()
        select.select([fd], [], [], 30)
        first = (time.perf_counter() - started) * 1000
        _drain(fd, 0.5)
        echoes = []
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
        return first, echoes
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)


def _drain(fd: int, quiet: float) -> None:
    while select.select([fd], [], [], quiet)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def run(image: str, runs: int = 5, echo_rounds: int = 100, megabytes: int = 20) -> list[Figure]:
    figures: list[Figure] = []
    client = docker.from_env()
    with scratch_cluster(image) as cluster:
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
        async def relay_attach() -> tuple[float, list[float]]:
            async with connect(cluster) as ssh:
                started = time.perf_counter()
                process, screen = await open_attach(ssh, sid, cols=100, rows=30)
                first_chunk = await process.stdout.read(65536)
                first = (time.perf_counter() - started) * 1000
                screen.data = first_chunk
                await asyncio.sleep(0.5)
                echoes = []
                for _ in range(echo_rounds):
                    sent = time.perf_counter()
                    process.stdin.write(b"x")
                    got = b""
                    while b"x" not in got:
                        got += await process.stdout.read(65536)
                    echoes.append((time.perf_counter() - sent) * 1000)
                    process.stdin.write(b"\x7f")
                    await asyncio.sleep(0.02)
                process.close()
                return first, echoes

        first, echoes = asyncio.run(relay_attach())
        argv = ["/usr/bin/docker", "exec", "-it", "-u", UID, "-e", "HOME=/home/claude", "-e", "TERM=xterm-256color",
                container.id, "tmux", "attach-session", "-t", "main"]
        base_first, base_echoes = _pty_attach(argv, b"x", b"x", echo_rounds)
        figures.append(Figure("attach: first screen byte", "ms", first, base_first, "docker exec -it tmux attach"))
        for q in (0.5, 0.99):
            figures.append(Figure(f"keystroke echo p{int(q * 100)}", "ms", percentile(echoes, q),
                                  percentile(base_echoes, q), "docker exec -it tmux attach"))

        # --- throughput ------------------------------------------------------------------------------
        size = megabytes << 20
        container.exec_run(["sh", "-c", f"head -c {size} /dev/urandom | base64 -w 100 > /tmp/big"], user=UID)
        total = int(container.exec_run(["stat", "-c", "%s", "/tmp/big"], user=UID).output)

        async def relay_throughput() -> float:
            async with connect(cluster) as ssh:
                process, _ = await open_attach(ssh, sid, cols=200, rows=50)
                await asyncio.sleep(0.5)
                await process.stdout.read(1 << 20)
                marker = uuidlib.uuid4().hex
                started = time.perf_counter()
                # A new window (made current for the attached client) prints the file, then a marker.
                container.exec_run(["tmux", "new-window", "-t", "main", f"cat /tmp/big; echo {marker}; sleep 30"],
                                   user=UID, environment={"HOME": "/home/claude"})
                tail = b""
                while marker.encode() not in tail:  # the pane's last line, after all of the file
                    chunk = await asyncio.wait_for(process.stdout.read(1 << 20), 60)
                    if not chunk:
                        raise RuntimeError("the attach ended before the output did")
                    tail = (tail + chunk)[-200:]
                elapsed = time.perf_counter() - started
                process.close()
                return total / elapsed / (1 << 20)

        relay_mbs = asyncio.run(relay_throughput())
        started = time.perf_counter()
        out = container.exec_run(["cat", "/tmp/big"], user=UID).output
        base_mbs = len(out) / (time.perf_counter() - started) / (1 << 20)
        figures.append(Figure("relay throughput (session output)", "MB/s", relay_mbs, base_mbs,
                              "docker exec cat (no tmux, no SSH)", lower_is_better=False))
    client.close()
    return figures
