"""Status channel, status-serve, the local event socket and cluster DNS, with real processes.

Each cluster here runs ``convocate status-serve`` and ``convocate-agent serve``
as subprocesses; events are read from status-serve's Unix socket as a TUI
would; DNS answers come from a real dnsmasq on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import asyncssh
import dns.resolver
import pytest

from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import Event
from convocate.registry import bind_status_key
from tests.conftest import connect, rpc_ok
from tests.harness import LocalCluster, remove_containers
from tests.test_agent_attach import detach, open_attach

pytestmark = pytest.mark.docker

DOMAIN = "convocate.internal"
FOREIGN = "10.9.8.7 vm-one.convocate.internal vm-one"


class Subscriber:
    """Reads status-serve's local socket in the background, stamping each message's arrival."""

    def __init__(self, path: Path):
        self.path = path
        self.messages: list[tuple[float, dict]] = []
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        self._task = asyncio.create_task(self._read(reader))
        await self.wait_for(lambda m: m["type"] == "replay.done")
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        self._writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self.messages.append((time.monotonic(), json.loads(line)))
            self._changed.set()

    def since(self, index: int) -> list[dict]:
        return [m for _, m in self.messages[index:]]

    async def wait_for(self, match, start: int = 0, timeout: float = 15.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            for stamp, message in self.messages[start:]:
                if match(message):
                    return stamp, message
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [(m["type"], m.get("session_id", "")[:8]) for _, m in self.messages[start:]]
                raise AssertionError(f"no matching message within {timeout} s; saw {kinds}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass


def event(kind: str, sid: str | None = None):
    return lambda m: m["type"] == kind and (sid is None or m.get("session_id") == sid)


def agent_connected(message: dict) -> bool:
    """An ``agent.status`` saying the agent is connected (live, or in the replay)."""
    return message["type"] == "agent.status" and message["data"]["connected"]


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    """A real dnsmasq on a loopback port, serving the cluster's hosts file (which holds a foreign record)."""
    root = tmp_path_factory.mktemp("status")
    hosts = root / "var" / "lib" / "convocate" / "dnsmasq-hosts"
    hosts.parent.mkdir(parents=True)
    hosts.write_text(FOREIGN + "\n")
    pid_file = root / "dnsmasq.pid"
    port = free_port()
    proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
                             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                             f"--local=/{DOMAIN}/",
                             f"--addn-hosts={hosts}", f"--pid-file={pid_file}", "--user=root", "--group=root",
                             "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    yield root, port, pid_file
    proc.terminate()
    proc.wait(10)


def make_cluster(root: Path, image: str, pid_file: Path | None = None, **kw) -> LocalCluster:
    args = ["--domain", DOMAIN] + (["--dnsmasq-pid-file", str(pid_file)] if pid_file else [])
    return LocalCluster(root=root, image=image, status=True, status_args=args, **kw)


@pytest.fixture(scope="module")
def status_cluster(dnsmasq, session_image):
    root, port, pid_file = dnsmasq
    cluster = make_cluster(root, session_image, pid_file)
    cluster.install()
    cluster.start()
    cluster.dns_port = port
    yield cluster
    cluster.stop_all()
    remove_containers(root)


@pytest.fixture
def lone_cluster(tmp_path, session_image):
    """A status cluster of the test's own, for tests that break it."""
    cluster = make_cluster(tmp_path / "root", session_image)
    yield cluster
    cluster.stop_all()
    remove_containers(cluster.root)


def resolve(port: int, name: str) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 3
    try:
        return sorted(r.address for r in resolver.resolve(name, "A"))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
        return []  # NoNameservers: dnsmasq refuses a bare name it does not know (it has no upstream)


