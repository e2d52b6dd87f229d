"""Faults under a running agent, and what must hold after each.

- ``kill -9`` of the agent while it creates, clones, deletes or restarts a
  session, at delays spread over the op's measured duration, then a restart
  on the same root: no half-made session, no staging leftover, no lock left
  effective, the source of a clone and a session being deleted never lost, no
  container without its session.
- dockerd restarted under a running agent (a private dockerd of the test's
  own, never the machine's): ``docker_error`` while it is down, and the agent
  recovers when it is back (list, restart, Docker's event stream).
- status-serve gone for a while (a long gap in the full run): the agent
  queues, reconnects within its 30 s backoff bound, delivers the backlog in
  order, events flow again, and ``list`` agrees with the events.
- the agent host cut off: the agent runs in a network namespace of the test's
  own, reached over a veth pair; a blackhole route inside the namespace cuts
  it off. A short cut is survived by TCP; a long one is seen by the client's
  keepalive and connect timeout; once healed the agent serves and a client
  reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import docker
import pytest

from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from convocate_agent.containerspec import container_name
from tests.conftest import connect, rpc, rpc_ok
from tests.harness import LocalCluster
from tests.reliability.support import (
    TALLY,
    assert_sound_root,
    labelled_containers,
    recovery_report,
    scaled,
    session_dirs,
    trash_ids,
    tree,
)
from tests.test_status import Subscriber, agent_connected, event

pytestmark = [pytest.mark.reliability, pytest.mark.docker, pytest.mark.slow]

DOCKER = "/usr/bin/docker"
#: Files put in the skel, so that making or copying a home takes long enough to be interrupted.
BULK_FILES = 1500


# --- kill -9 in the middle of an op -------------------------------------------------------
async def send_then_kill(cluster: LocalCluster, op: str, params: dict[str, Any],
                         delay: float) -> tuple[bool, dict[str, Any] | None]:
    """Send one request, then SIGKILL the agent (our own process, by its PID) ``delay`` seconds later.

    Returns:
        ``(answered before the kill, the response if one came at all)``.
    """
    async with connect(cluster) as conn:
        process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
        process.stdin.write(encode_line({"op": op, "params": params}))
        process.stdin.write_eof()
        reply = asyncio.create_task(process.stdout.readline())
        await asyncio.sleep(delay)
        answered = reply.done()
        cluster.stop(signal.SIGKILL)
        try:
            line = await asyncio.wait_for(reply, 5)
        except (TimeoutError, asyncssh.Error, ConnectionError):
            line = b""
    return answered, (json.loads(line) if line.strip() else None)


async def timed(conn: asyncssh.SSHClientConnection, op: str, params: dict[str, Any]) -> float:
    """Seconds one successful op takes, seen from the client."""
    started = time.monotonic()
    await rpc_ok(conn, op, params)
    return time.monotonic() - started


def without_meta(entries: dict[str, tuple[str, int, int]]) -> dict[str, tuple[str, int, int]]:
    return {k: v for k, v in entries.items() if k != "session.json"}


def add_bulk(cluster: LocalCluster) -> None:
    bulk = cluster.paths.skel_dir / "bulk"
    bulk.mkdir(exist_ok=True)
    for i in range(BULK_FILES):
        (bulk / f"f{i:04d}").write_bytes(os.urandom(1024))


async def assert_recovered(cluster: LocalCluster, docker_client: docker.DockerClient) -> dict[str, Any]:
    """What must hold under the root of an agent restarted after a crash; returns the sessions."""
    sessions = assert_sound_root(cluster.paths)
    containers = labelled_containers(docker_client, cluster.agent_id)
    orphans = set(containers) - set(sessions)
    assert not orphans, f"containers without a session dir: {orphans}"
    async with connect(cluster) as conn:
        listed = await rpc_ok(conn, "list")
    assert {s["uuid"] for s in listed} == set(sessions)
    for s in listed:
        assert s["running"] == (s["uuid"] in containers and containers[s["uuid"]].status == "running"), s
    return sessions


KILL_FRACTIONS = scaled([0.25, 0.55, 0.85], [0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.1])


@pytest.mark.parametrize("op", ["create", "clone", "delete", "restart"])
async def test_kill_9_in_the_middle_of_an_op_leaves_nothing_half_done(op, make_cluster, docker_client):
    cluster = make_cluster()
    add_bulk(cluster)
    paths = cluster.paths
    async with connect(cluster) as conn:
        await rpc_ok(conn, "settings-set", {"default_cpus": 0.2, "default_memory_mb": 128})
        source = (await rpc_ok(conn, "create", {"name": "k9 source"}))["uuid"]
        duration = {"create": await timed(conn, "create", {"name": "k9 calibrate"}),
                    "create-start": await timed(conn, "create", {"name": "k9 calibrate start", "start": True}),
                    "clone": await timed(conn, "clone", {"source_id": source, "name": "k9 calibrate clone"}),
                    "restart": await timed(conn, "restart", {"id": source})}
        victim = (await rpc_ok(conn, "create", {"name": "k9 calibrate victim"}))["uuid"]
        duration["delete"] = await timed(conn, "delete", {"id": victim})
        for s in await rpc_ok(conn, "list"):  # back to the source alone, stopped
            if s["uuid"] != source:
                if s["running"]:
                    await rpc_ok(conn, "kill", {"id": s["uuid"]})
                await rpc_ok(conn, "delete", {"id": s["uuid"]})
        await rpc_ok(conn, "kill", {"id": source})
    TALLY.note("kill9 op seconds", op, round(duration["create-start" if op == "create" else op], 3))

    interrupted = 0
    for i, fraction in enumerate(KILL_FRACTIONS):
        before = session_dirs(paths)
        params: dict[str, Any]
        target = source
        if op == "create":
            start = i % 2 == 1
            params = {"name": f"k9 create {i}", "start": start}
            delay = duration["create-start" if start else "create"] * fraction
        elif op == "clone":
            params = {"source_id": source, "name": f"k9 clone {i}"}
            delay = duration["clone"] * fraction
        elif op == "delete":
            async with connect(cluster) as conn:
                target = (await rpc_ok(conn, "create", {"name": f"k9 victim {i}"}))["uuid"]
                if i % 2:  # a victim with a (stopped) container: the delete removes it too
                    await rpc_ok(conn, "restart", {"id": target})
                    await rpc_ok(conn, "kill", {"id": target})
            before = session_dirs(paths)
            params = {"id": target}
            delay = duration["delete"] * fraction
        else:
            params = {"id": source}
            delay = duration["restart"] * fraction
        home_before = tree(paths.session_dir(target))

        offset = len(cluster.log_text())
        answered, response = await send_then_kill(cluster, op, params, delay)
        cluster.start(same_port=True)
        recovered = recovery_report(cluster.log_text()[offset:])
        interrupted += not answered
        TALLY.add("kill9", f"{op} kills")
        TALLY.add("kill9", f"{op} answered before the kill", answered)
        TALLY.add("kill9", f"{op} stale locks swept", recovered.get("stale_locks", 0))
        TALLY.add("kill9", f"{op} half-built homes swept", recovered.get("staging_removed", 0))

        sessions = await assert_recovered(cluster, docker_client)
        made = set(sessions) - before
        async with connect(cluster) as conn:
            if op in ("create", "clone"):
                assert len(made) <= 1, made
                if response and response["ok"]:
                    assert made == {response["result"]["uuid"]}
                TALLY.add("kill9", f"{op} sessions appeared", len(made))
                for sid in made:
                    assert sessions[sid].name == params["name"]
                    if op == "clone":  # a clone is a complete copy of its source, or is not there
                        assert without_meta(tree(paths.session_dir(sid))) == without_meta(home_before)
                    TALLY.add("kill9", f"{op} done without an answer", not (response and response["ok"]))
                    state = await rpc_ok(conn, "get", {"id": sid})
                    if state["running"]:
                        await rpc_ok(conn, "kill", {"id": sid})
                    await rpc_ok(conn, "delete", {"id": sid})  # its lock is free
                assert source in sessions
                if op == "clone":
                    assert tree(paths.session_dir(source)) == home_before  # the source is untouched
            elif op == "delete":
                assert not made
                trashed = trash_ids(paths, target)
                if target in sessions:  # the delete did not happen: the session is whole and can go now
                    assert trashed == [] and tree(paths.session_dir(target)) == home_before
                    assert not (response and response["ok"])
                    await rpc_ok(conn, "delete", {"id": target})
                    TALLY.add("kill9", "delete left intact")
                else:  # it happened: the home is whole, in the trash
                    assert len(trashed) == 1 and tree(paths.trash_dir / trashed[0]) == home_before
                    assert (await rpc(conn, "get", {"id": target}))["code"] == "not_found"
                    TALLY.add("kill9", "delete completed into the trash")
            else:
                assert not made and source in sessions
                again = await rpc_ok(conn, "restart", {"id": source})  # the lock of the killed restart is not in force
                assert again["running"]
                assert docker_client.containers.get(container_name(source)).status == "running"
                await rpc_ok(conn, "kill", {"id": source})
            await rpc_ok(conn, "edit", {"id": source, "name": f"k9 source {i}"})
    assert interrupted >= 1, f"no kill landed before {op} answered; the delays were {KILL_FRACTIONS}"
    assert "Traceback" not in cluster.log_text()


# --- dockerd restarted under the agent ----------------------------------------------------
class PrivateDockerd:
    """A dockerd of the test's own: its own socket, data root, exec root, pid file and network namespace.

    Only this dockerd is ever stopped or restarted (by the PID of the process
    we started); the machine's dockerd is left alone.

    Args:
        base: A short directory of its own (the exec root holds Unix sockets).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "docker.sock"
        self.log_path = base / "dockerd.log"
        self.process: subprocess.Popen | None = None
        (base / "daemon.json").write_text("{}\n")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd and wait until it answers."""
        # In a network namespace of its own: even with --bridge=none a dockerd deletes a bridge named
        # docker0 where it starts, which would cut every container of the machine's dockerd off its
        # network. unshare(1) execs dockerd, so the PID we hold is dockerd's; its Unix socket is reached
        # through the file system, whatever the namespace.
        args = ["unshare", "--net", "--", "dockerd", "--config-file", str(self.base / "daemon.json"), "-H", self.host,
                "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
                "--pidfile", str(self.base / "docker.pid"), "--bridge=none", "--iptables=false", "--ip-masq=false",
                "--ip-forward=false", "--userland-proxy=false", "--log-level=warn"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private dockerd exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(docker.errors.DockerException, OSError), contextlib.closing(self.client()) as c:
                c.ping()
                return
            time.sleep(0.2)
        raise RuntimeError(f"private dockerd did not answer within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Stop our dockerd by its PID (it stops its containers and its containerd); returns its exit status."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def load(self, image: str) -> None:
        """Copy ``image`` from the machine's dockerd (read only) into this one."""
        save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "-H", self.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True,
                       timeout=300)
        assert save.wait(60) == 0

    def leftover_pids(self) -> list[int]:
        """PIDs of processes started for this dockerd (its containerd and shims name our base in their command)."""
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.base).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(int(pid))
        return found

    def cleanup(self) -> None:
        """Remove its containers, stop it, and remove every trace of it (processes, mounts, dirs)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(docker.errors.DockerException), contextlib.closing(self.client()) as c:
                for ctr in c.containers.list(all=True):
                    with contextlib.suppress(docker.errors.APIError):
                        ctr.remove(force=True)
        self.stop()
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.base))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_dockerd(session_image: str):
    """A started private dockerd holding the session image; torn down completely after the test."""
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("a private dockerd needs root and dockerd")
    dockerd = PrivateDockerd(Path(tempfile.mkdtemp(prefix="cvrel-dockerd-", dir="/tmp")))
    try:
        dockerd.start()
        started = time.monotonic()
        dockerd.load(session_image)
        TALLY.note("dockerd", "image load seconds", round(time.monotonic() - started, 1))
        yield dockerd
    finally:
        dockerd.cleanup()
    assert dockerd.leftover_pids() == [] and not dockerd.base.exists()


async def test_dockerd_restarted_under_a_running_agent(private_dockerd, make_cluster):
    dockerd = private_dockerd
    cluster = make_cluster(extra_env={"DOCKER_HOST": dockerd.host})
    engine = dockerd.client()
    async with connect(cluster) as conn:
        up = await rpc_ok(conn, "create", {"name": "on a private dockerd", "cpus": 0.2, "memory_mb": 128,
                                           "start": True})
        idle = await rpc_ok(conn, "create", {"name": "idle"})
        sid, idle_id = up["uuid"], idle["uuid"]
        assert engine.containers.get(container_name(sid)).status == "running"
        with contextlib.closing(docker.from_env()) as machine:  # the machine's dockerd never saw it
            assert machine.containers.list(all=True, filters={"label": f"convocate.session={sid}"}) == []

        stopped_at = time.monotonic()
        await asyncio.to_thread(dockerd.stop)  # SIGTERM to our dockerd: it stops its containers, then exits
        TALLY.note("dockerd", "stop seconds", round(time.monotonic() - stopped_at, 1))
        assert (await rpc_ok(conn, "ping"))["agent_id"] == cluster.agent_id
        before = session_dirs(cluster.paths)
        while_down = {
            "list": {}, "get": {"id": sid}, "restart": {"id": sid}, "kill": {"id": sid}, "delete": {"id": idle_id},
            "capture": {"id": sid}, "background": {"id": sid},
            "create": {"name": "started while down", "start": True, "cpus": 0.2, "memory_mb": 128},
        }
        for op, params in while_down.items():
            response = await rpc(conn, op, params)
            assert not response["ok"] and response["code"] == "docker_error", (op, response)
            TALLY.add("dockerd", "docker_error answers while down")
        process = await conn.create_process(subsystem=ATTACH_SUBSYSTEM, encoding=None)
        process.stdin.write(encode_line({"id": sid, "cols": 80, "rows": 24}))
        refusal = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert refusal["code"] == "docker_error", refusal
        TALLY.add("dockerd", "docker_error answers while down")
        # A session that needs no container can still be made; a failed start leaves nothing behind.
        plain = await rpc_ok(conn, "create", {"name": "made while down"})
        assert session_dirs(cluster.paths) == before | {plain["uuid"]}
        assert_sound_root(cluster.paths)

        dockerd.start()
        back_at = time.monotonic()
        while True:
            listed = await rpc(conn, "list")
            if listed["ok"]:
                break
            assert listed["code"] == "docker_error" and time.monotonic() - back_at < 30, listed
            await asyncio.sleep(0.2)
        TALLY.note("dockerd", "list again after seconds", round(time.monotonic() - back_at, 2))
        states = {s["uuid"]: s for s in listed["result"]}
        assert set(states) == {sid, idle_id, plain["uuid"]}
        assert states[sid]["running"] is False  # it died with dockerd, and the agent says so
        assert engine.containers.get(container_name(sid)).status != "running"
        again = await rpc_ok(conn, "restart", {"id": sid})
        assert again["running"] and engine.containers.get(container_name(sid)).status == "running"

        # Docker's event stream came back too: a container stopped behind the agent's back is noticed.
        engine.containers.get(container_name(sid)).kill()
        deadline = time.monotonic() + 40
        while f"session {sid} stopped by itself" not in cluster.log_text():
            assert time.monotonic() < deadline, "the agent did not see the container stop (event stream gone?)"
            await asyncio.sleep(0.2)
        TALLY.note("dockerd", "event stream back after seconds", round(time.monotonic() - back_at, 1))
        assert (await rpc_ok(conn, "get", {"id": sid}))["running"] is False
        for s in (sid, idle_id, plain["uuid"]):
            await rpc_ok(conn, "delete", {"id": s})
    assert_sound_root(cluster.paths)
    assert cluster.process.poll() is None and "Traceback" not in cluster.log_text()
    engine.close()


# --- status-serve gone for a while --------------------------------------------------------
_RECONNECT_IN = re.compile(r"status: reconnecting to .* in (\d+(?:\.\d+)?) s")


async def test_status_serve_gone_for_a_while_then_back(make_cluster):
    """``test_status`` covers a short outage; this one is long enough for the backoff to reach its cap."""
    cluster = make_cluster(status=True)
    # Back between two reconnect attempts (at 1, 3, 7, 15, 31, 61, 91 s), not on one.
    gap = scaled(9.0, 66.0)
    async with Subscriber(cluster.paths.status_socket) as sub:
        await sub.wait_for(agent_connected, timeout=20)
    expected: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    cluster.stop_status()
    stopped_at = time.monotonic()
    async with connect(cluster) as conn:
        i = 0
        while time.monotonic() - stopped_at < gap:
            made = await rpc_ok(conn, "create", {"name": f"offline {i}"})
            expected.append(("container.created", made["uuid"]))
            await rpc_ok(conn, "edit", {"id": made["uuid"], "name": f"offline {i} edited"})
            expected.append(("container.edited", made["uuid"]))
            names[made["uuid"]] = f"offline {i} edited"
            if i % 3 == 2:
                await rpc_ok(conn, "delete", {"id": made["uuid"]})
                expected.append(("container.deleted", made["uuid"]))
                del names[made["uuid"]]
            i += 1
            await asyncio.sleep(1.0)
    cluster.start_status(same_port=True)
    back_at = time.monotonic()
    async with Subscriber(cluster.paths.status_socket) as sub:
        stamp, started = await sub.wait_for(event("agent.started"), timeout=45)
        reconnect = stamp - back_at
        assert reconnect <= 31, f"reconnected {reconnect:.1f} s after status-serve came back (bound: 30 s)"
        assert started["data"]["dropped_events"] == 0
        ours = [(m["type"], m["session_id"]) for m in sub.since(0)
                if m["type"].startswith("container.") and m.get("session_id") in {s for _, s in expected}]
        assert ours == expected  # the whole backlog, in order
        async with connect(cluster) as conn:
            start = len(sub.messages)
            live = await rpc_ok(conn, "create", {"name": "after the gap"})
            await sub.wait_for(event("container.created", live["uuid"]), start, timeout=5)  # events flow again
            names[live["uuid"]] = "after the gap"
            listed = await rpc_ok(conn, "list")
        folded: dict[str, str] = {}
        for m in sub.since(0):
            if m["type"] in ("container.created", "container.edited"):
                folded[m["session_id"]] = m["data"]["name"]
            elif m["type"] == "container.deleted":
                folded.pop(m["session_id"], None)
    assert {s["uuid"]: s["name"] for s in listed} == names == folded
    delays = [float(d) for d in _RECONNECT_IN.findall(cluster.log_text())]
    assert delays and max(delays) <= 30
    if gap > 31:
        assert 30 in delays  # the backoff reached its cap
    TALLY.note("status gap", "outage seconds", round(back_at - stopped_at, 1))
    TALLY.note("status gap", "reconnect seconds after return", round(reconnect, 1))
    TALLY.note("status gap", "largest backoff seconds", max(delays))
    TALLY.add("status gap", "backlog events delivered in order", len(expected))


# --- the agent host cut off by a network namespace ---------------------------------------
@dataclass
class Netns:
    """A network namespace of the test's own, joined to the root namespace by a veth pair on a private /30."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def cut(self) -> None:
        """Drop everything the namespace sends to the root namespace (a blackhole route inside it)."""
        self.ip("-n", self.name, "route", "add", "blackhole", f"{self.host_ip}/32")

    def heal(self) -> None:
        self.ip("-n", self.name, "route", "del", "blackhole", f"{self.host_ip}/32")

    def route_to_agent(self) -> str:
        return subprocess.run(["ip", "route", "get", self.ns_ip], check=True, capture_output=True,
                              text=True).stdout


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.231.0.0/16 that no address or route on this host overlaps."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(m, strict=False) for m in re.findall(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", used)]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.231.{random.randrange(256)}.{random.randrange(64) * 4}/30")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /30 in 10.231.0.0/16")


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = secrets.token_hex(3)
    net = _pick_subnet()
    host_ip, ns_ip = (str(h) for h in net.hosts())
    ns = Netns(f"convocate-rel-{tag}", f"cvr{tag}h", f"cvr{tag}n", host_ip, ns_ip)
    try:
        ns.ip("netns", "add", ns.name)
        ns.ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        ns.ip("link", "set", ns.ns_if, "netns", ns.name)
        ns.ip("addr", "add", f"{host_ip}/30", "dev", ns.host_if)
        ns.ip("link", "set", ns.host_if, "up")
        ns.ip("-n", ns.name, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_if)
        ns.ip("-n", ns.name, "link", "set", ns.ns_if, "up")
        ns.ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", ns.host_if], capture_output=True).returncode != 0


