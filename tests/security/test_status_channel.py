"""Attacks on the status channel and the cluster DNS, with an agent's own status key (issue 14, items 2 and 5).

A real ``convocate status-serve`` (``LocalCluster(status=True)``, no agent process: the attacker
*is* the agent, holding its ``agent_to_shell`` key) and real SSH clients (asyncssh) sending events
on the ``convocate-status`` subsystem; a real local subscriber on ``status.sock``. What must hold:

- a ``dns_name`` carrying a newline, or naming a host outside the cluster's domain, never reaches
  the dnsmasq hosts file (every line there is a foreign line as it was, or one of our own), is not
  passed on to subscribers, and does not cost the agent its link;
- a key is bound to one agent ID by the shell's registry, not by the comment of its
  ``status_authorized_keys`` line; an event claiming another agent is refused; a key the registry
  binds to no agent is refused;
- a second connection with an agent's key, when it closes, does not mark the live link down;
- a local subscriber that writes without newlines is disconnected, and status-serve's memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from asyncssh.packet import String

from convocate.common import keys
from convocate.common.framing import encode_line
from convocate.common.protocol import STATUS_SUBSYSTEM, Event
from convocate.common.timefmt import format_rfc3339
from convocate.dns import is_ours
from tests.harness import LocalCluster, remove_containers
from tests.test_status import Subscriber

DOMAIN = "convocate.internal"
FOREIGN = "10.9.8.7 vm-one.convocate.internal vm-one"
SID_GOOD = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"
SID_BAD = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"
SID_OUT = "3c1f6a2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
OTHER_AGENT = "other123"
NOW = format_rfc3339(time.time_ns())


@pytest.fixture
def shell(tmp_path: Path, session_image: str):
    """status-serve alone, with the agent's keys and registry entry provisioned as init-agent does."""
    cluster = LocalCluster(root=tmp_path / "root", image=session_image, status=True,
                           status_args=["--domain", DOMAIN, "--dnsmasq-pid-file", str(tmp_path / "no-dnsmasq.pid")])
    cluster.install()
    hosts = cluster.paths.dnsmasq_hosts
    hosts.parent.mkdir(parents=True, exist_ok=True)
    hosts.write_text(FOREIGN + "\n")
    cluster.start_status()
    try:
        yield cluster
    finally:
        cluster.stop_all()
        remove_containers(cluster.root)


@contextlib.asynccontextmanager
async def status_link(cluster: LocalCluster, key: asyncssh.SSHKey | None = None
                      ) -> AsyncIterator[tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess]]:
    """An SSH connection to status-serve with ``key`` (the agent's status key by default) and its status channel."""
    host_key = keys.load_private_key(cluster.paths.status_host_key).convert_to_public()
    client_key = key or keys.load_private_key(cluster.paths.agent_to_shell_key)
    conn = await asyncssh.connect("127.0.0.1", cluster.status_port, username="claude", client_keys=[client_key],
                                  known_hosts=([host_key], [], []), agent_path=None, config=None)
    try:
        process = await conn.create_process(subsystem=STATUS_SUBSYSTEM, encoding=None)
        yield conn, process
    finally:
        conn.close()
        await conn.wait_closed()


def send(process: asyncssh.SSHClientProcess, *events: dict | Event) -> None:
    process.stdin.write(b"".join(encode_line(e.to_wire() if isinstance(e, Event) else e) for e in events))


def link_state(agent_id: str, connected: bool):
    return lambda m: m["type"] == "agent.status" and m["agent_id"] == agent_id and m["data"]["connected"] is connected


async def wait_log(cluster: LocalCluster, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in cluster.status_log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"status-serve never logged {text!r}; log:\n{cluster.status_log_text()[-3000:]}")
        await asyncio.sleep(0.1)


