"""A mixed cluster: one of our agents beside a protocol-1 (Go v0.0.5) agent double (issue 16, item 4).

The shell is the real ``convocate`` CLI run against a real agent (stand-in image) whose registry also
holds tests/proto1_agent.py, a real SSH server answering v0.0.5's ops, shapes and error texts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from convocate.common import keys
from convocate.common.fsutil import atomic_write
from tests.harness import REPO, LocalCluster, python
from tests.proto1_agent import Proto1Agent
from tests.test_cli import Terminal, cli

pytestmark = pytest.mark.docker

OLD = "gohost05"


@pytest.fixture(scope="module")
def old_agent(cluster: LocalCluster) -> Iterator[Proto1Agent]:
    """A v0.0.5 double on its own event loop thread, registered in ``cluster``'s shell registry."""
    from convocate.registry import register_agent

    shell_key, _ = keys.ensure_private_key(cluster.shell_key_path, comment="convocate shell (local cluster)")
    authorized = cluster.root / "proto1_authorized_keys"
    atomic_write(authorized, (keys.public_key_line(shell_key) + "\n").encode())
    host_key = keys.generate_key()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agent = asyncio.run_coroutine_threadsafe(_make(host_key, authorized), loop).result(10)
    port = asyncio.run_coroutine_threadsafe(agent.start(), loop).result(10)
    register_agent(cluster.paths, OLD, "127.0.0.1", port, keys.public_key_line(host_key), shell_key)
    yield agent
    asyncio.run_coroutine_threadsafe(agent.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def _make(host_key, authorized) -> Proto1Agent:
    return Proto1Agent(OLD, host_key, authorized)


def test_agents_lists_the_old_agent_with_no_capacity(cluster, old_agent):
    done = cli(cluster, "agents")
    row = next(line for line in done.stdout.splitlines() if line.startswith(OLD))
    assert row.split()[2:4] == ["ok", "0.0.5"] and row.split()[4:8] == ["-", "-", "-", "-"]
    assert f"agent {OLD}: protocol 1: no capacity" in done.stderr
    rows = {r["agent_id"]: r for r in json.loads(cli(cluster, "agents", "--json").stdout)}
    assert rows[OLD]["capacity"] is None and rows[OLD]["note"] == "protocol 1: no capacity"
    assert rows[cluster.agent_id]["status"] == "ok" and rows[cluster.agent_id]["capacity"]["limits"]


def test_ls_new_get_attach_delete_on_the_old_agent(cluster, old_agent):
    assert cli(cluster, "ls", "--json").stdout.strip() in ("[]", "")  # the double answers list with null
    made = json.loads(cli(cluster, "new", "old-one", "--agent", OLD, "--json").stdout)
    sid = made["uuid"]
    assert made["agent_id"] == OLD and made["running"] is True  # v0.0.5's shape, read after restart
    create = next(r for r in old_agent.requests if r["op"] == "create")
    assert create["params"] == {"name": "old-one"}  # no start: v0.0.5 refuses unknown fields
    assert [r["op"] for r in old_agent.requests if r["op"] in ("create", "restart")] == ["create", "restart"]

    listed = {s["uuid"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}
    assert listed[sid]["agent_id"] == OLD and listed[sid]["name"] == "old-one"
    assert "edited old-renamed" in cli(cluster, "edit", sid[:8], "--name", "old-renamed").stdout  # edit, then get
    assert old_agent.sessions[sid]["name"] == "old-renamed"

    term = Terminal(cluster.env)
    try:
        term.start(f"cd {REPO} && {python()} -m convocate attach old-renamed; echo EXIT=$?; sleep 60")
        term.wait_for(f"[{sid[:8]}]0:")  # the double's tmux status line: the pipe is up
        term.tmux("send-keys", "-t", "t", "typed-at-the-old-agent", "Enter")
        term.wait_for("typed-at-the-old-agent")
        term.tmux("send-keys", "-t", "t", "C-b", "d")
        assert "EXIT=0" in term.wait_for("EXIT=")
    finally:
        term.close()

    cli(cluster, "kill", sid)
    cli(cluster, "delete", sid)
    assert sid not in old_agent.sessions


def test_a_missing_feature_is_one_clear_error(cluster, old_agent):
    sid = json.loads(cli(cluster, "new", "old-two", "--agent", OLD, "--no-start", "--json").stdout)["uuid"]
    assert old_agent.sessions[sid] and sid not in old_agent.running
    done = cli(cluster, "capture", sid, check=False)
    assert done.returncode != 0
    assert f"agent {OLD} speaks protocol 1 (convocate v0.0.5): it has no capture" in done.stderr
    refused = cli(cluster, "new", "old-three", "--agent", OLD, "--cpus", "0.5", check=False)
    assert refused.returncode == 2 and 'it has no field "cpus" in create' in refused.stderr
    cli(cluster, "delete", sid)


def test_our_agent_keeps_working_beside_it(cluster, old_agent):
    made = json.loads(cli(cluster, "new", "ours", "--agent", cluster.agent_id, "--cpus", "0.2", "--memory", "200",
                          "--json").stdout)
    assert made["agent_id"] == cluster.agent_id and made["state"] == "R"
    assert cli(cluster, "capture", made["uuid"]).returncode == 0  # an op protocol 1 lacks, on our agent
    cli(cluster, "kill", made["uuid"])
    assert "in the agent's trash" in cli(cluster, "delete", made["uuid"]).stdout


def test_errors_without_code_are_mapped_by_their_text(cluster, old_agent):
    from convocate.client import AgentClient
    from convocate.common.errors import BadRequest, Locked, NotFound
    from convocate.registry import load_agent

    async def run() -> None:
        client = AgentClient(load_agent(cluster.paths, OLD))
        old_agent.sessions.clear()  # whatever an earlier test left (nothing is running on the double's loop now)
        old_agent.running.clear()
        try:
            assert await client.call("list") == []  # the double answers null
            with pytest.raises(NotFound, match='does not exist'):
                await client.call("get", {"id": "0" * 8 + "-0000-4000-8000-" + "0" * 12})
            made = await client.call("create", {"name": "busy", "start": True})
            assert made["running"] is True
            with pytest.raises(Locked, match="currently locked"):
                await client.call("delete", {"id": made["uuid"]})
            with pytest.raises(BadRequest, match="it has no logs"):
                await client.call("logs", {"id": made["uuid"]})
            await client.call("kill", {"id": made["uuid"]})
            await client.call("delete", {"id": made["uuid"]})
        finally:
            await client.close()

    asyncio.run(run())
    assert [r["op"] for r in old_agent.requests].count("ping") >= 1


def test_placement_passes_the_old_agent_over(cluster, old_agent):
    done = cli(cluster, "new", "placed", "--cpus", "0.2", "--memory", "200", "--json")
    made = json.loads(done.stdout)
    assert made["agent_id"] == cluster.agent_id  # the protocol-1 agent has no capacity: not judged
    cli(cluster, "kill", made["uuid"])
    cli(cluster, "delete", made["uuid"])