async def eventually_resolves(port: int, name: str, want: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await asyncio.to_thread(resolve, port, name)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} resolves to {got}, wanted {want}")
        await asyncio.sleep(0.1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def test_every_op_produces_its_event_in_order(status_cluster):
    cluster = status_cluster
    latencies: list[float] = []
    async with Subscriber(cluster.paths.status_socket) as sub, connect(cluster) as ssh:
        replay = [m for m in sub.since(0) if m["type"] == "agent.status"]
        assert replay and replay[0]["agent_id"] == cluster.agent_id and replay[0]["data"]["connected"]

        async def op(name, params, *expected):
            start = len(sub.messages)
            result = await rpc_ok(ssh, name, params)
            replied = time.monotonic()
            sid = (result.get("uuid") if isinstance(result, dict) else None) or params.get("id")
            position = start
            for kind in expected:
                stamp, message = await sub.wait_for(event(kind, sid), position)
                position = next(i for i, (t, m) in enumerate(sub.messages) if m is message) + 1
                latencies.append(stamp - replied)  # negative: the event came before the reply
            return result

        made = await op("create", {"name": "evt", "cpus": 0.1, "memory_mb": 100, "start": True},
                        "container.created", "container.started")
        sid = made["uuid"]
        await op("edit", {"id": sid, "name": "evt2"}, "container.edited")
        start = len(sub.messages)
        process, screen = await open_attach(ssh, sid)
        await screen.wait_for(b"> ")
        await sub.wait_for(event("session.attached", sid), start)
        await detach(process)
        await screen.drain_to_eof()
        await sub.wait_for(event("session.detached", sid), start)
        await op("restart", {"id": sid}, "container.stopped", "container.started")
        await op("kill", {"id": sid}, "container.stopped")
        clone = await op("clone", {"source_id": sid, "name": "evt-copy"}, "container.created")
        await op("delete", {"id": sid}, "container.deleted")
        await op("delete", {"id": clone["uuid"]}, "container.deleted")
        holder = await rpc_ok(ssh, "create", {"name": "lat"})
        for i in range(60):
            await op("edit", {"id": holder["uuid"], "name": f"lat{i}"}, "container.edited")
        await rpc_ok(ssh, "delete", {"id": holder["uuid"]})
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    print(f"\nop reply -> event on the status socket: n={len(latencies)} p50={p50:.2f} ms p99={p99:.2f} ms "
          f"mean={statistics.mean(latencies) * 1000:.2f} ms")
    assert len(latencies) == 69


async def test_session_dns_names_follow_create_edit_and_delete(status_cluster):
    cluster, port = status_cluster, status_cluster.dns_port
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "web", "dns_name": "Web"})
        await eventually_resolves(port, f"web.{DOMAIN}", ["127.0.0.1"])
        await eventually_resolves(port, "web", ["127.0.0.1"])
        await rpc_ok(ssh, "edit", {"id": made["uuid"], "dns_name": "api"})
        await eventually_resolves(port, f"api.{DOMAIN}", ["127.0.0.1"])
        await eventually_resolves(port, f"web.{DOMAIN}", [])
        await rpc_ok(ssh, "edit", {"id": made["uuid"], "dns_name": ""})
        await eventually_resolves(port, f"api.{DOMAIN}", [])
        await rpc_ok(ssh, "edit", {"id": made["uuid"], "dns_name": "back"})
        await eventually_resolves(port, f"back.{DOMAIN}", ["127.0.0.1"])
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})
        await eventually_resolves(port, f"back.{DOMAIN}", [])
    assert await asyncio.to_thread(resolve, port, f"vm-one.{DOMAIN}") == ["10.9.8.7"]
    assert FOREIGN in cluster.paths.dnsmasq_hosts.read_text().splitlines()


async def test_status_serve_outage_backlog_and_resync(status_cluster):
    cluster, port = status_cluster, status_cluster.dns_port
    cluster.stop_status()
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "offline", "dns_name": "offline"})
        await rpc_ok(ssh, "edit", {"id": made["uuid"], "name": "offline2"})
    down_at = time.monotonic()
    cluster.start_status(same_port=True)
    async with Subscriber(cluster.paths.status_socket) as sub:
        stamp, started = await sub.wait_for(event("agent.started"), timeout=40)
        backlog = [m for m in sub.since(0) if m.get("session_id") == made["uuid"]]
        assert [m["type"] for m in backlog] == ["container.created", "container.edited"]
        assert started["data"]["dropped_events"] == 0 and started["data"]["version"] == "0.1.0"
        assert stamp - down_at < 31  # within the 1 s -> 30 s backoff bound
    await eventually_resolves(port, f"offline.{DOMAIN}", ["127.0.0.1"])
    async with connect(cluster) as ssh:
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})