@contextlib.asynccontextmanager
async def connect_to(cluster: LocalCluster, address: str, **options: Any):
    """Connect to ``cluster``'s agent at ``address`` (not loopback), pinning its host key."""
    host_key = keys.load_private_key(cluster.paths.agent_host_key).convert_to_public()
    conn = await asyncssh.connect(address, cluster.port, username="claude",
                                  client_keys=[keys.load_private_key(cluster.shell_key_path)],
                                  known_hosts=([host_key], [], []), agent_path=None, config=None, **options)
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5)


async def test_an_agent_host_cut_off_by_the_network_and_healed(netns, make_cluster):
    ns = netns
    cluster = make_cluster(listen=f"{ns.ns_ip}:0", command_prefix=["ip", "netns", "exec", ns.name])
    assert f"listening on {ns.ns_ip}:{cluster.port}" in cluster.log_text()
    async with connect_to(cluster, ns.ns_ip) as steady:
        made = await rpc_ok(steady, "create", {"name": "behind a cut"})

        # A short cut: TCP retransmits, and the request sent during it is answered once healed.
        ns.cut()
        assert f"dev {ns.host_if}" in ns.route_to_agent()  # the client's packets still go only to our veth
        pending = asyncio.create_task(rpc(steady, "get", {"id": made["uuid"]}))
        await asyncio.sleep(2.0)
        assert not pending.done()
        ns.heal()
        healed_at = time.monotonic()
        answer = await asyncio.wait_for(pending, 30)
        assert answer["ok"] and answer["result"]["name"] == "behind a cut"
        TALLY.note("network cut", "short cut answered seconds after heal", round(time.monotonic() - healed_at, 1))

        # A long cut: the client's keepalive gives up on its connection, new connections time out.
        async with connect_to(cluster, ns.ns_ip, keepalive_interval=1, keepalive_count_max=3) as watchful:
            await rpc_ok(watchful, "ping")
            ns.cut()
            cut_at = time.monotonic()
            try:
                assert f"dev {ns.host_if}" in ns.route_to_agent()
                await asyncio.wait_for(watchful.wait_closed(), 15)
                detected = time.monotonic() - cut_at
                with pytest.raises((TimeoutError, OSError, asyncssh.Error)):
                    async with connect_to(cluster, ns.ns_ip, connect_timeout=2):
                        pass
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(rpc(steady, "ping"), 3)
            finally:
                ns.heal()
        TALLY.note("network cut", "keepalive noticed the cut after seconds", round(detected, 1))
        TALLY.add("network cut", "failures observed while cut", 3)

    healed_at = time.monotonic()
    async with connect_to(cluster, ns.ns_ip, connect_timeout=10) as again:
        assert (await rpc_ok(again, "ping"))["agent_id"] == cluster.agent_id
        assert (await rpc_ok(again, "get", {"id": made["uuid"]}))["name"] == "behind a cut"
        await rpc_ok(again, "delete", {"id": made["uuid"]})
    TALLY.note("network cut", "reconnected seconds after heal", round(time.monotonic() - healed_at, 2))
    assert cluster.process.poll() is None and "Traceback" not in cluster.log_text()
    assert_sound_root(cluster.paths)
