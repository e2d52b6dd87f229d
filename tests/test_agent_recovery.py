"""An agent that stops or crashes leaves sessions running, and cleans up after itself at the next start."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from convocate.common.model import new_uuid
from convocate_agent.locks import process_start_time
from tests.conftest import connect, rpc_ok
from tests.test_agent_attach import at_prompt, leave, tmux_clients, wait_clients

pytestmark = pytest.mark.docker


async def _attached_to_new(conn, name: str):
    """Create and start session ``name`` (0.2 CPUs, 200 MB), attach to it; returns (id, process, screen) at the prompt."""
    made = await rpc_ok(conn, "create", {"name": name, "cpus": 0.2, "memory_mb": 200, "start": True})
    process, screen = await at_prompt(conn, made["uuid"])
    return made["uuid"], process, screen


async def test_a_killed_agent_restarts_clean(fresh_cluster, docker_client):
    cluster = fresh_cluster
    async with connect(cluster) as conn:
        sid, process, screen = await _attached_to_new(conn, "survivor")
        assert len(tmux_clients(docker_client, sid)) == 1

        # What a crash in the middle of ops leaves: a lock held by the agent itself, a half-built home.
        pid = cluster.process.pid
        cluster.paths.lock_file(sid).write_text(f"{pid}\nrestart {process_start_time(pid)}\n")
        half = cluster.paths.staging_dir / new_uuid()
        half.mkdir(parents=True)
        (half / "partial").write_text("x")
        assert (await rpc_ok(conn, "get", {"id": sid}))["running"]

        cluster.stop(signal.SIGKILL)
        # The session's container belongs to dockerd, not to the agent.
        assert docker_client.containers.get(f"convocate-session-{sid}").status == "running"
        # The dead relay left its tmux client attached.
        assert len(tmux_clients(docker_client, sid)) == 1

    cluster.start()
    await wait_clients(docker_client, sid, 0)
    assert not cluster.paths.lock_file(sid).exists()
    assert list(cluster.paths.staging_dir.iterdir()) == []
    assert "stale_locks=1" in cluster.log_text() and "stale_attaches=1" in cluster.log_text()
    async with connect(cluster) as conn:
        again = await rpc_ok(conn, "get", {"id": sid})
        assert again["running"] and again["state"] == "R" and again["name"] == "survivor"
        process, screen = await at_prompt(conn, sid)
        process.stdin.write(b"still here\r")
        await screen.wait_for(b"echo: still here")
        await leave(process, screen)


async def test_a_restart_detaches_every_tmux_client_the_killed_agent_left_in_every_session(fresh_cluster,
                                                                                           docker_client):
    """Several stale attaches in one session (one ``tmux list-clients`` for them all), several sessions (swept
    at once): every client goes, and the start-up log counts them."""
    cluster = fresh_cluster
    async with connect(cluster) as conn:
        two, _, _ = await _attached_to_new(conn, "two attaches")
        await at_prompt(conn, two)
        one, _, _ = await _attached_to_new(conn, "one attach")
        assert len(tmux_clients(docker_client, two)) == 2 and len(tmux_clients(docker_client, one)) == 1
        cluster.stop(signal.SIGKILL)
    cluster.start()
    await wait_clients(docker_client, two, 0)
    await wait_clients(docker_client, one, 0)
    assert "stale_attaches=3" in cluster.log_text()


async def test_sigterm_stops_the_agent_promptly_and_leaves_sessions_running(fresh_cluster, docker_client):
    cluster = fresh_cluster
    async with connect(cluster) as conn:
        sid, _, screen = await _attached_to_new(conn, "stays")
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = await asyncio.to_thread(cluster.stop, signal.SIGTERM)
        assert status == 0 and loop.time() - started < 5
        await asyncio.wait_for(screen.drain_to_eof(), 10)  # the operator's channel was closed
    assert docker_client.containers.get(f"convocate-session-{sid}").status == "running"
    await wait_clients(docker_client, sid, 0)
    assert "convocate-agent stopped" in cluster.log_text()


def test_serve_without_install_says_what_to_do(tmp_path):
    from tests.harness import LocalCluster

    result = LocalCluster(root=tmp_path, image="x").run_role("convocate_agent", "serve", "--listen", "127.0.0.1:0",
                                                             check=False, timeout=30)
    assert result.returncode == 78
    assert "agent-id is missing: run `convocate-agent install` first" in result.stderr
    assert os.listdir(tmp_path) == []


async def test_an_agent_started_on_the_old_layout_moves_each_homes_session_json_into_its_records(fresh_cluster):
    """Issue 14 upgrade: the metadata an older agent kept in the homes becomes records at start, validated, once."""
    cluster = fresh_cluster
    paths = cluster.paths
    async with connect(cluster) as conn:
        kept = await rpc_ok(conn, "create", {"name": "kept", "dns_name": "kept", "cpus": 0.2, "memory_mb": 128})
    cluster.stop()
    sid = kept["uuid"]
    # What an agent before issue 14 left: the record inside the home, the lock beside it.
    os.rename(paths.session_record(sid), paths.legacy_session_file(sid))
    bad = new_uuid()
    paths.session_dir(bad).mkdir()
    record = json.loads(paths.legacy_session_file(sid).read_text())
    paths.legacy_session_file(bad).write_text(json.dumps(dict(record, uuid=bad, cpus=-4)))
    cluster.start(same_port=True)
    assert "records_migrated=1" in cluster.log_text() and "records_refused=1" in cluster.log_text()
    assert f"session {bad}:" in cluster.log_text()
    assert paths.session_record(sid).is_file() and not paths.legacy_session_file(sid).exists()
    async with connect(cluster) as conn:
        listed = {m["uuid"]: m for m in await rpc_ok(conn, "list")}
        assert set(listed) == {sid}
        assert (listed[sid]["name"], listed[sid]["dns_name"], listed[sid]["cpus"]) == ("kept", "kept", 0.2)
        await rpc_ok(conn, "delete", {"id": sid})