async def test_an_overflowing_queue_reports_what_it_dropped(lone_cluster):
    cluster = lone_cluster
    cluster.agent_args = ["--status-queue-limit", "4"]
    cluster.install()
    cluster.start()
    async with Subscriber(cluster.paths.status_socket) as sub:
        await sub.wait_for(agent_connected)
    cluster.stop_status()
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "burst"})
        for i in range(9):
            await rpc_ok(ssh, "edit", {"id": made["uuid"], "name": f"burst{i}"})
    cluster.start_status(same_port=True)
    async with Subscriber(cluster.paths.status_socket) as sub:
        _, started = await sub.wait_for(event("agent.started"), timeout=40)
        assert started["data"]["dropped_events"] == 6  # 10 events, 4 kept
        kept = [m["data"]["name"] for m in sub.since(0) if m["type"] == "container.edited"]
        assert kept == ["burst5", "burst6", "burst7", "burst8"]  # the newest survive
    assert "6 event(s) were dropped" in cluster.log_text()


async def test_agent_stop_keeps_sessions_and_operators_and_start_announces_itself(status_cluster):
    from tests.test_cli import Terminal

    cluster = status_cluster
    async with connect(cluster) as ssh:
        made = await rpc_ok(ssh, "create", {"name": "keep", "cpus": 0.1, "memory_mb": 100, "start": True})
    term = Terminal(cluster.env)
    try:
        from tests.harness import REPO, python

        term.start(f"cd {REPO} && {python()} -m convocate attach keep; echo EXIT=$?; sleep 60")
        term.wait_for("convocate stand-in claude")
        async with Subscriber(cluster.paths.status_socket) as sub:
            assert cluster.stop() == 0
            await sub.wait_for(event("agent.shutdown"))
            await sub.wait_for(lambda m: m["type"] == "agent.status" and not m["data"]["connected"])
            term.wait_for("Reattaching")
            start = len(sub.messages)
            cluster.start(same_port=True)
            await sub.wait_for(event("agent.started"), start, timeout=40)
        for _ in range(200):  # the CLI retries with a backoff of at most 5 s
            if "attach caller=" in cluster.log_text().rsplit("listening on", 1)[-1]:
                break
            await asyncio.sleep(0.05)
        term.tmux("send-keys", "-t", "t", "after the restart", "Enter")
        term.wait_for("echo: after the restart")
        term.tmux("send-keys", "-t", "t", "C-b", "d")
        term.wait_for("EXIT=0")
    finally:
        term.close()
    async with connect(cluster) as ssh:
        assert (await rpc_ok(ssh, "get", {"id": made["uuid"]}))["running"]
        await rpc_ok(ssh, "kill", {"id": made["uuid"]})
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})


async def test_a_new_agent_key_is_accepted_without_restarting_status_serve(lone_cluster):
    cluster = lone_cluster
    cluster.install()
    auth = cluster.paths.status_authorized_keys
    provisioned = auth.read_text()
    auth.write_text("")
    cluster.start()
    for _ in range(100):  # both sides log the refusal, each in its own time
        if "refused unknown key" in cluster.status_log_text() and "login refused" in cluster.log_text():
            break
        await asyncio.sleep(0.1)
    fingerprint = keys.fingerprint(keys.load_private_key(cluster.paths.agent_to_shell_key))
    assert f"refused unknown key {fingerprint}" in cluster.status_log_text()
    assert "login refused" in cluster.log_text()
    auth.write_text(provisioned)
    async with Subscriber(cluster.paths.status_socket) as sub:
        await sub.wait_for(agent_connected, timeout=20)