async def wait_hosts(cluster: LocalCluster, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := cluster.paths.dnsmasq_hosts.read_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never reached the hosts file:\n{text}")
        await asyncio.sleep(0.1)
    return text


def created(agent_id: str, sid: str, dns_name: object) -> Event:
    return Event.now("container.created", agent_id, sid, {"uuid": sid, "name": "s", "dns_name": dns_name})


async def test_an_injected_or_outside_dns_name_never_reaches_the_hosts_file(shell):
    agent = shell.agent_id
    async with Subscriber(shell.paths.status_socket) as sub, status_link(shell) as (_, process):
        send(process, Event.now("agent.started", agent, data={"version": "x"}),
             created(agent, SID_BAD, "x\n6.6.6.6 evil.example.org"),
             created(agent, SID_OUT, "api.anthropic.com"),
             {"type": "container.created", "agent_id": agent, "session_id": SID_OUT, "timestamp": NOW,
              "data": {"dns_name": ["not", "a", "string"]}},
             {"type": "container.created", "agent_id": agent, "session_id": "../../etc", "timestamp": NOW,
              "data": {"dns_name": "sneaky"}},
             {"type": "agent.heartbeat" * 100, "agent_id": agent, "timestamp": NOW},
             created(agent, SID_GOOD, "good"))
        # The good event after the bad ones: the link survived them.
        await sub.wait_for(lambda m: m["type"] == "container.created" and m.get("session_id") == SID_GOOD)
        text = await wait_hosts(shell, "good.convocate.internal")
        lines = text.splitlines()
        assert lines[0] == FOREIGN
        assert lines[1:] == [f"127.0.0.1 good.{DOMAIN} good # convocate {agent} {SID_GOOD}"], text
        assert all(line == FOREIGN or is_ours(line) for line in lines)
        assert "evil" not in text and "anthropic" not in text and "sneaky" not in text
        seen = [m for m in sub.since(0) if m["type"].startswith("container.") or "heartbeat" in m["type"]]
        assert [m.get("session_id") for m in seen] == [SID_GOOD], seen  # the bad ones were not passed on
        send(process, Event.now("agent.heartbeat", agent, data={"interval_s": 30}))
        await sub.wait_for(lambda m: m["type"] == "agent.heartbeat")
        assert not any(m["type"] == "agent.status" and not m["data"]["connected"] for m in sub.since(0))
    log = shell.status_log_text()
    assert "evil.example.org" in log and "api.anthropic.com" in log and "refused" in log


async def test_the_registry_binds_a_key_to_its_agent_not_the_key_comment(shell):
    agent = shell.agent_id
    # The key's line in status_authorized_keys claims another agent; the registry says whose key it is.
    auth = shell.paths.status_authorized_keys
    key = keys.load_private_key(shell.paths.agent_to_shell_key)
    auth.write_text(keys.public_key_line(key, f"convocate-agent {OTHER_AGENT}") + "\n")
    async with Subscriber(shell.paths.status_socket) as sub, status_link(shell) as (_, process):
        send(process, Event.now("agent.started", OTHER_AGENT, data={"version": "forged"}),
             created(OTHER_AGENT, SID_BAD, "forged"),
             Event.now("agent.started", agent, data={"version": "real"}))
        await sub.wait_for(lambda m: m["type"] == "agent.started" and m["agent_id"] == agent)
        assert not any(m.get("agent_id") == OTHER_AGENT for m in sub.since(0)), sub.since(0)
        await wait_log(shell, f"claiming agent '{OTHER_AGENT}'")
    assert "forged" not in shell.paths.dnsmasq_hosts.read_text()


async def test_a_key_the_registry_binds_to_no_agent_is_refused(shell):
    agent = shell.agent_id
    stranger = keys.generate_key()
    auth = shell.paths.status_authorized_keys
    auth.write_text(auth.read_text() + keys.public_key_line(stranger) + "\n")  # authorized, bound to nobody
    async with Subscriber(shell.paths.status_socket) as sub:
        async with status_link(shell, stranger) as (_, process):
            # status-serve may have closed the channel already (it refuses the key at the channel's
            # open): then the write fails, which is the refusal too; the log line says which.
            with contextlib.suppress(BrokenPipeError):
                send(process, Event.now("agent.started", agent, data={"version": "forged"}),
                     created(agent, SID_BAD, "forged"))
            await wait_log(shell, f"{keys.fingerprint(stranger)} is bound to no agent")
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(process.wait_closed(), 5)  # status-serve closes the channel
        async with status_link(shell) as (_, process):  # the real agent, for a marker after the stranger
            send(process, Event.now("agent.started", agent, data={"version": "real"}))
            await sub.wait_for(lambda m: m["type"] == "agent.started" and m["data"]["version"] == "real")
        assert not any(m.get("data", {}).get("version") == "forged" for m in sub.since(0)
                       if isinstance(m.get("data"), dict)), sub.since(0)
        assert not any(m["type"] == "container.created" for m in sub.since(0))
    assert "forged" not in shell.paths.dnsmasq_hosts.read_text()


async def test_a_second_link_with_the_same_key_does_not_take_the_live_one_down_when_it_closes(shell):
    agent = shell.agent_id
    async with Subscriber(shell.paths.status_socket) as sub, status_link(shell) as (_, live):
        send(live, Event.now("agent.started", agent, data={"version": "live"}))
        await sub.wait_for(link_state(agent, True))
        async with status_link(shell) as (_, second):
            send(second, Event.now("agent.heartbeat", agent, data={"interval_s": 30, "n": "second"}))
            await sub.wait_for(lambda m: m["type"] == "agent.heartbeat" and m["data"].get("n") == "second")
        deadline = time.monotonic() + 10  # until status-serve has seen the second link end
        while not any(t in shell.status_log_text() for t in ("still open", f"agent {agent} disconnected")):
            assert time.monotonic() < deadline, shell.status_log_text()[-3000:]
            await asyncio.sleep(0.1)
        send(live, Event.now("agent.heartbeat", agent, data={"interval_s": 30, "n": "after"}))
        await sub.wait_for(lambda m: m["type"] == "agent.heartbeat" and m["data"].get("n") == "after")
        assert not any(link_state(agent, False)(m) for m in sub.since(0)), \
            [m for m in sub.since(0) if m["type"] == "agent.status"]
    # The live link's own end does mark the agent down.
    async with Subscriber(shell.paths.status_socket) as sub:
        await sub.wait_for(link_state(agent, False))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_local_subscriber_writing_without_newlines_is_cut_off_and_memory_stays_flat(shell):
    pid = shell.status_process.pid
    reader, writer = await asyncio.open_unix_connection(str(shell.paths.status_socket))
    await reader.readuntil(b'"replay.done"')
    before = rss_kib(pid)
    chunk, sent, budget = b"x" * 65536, 0, 64 << 20
    with contextlib.suppress(ConnectionError, OSError):
        while sent < budget:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(chunk)
    try:
        rest = await asyncio.wait_for(reader.read(), 10)  # EOF: status-serve closed it
    except (ConnectionError, OSError):
        rest = b""
    after = rss_kib(pid)
    writer.close()
    assert sent < budget, "status-serve took 64 MiB without a newline and kept the connection"
    assert b"x" not in rest
    assert after - before < 8 * 1024, f"status-serve grew by {after - before} KiB"
    await wait_log(shell, "without a newline")
    # It still serves subscribers afterwards.
    async with Subscriber(shell.paths.status_socket):
        pass


async def test_env_and_pty_are_refused_on_the_status_subsystem(shell):
    """An agent's key buys the status channel, not a way to set status-serve's environment or a terminal."""
    host_key = keys.load_private_key(shell.paths.status_host_key).convert_to_public()
    client_key = keys.load_private_key(shell.paths.agent_to_shell_key)
    async with asyncssh.connect("127.0.0.1", shell.status_port, username="claude", client_keys=[client_key],
                                known_hosts=([host_key], [], []), agent_path=None, config=None) as conn:
        process = await conn.create_process(subsystem=STATUS_SUBSYSTEM, encoding=None,
                                            env={"LD_PRELOAD": "/tmp/evil.so"})
        try:
            # asyncssh sends env without asking for a reply; ask for one to see status-serve's answer.
            assert await process.channel._make_request(b"env", String("PROBE_WITH_REPLY"), String("1")) is False
        finally:
            process.close()
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.create_process(subsystem=STATUS_SUBSYSTEM, encoding=None, term_type="xterm")
        assert refused.value.code == asyncssh.OPEN_REQUEST_PTY_FAILED
    await wait_log(shell, "refused env request 'LD_PRELOAD' from SHA256:")