async def test_a_burst_from_several_agents_reaches_every_subscriber_whole_and_in_order(lone_cluster):
    cluster = lone_cluster
    cluster.install()
    cluster.start()
    agents, count = [f"burst{i:03d}" for i in range(4)], 3000
    emitters = {agent_id: keys.generate_key() for agent_id in agents}  # one key per agent, bound in the registry
    auth = cluster.paths.status_authorized_keys
    auth.write_text(auth.read_text() + "".join(keys.public_key_line(k) + "\n" for k in emitters.values()))
    for agent_id, key in emitters.items():
        bind_status_key(cluster.paths, agent_id, keys.public_key_line(key))
    host_key = keys.load_private_key(cluster.paths.status_host_key).convert_to_public()

    async def burst(agent_id: str) -> None:
        async with asyncssh.connect("127.0.0.1", cluster.status_port, username="claude",
                                    client_keys=[emitters[agent_id]],
                                    known_hosts=([host_key], [], []), agent_path=None, config=None) as conn:
            process = await conn.create_process(subsystem="convocate-status", encoding=None)
            process.stdin.write(b"".join(
                encode_line(Event.now("agent.heartbeat", agent_id, data={"interval_s": 30, "n": n}).to_wire())
                for n in range(count)))  # one write: status-serve takes it in large reads and batches
            process.stdin.write_eof()
            await process.wait_closed()

    async with Subscriber(cluster.paths.status_socket) as first, Subscriber(cluster.paths.status_socket) as second:
        await asyncio.gather(*(burst(a) for a in agents))
        for sub in (first, second):
            for agent_id in agents:
                await sub.wait_for(lambda m, a=agent_id: m["type"] == "agent.heartbeat" and m["agent_id"] == a
                                   and m["data"]["n"] == count - 1, timeout=60)
            for agent_id in agents:
                seen = [m["data"]["n"] for m in sub.since(0)
                        if m["type"] == "agent.heartbeat" and m["agent_id"] == agent_id]
                assert seen == list(range(count))


async def test_a_wrong_pinned_shell_key_is_refused_by_the_agent(lone_cluster):
    cluster = lone_cluster
    cluster.install()
    cluster.paths.shell_known_host.write_text(keys.public_key_line(keys.generate_key()) + "\n")
    cluster.start()
    for _ in range(100):
        if "does not match the pinned key" in cluster.log_text():
            break
        await asyncio.sleep(0.1)
    assert f"presented a host key that does not match the pinned key in {cluster.paths.shell_known_host}" \
        in cluster.log_text()


async def test_a_silent_agent_goes_stale_and_ls_says_so(lone_cluster):
    cluster = lone_cluster
    cluster.install()
    cluster.start()
    async with connect(cluster) as ssh:
        await rpc_ok(ssh, "settings-set", {"heartbeat_interval_s": 1})
    async with Subscriber(cluster.paths.status_socket) as sub:
        await sub.wait_for(event("agent.heartbeat"), timeout=40)
        os.kill(cluster.process.pid, signal.SIGSTOP)
        try:
            await sub.wait_for(lambda m: m["type"] == "agent.status" and m["data"]["stale"], timeout=15)
            listed = await asyncio.to_thread(cluster.run_role, "convocate", "ls", check=False, timeout=60)
        finally:
            os.kill(cluster.process.pid, signal.SIGCONT)
        assert f"agent {cluster.agent_id}" in listed.stderr and "stale" in listed.stderr
        start = len(sub.messages)
        await sub.wait_for(lambda m: m["type"] == "agent.status" and not m["data"]["stale"], start, timeout=15)


def test_events_command_streams_json_and_text(status_cluster):
    from tests.harness import REPO, python

    def stream(*flags):
        return subprocess.Popen([python(), "-m", "convocate", "events", *flags], env=status_cluster.env, cwd=REPO,
                                stdout=subprocess.PIPE, text=True)

    def next_event(proc, heartbeat):
        """The next line that is not a heartbeat (they come every few seconds, between anything)."""
        while heartbeat in (line := proc.stdout.readline()):
            pass
        return line

    as_json, as_text = stream("--json"), stream()
    try:
        first = json.loads(as_json.stdout.readline())
        assert first["type"] == "agent.status" and first["agent_id"] == status_cluster.agent_id
        assert json.loads(as_json.stdout.readline())["type"] == "replay.done"
        assert f"{status_cluster.agent_id}  agent.status  connected" in as_text.stdout.readline()
        assert "(live from here)" in as_text.stdout.readline()
        made = json.loads(status_cluster.run_role("convocate", "new", "streamed", "--no-start", "--json").stdout)
        line = json.loads(next_event(as_json, '"agent.heartbeat"'))  # a heartbeat may come between
        assert line["type"] == "container.created" and line["session_id"] == made["uuid"]
        assert f"container.created  streamed ({made['uuid'][:8]})" in next_event(as_text, "  agent.heartbeat")
    finally:
        for proc in (as_json, as_text):
            proc.terminate()
            proc.wait(10)
    status_cluster.run_role("convocate", "delete", made["uuid"])
