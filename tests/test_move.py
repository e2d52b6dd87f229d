"""``convocate move`` against two real agents on loopback (issue 18 item 2).

Both agents share this host's dockerd, as two hosts would not: the export removes the source's
stopped container so the target can make its own of the same name (convocate_agent/transfer.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from convocate import move as move_mod
from convocate.cluster import Cluster
from convocate.common import keys
from convocate.common.errors import Conflict, ConvocateError, NotFound
from convocate.registry import register_agent
from convocate_agent.runtime import LABEL_SESSION
from convocate_agent.transfer import hash_tree
from tests.conftest import make_cluster
from tests.harness import LocalCluster


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, session_image: str) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """Two running agents; A's root is the shell host, and its registry holds both."""
    a_gen = make_cluster(tmp_path_factory.mktemp("move-a"), session_image)
    b_gen = make_cluster(tmp_path_factory.mktemp("move-b"), session_image)
    a, b = next(a_gen), next(b_gen)
    try:
        a.register()
        host_key_line = keys.public_key_line(keys.load_private_key(b.paths.agent_host_key))
        register_agent(a.paths, b.agent_id, "127.0.0.1", b.port, host_key_line, keys.load_private_key(b.shell_key_path))
        yield a, b
    finally:
        for gen in (a_gen, b_gen):
            gen.close()


@contextlib.asynccontextmanager
async def _shell(a: LocalCluster) -> AsyncIterator[Cluster]:
    """The shell host's :class:`Cluster` of ``a``'s registry (both agents), closed when the block ends."""
    cluster = Cluster(a.paths)
    try:
        yield cluster
    finally:
        await cluster.close()


async def _create(cluster: Cluster, agent: LocalCluster, name: str, *, dns_name: str | None = None,
                  **more: object) -> dict:
    """Create session ``name`` on ``agent`` with 0.2 CPUs and 256 MB, and ``dns_name`` and ``more`` if given.

    Returns:
        The agent's record of the new session.
    """
    params: dict[str, object] = {"name": name}
    if dns_name is not None:
        params["dns_name"] = dns_name
    return await cluster.client(agent.agent_id).call("create", params | {"cpus": 0.2, "memory_mb": 256} | more)


def _containers(docker_client: docker.DockerClient, session_id: str) -> list[tuple[str, str]]:
    return [(c.labels.get("convocate.agent", ""), c.status)
            for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session_id}"})]


def _seed(agent: LocalCluster, session_id: str) -> dict[str, dict[str, str]]:
    home = agent.paths.session_dir(session_id)
    (home / ".claude" / "projects").mkdir(parents=True, exist_ok=True)
    (home / ".claude" / "projects" / "conv.jsonl").write_bytes(b'{"type":"user","text":"remember 42"}\n' * 500)
    (home / "data.bin").write_bytes(os.urandom(1 << 20))
    os.symlink("/etc/shadow", home / "shadow-link")  # hostile: must not travel
    rec = agent.paths.session_recordings_dir(session_id)
    rec.mkdir(parents=True, exist_ok=True)
    (rec / "2026-12-07T10-00-00Z.cast").write_text('{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "hi"]\n')
    return {"home": hash_tree(home), "rec": hash_tree(rec)}


async def test_a_stopped_session_moves_byte_identical_with_its_recording(pair, tmp_path: Path) -> None:
    a, b = pair

    async with _shell(a) as cluster:
        made = await _create(cluster, a, "mv-stopped", dns_name="mv-stopped")
        sid = made["uuid"]
        before = _seed(a, sid)
        err = io.StringIO()
        result = await move_mod.move(cluster, "mv-stopped", b.agent_id, state_dir=tmp_path, progress_out=err)
        assert result["to"] == b.agent_id and result["files"] >= 3
        got = await cluster.client(b.agent_id).call("get", {"id": sid})
        assert (got["name"], got["dns_name"], got["running"], got["cpus"], got["memory_mb"]) == \
            ("mv-stopped", "mv-stopped", False, 0.2, 256)
        with pytest.raises(NotFound):
            await cluster.client(a.agent_id).call("get", {"id": sid})
        trash = await cluster.client(a.agent_id).call("trash")
        assert any(e["trash_id"].startswith(sid) for e in trash)
        assert hash_tree(b.paths.session_dir(sid)) == {k: v for k, v in before["home"].items()}
        assert hash_tree(b.paths.session_recordings_dir(sid)) == before["rec"]
        assert not os.path.lexists(b.paths.session_dir(sid) / "shadow-link")
        assert not (tmp_path / "moves" / f"{sid}.json").exists()
        assert "moving" in err.getvalue()
        await cluster.client(b.agent_id).call("delete", {"id": sid})


async def test_a_running_session_moves_and_runs_on_the_target(pair, tmp_path: Path, docker_client) -> None:
    a, b = pair

    async with _shell(a) as cluster:
        made = await _create(cluster, a, "mv-running", dns_name="mv-running", start=True)
        sid, port = made["uuid"], made.get("port")
        before = _seed(a, sid)
        result = await move_mod.move(cluster, sid, b.agent_id, state_dir=tmp_path, progress_out=io.StringIO())
        assert result["running"] is True
        got = await cluster.client(b.agent_id).call("get", {"id": sid})
        assert (got["uuid"], got["name"], got["dns_name"], got.get("port"), got["running"]) == \
            (sid, "mv-running", "mv-running", port, True)
        assert _containers(docker_client, sid) == [(b.agent_id, "running")]
        assert any(e["trash_id"].startswith(sid) for e in await cluster.client(a.agent_id).call("trash"))
        assert hash_tree(b.paths.session_recordings_dir(sid)).items() >= before["rec"].items()
        await cluster.client(b.agent_id).call("kill", {"id": sid})
        await cluster.client(b.agent_id).call("delete", {"id": sid})


async def test_a_refused_import_rolls_back_and_the_source_runs_again(pair, tmp_path: Path, docker_client) -> None:
    """Failure before the target has a copy: its DNS name is taken there, so the import is refused."""
    a, b = pair

    async with _shell(a) as cluster:
        made = await _create(cluster, a, "mv-clash", dns_name="mv-clash", start=True)
        sid = made["uuid"]
        blocker = await _create(cluster, b, "blocker", dns_name="mv-clash")
        with pytest.raises(Conflict):
            await move_mod.move(cluster, sid, b.agent_id, state_dir=tmp_path, progress_out=io.StringIO())
        got = await cluster.client(a.agent_id).call("get", {"id": sid})
        assert got["running"] is True
        with pytest.raises(NotFound):
            await cluster.client(b.agent_id).call("get", {"id": sid})
        assert _containers(docker_client, sid) == [(a.agent_id, "running")]
        assert not b.paths.staging_dir.exists() or list(b.paths.staging_dir.iterdir()) == []
        assert not (tmp_path / "moves" / f"{sid}.json").exists()
        await cluster.client(b.agent_id).call("delete", {"id": blocker["uuid"]})
        await cluster.client(a.agent_id).call("kill", {"id": sid})
        await cluster.client(a.agent_id).call("delete", {"id": sid})


async def test_an_interrupted_move_after_the_import_is_finished_by_resume(pair, tmp_path: Path) -> None:
    """The shell died after the target verified its copy but before the journal said so."""
    a, b = pair

    async with _shell(a) as cluster:
        made = await _create(cluster, a, "mv-resume")
        sid = made["uuid"]
        source, target = cluster.client(a.agent_id), cluster.client(b.agent_id)
        journal = move_mod.MoveJournal(sid, "mv-resume", a.agent_id, b.agent_id, False, "stopped", 0.0)
        move_mod.write_journal(tmp_path, journal)
        await move_mod.transfer(source, target, sid, io.StringIO())  # both hold it now; the journal lags
        where = await move_mod.finish(cluster, move_mod.read_journal(tmp_path, sid), tmp_path, lambda s: None)
        assert where == b.agent_id
        with pytest.raises(NotFound):
            await source.call("get", {"id": sid})
        assert (await target.call("get", {"id": sid}))["name"] == "mv-resume"
        assert move_mod.read_journal(tmp_path, sid) is None
        await target.call("delete", {"id": sid})


def test_dry_run_prints_the_plan_and_does_nothing(pair) -> None:
    a, b = pair
    made = a.run_role("convocate", "new", "mv-dry", "--agent", a.agent_id, "--no-start", check=False)
    assert made.returncode == 0, made.stderr
    done = a.run_role("convocate", "move", "mv-dry", "--to", b.agent_id, "--dry-run", check=False)
    assert done.returncode == 0, done.stderr
    assert f"from {a.agent_id} to {b.agent_id}" in done.stdout and "SHA-256" in done.stdout
    listed = a.run_role("convocate", "ls", "--json", check=False)
    assert '"mv-dry"' in listed.stdout and a.agent_id in listed.stdout
    a.run_role("convocate", "delete", "mv-dry", check=False)


async def test_killing_the_target_mid_transfer_leaves_the_source_copy_the_only_one(pair, tmp_path: Path,
                                                                                  docker_client) -> None:
    """kill -9 of the target while the tar streams: the move stays pending (the target cannot say
    whether it kept a copy), nothing runs anywhere, the target's restart sweeps its staging copy,
    and ``--resume`` rolls back: the source runs again."""
    import asyncio
    import signal

    a, b = pair

    async with _shell(a) as cluster:
        made = await _create(cluster, a, "mv-kill", start=True)
        sid = made["uuid"]
        with open(a.paths.session_dir(sid) / "big.sparse", "wb") as f:
            f.truncate(400 << 20)  # read back as zeros: 400 MiB on the wire
        task = asyncio.create_task(move_mod.move(cluster, sid, b.agent_id, state_dir=tmp_path,
                                                 progress_out=io.StringIO()))
        staged = b.paths.staging_dir / f"{sid}.move"
        for _ in range(600):
            if staged.exists() or task.done():
                break
            await asyncio.sleep(0.05)
        assert staged.exists(), "the import never began"
        b.stop(signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - a closed channel or an unreachable agent
            await task
        journal = move_mod.read_journal(tmp_path, sid)
        assert journal is not None and journal.step == "stopped"
        assert [s for _, s in _containers(docker_client, sid) if s == "running"] == []
        b.start(same_port=True)
        assert not staged.exists()  # the target's recovery swept it
        where = await move_mod.finish(cluster, journal, tmp_path, lambda s: None)
        assert where == a.agent_id
        assert (await cluster.client(a.agent_id).call("get", {"id": sid}))["running"] is True
        assert _containers(docker_client, sid) == [(a.agent_id, "running")]
        with pytest.raises(NotFound):
            await cluster.client(b.agent_id).call("get", {"id": sid})
        await cluster.client(a.agent_id).call("kill", {"id": sid})
        await cluster.client(a.agent_id).call("delete", {"id": sid})


def _running_copies(docker_client: docker.DockerClient, session_id: str) -> list[str]:
    """The agents whose container of the session runs (a move must never make it two)."""
    return [agent for agent, status in _containers(docker_client, session_id) if status == "running"]


async def _stopped_for_move(cluster: Cluster, a: LocalCluster, b: LocalCluster, name: str,
                            state_dir: Path) -> tuple[str, move_mod.MoveJournal]:
    """A running session on ``a``, taken through a move's steps 1-2 (planned, stopped) as move does."""
    made = await _create(cluster, a, name, start=True)
    sid = made["uuid"]
    journal = move_mod.MoveJournal(sid, name, a.agent_id, b.agent_id, True, "planned", 0.0)
    move_mod.write_journal(state_dir, journal)
    await cluster.client(a.agent_id).call("override", {"id": sid, "moving_to": b.agent_id})
    await cluster.client(a.agent_id).call("kill", {"id": sid})
    journal.step = "stopped"
    move_mod.write_journal(state_dir, journal)
    return sid, journal


async def test_a_shell_killed_before_the_transfer_is_rolled_back_by_resume(pair, tmp_path: Path,
                                                                          docker_client) -> None:
    """Step 2 done, step 3 never begun: the source copy is the one, and it runs again."""
    a, b = pair

    async with _shell(a) as cluster:
        sid, journal = await _stopped_for_move(cluster, a, b, "mv-before", tmp_path)
        assert _running_copies(docker_client, sid) == []
        where = await move_mod.finish(cluster, move_mod.read_journal(tmp_path, sid), tmp_path, lambda s: None)
        assert where == a.agent_id and move_mod.read_journal(tmp_path, sid) is None
        assert (await cluster.client(a.agent_id).call("get", {"id": sid}))["running"] is True
        assert _running_copies(docker_client, sid) == [a.agent_id]
        with pytest.raises(NotFound):
            await cluster.client(b.agent_id).call("get", {"id": sid})
        await cluster.client(a.agent_id).call("kill", {"id": sid})
        await cluster.client(a.agent_id).call("delete", {"id": sid})


async def test_a_shell_killed_after_the_start_on_the_target_finishes_with_the_source_in_the_trash(
        pair, docker_client) -> None:
    """Step 5 done, step 6 not: one copy runs (the target's), the source's is stopped. Both agents
    hold the session, and ``convocate move --resume NAME`` (its journal says which is which) trashes
    the source's."""
    import asyncio

    a, b = pair
    state_dir = a.paths.shell_state_dir  # where the CLI keeps its journals

    async with _shell(a) as cluster:
        sid, journal = await _stopped_for_move(cluster, a, b, "mv-started", state_dir)
        source, target = cluster.client(a.agent_id), cluster.client(b.agent_id)
        await move_mod.transfer(source, target, sid, io.StringIO())
        journal.step = "imported"
        move_mod.write_journal(state_dir, journal)
        await target.call("restart", {"id": sid})
        journal.step = "started"
        move_mod.write_journal(state_dir, journal)
        assert _running_copies(docker_client, sid) == [b.agent_id]  # the interrupted state: one runs
        assert (await source.call("get", {"id": sid}))["running"] is False
        # until it is finished, nothing may start (or remove) one of the two copies
        refused = await asyncio.to_thread(a.run_role, "convocate", "restart", "mv-started", check=False)
        assert refused.returncode != 0 and "mv-started is being moved from" in refused.stderr, refused.stderr
        assert "convocate move --resume mv-started" in refused.stderr
        with pytest.raises(Conflict, match="is being moved to agent"):  # the source agent refuses too
            await source.call("restart", {"id": sid})
        assert _running_copies(docker_client, sid) == [b.agent_id]
        done = await asyncio.to_thread(a.run_role, "convocate", "move", "mv-started", "--resume", check=False)
        assert done.returncode == 0 and f"mv-started is on {b.agent_id}" in done.stdout, done.stderr
        assert move_mod.read_journal(state_dir, sid) is None
        with pytest.raises(NotFound):
            await source.call("get", {"id": sid})
        assert any(e["trash_id"].startswith(sid) for e in await source.call("trash"))
        assert _running_copies(docker_client, sid) == [b.agent_id]
        await target.call("kill", {"id": sid})
        await target.call("delete", {"id": sid})


async def test_the_source_agent_killed_during_the_trash_keeps_the_move_pending_until_it_is_back(
        pair, tmp_path: Path, docker_client) -> None:
    """kill -9 of the source when only its trash step is left: the target's copy runs, the move
    stays pending (journal at ``started``), the restarted source does not start its stopped copy,
    and resume puts that copy in the trash."""
    import signal

    a, b = pair

    async with _shell(a) as cluster:
        sid, journal = await _stopped_for_move(cluster, a, b, "mv-trash", tmp_path)
        source, target = cluster.client(a.agent_id), cluster.client(b.agent_id)
        await move_mod.transfer(source, target, sid, io.StringIO())
        await target.call("restart", {"id": sid})
        journal.step = "started"
        move_mod.write_journal(tmp_path, journal)
        a.stop(signal.SIGKILL)
        try:
            with pytest.raises(ConvocateError):
                await move_mod.finish(cluster, move_mod.read_journal(tmp_path, sid), tmp_path, lambda s: None)
            assert move_mod.read_journal(tmp_path, sid).step == "started"
            assert _running_copies(docker_client, sid) == [b.agent_id]
        finally:
            a.start(same_port=True)
        assert (await source.call("get", {"id": sid}))["running"] is False  # recovery starts nothing
        with pytest.raises(Conflict, match="is being moved to agent"):  # and the mark outlived the agent
            await source.call("restart", {"id": sid})
        where = await move_mod.finish(cluster, move_mod.read_journal(tmp_path, sid), tmp_path, lambda s: None)
        assert where == b.agent_id
        with pytest.raises(NotFound):
            await source.call("get", {"id": sid})
        assert _running_copies(docker_client, sid) == [b.agent_id]
        await target.call("kill", {"id": sid})
        await target.call("delete", {"id": sid})


def test_an_attached_operator_is_detached_by_the_move_and_attached_again_on_the_target(pair, tmp_path: Path) -> None:
    """``convocate attach`` in a real terminal: the move detaches it with a line saying why, and it
    attaches again by itself once the session runs on the target, where typing reaches it."""
    from tests.harness import REPO, python
    from tests.test_cli import Terminal

    a, b = pair
    made = a.run_role("convocate", "new", "mv-follow", "--agent", a.agent_id, "--cpus", "0.2", "--memory", "256",
                      check=False)
    assert made.returncode == 0, made.stderr
    term = Terminal(a.env)
    try:
        term.start(f"cd {REPO} && {python()} -m convocate attach mv-follow; echo EXIT=$?; sleep 600")
        output = tmp_path / "terminal.out"  # all it showed: tmux redraws the screen at each attach
        term.tmux("pipe-pane", "-t", "t", f"cat >> {output}")
        term.wait_for("convocate stand-in claude", timeout=30)
        moved = a.run_role("convocate", "move", "mv-follow", "--to", b.agent_id, check=False)
        assert moved.returncode == 0, moved.stderr
        deadline = time.monotonic() + 60
        while f"mv-follow runs on agent {b.agent_id}; attached there" not in (told := output.read_text()):
            assert time.monotonic() < deadline, told
            time.sleep(0.1)
        assert f"mv-follow is moving away from agent {a.agent_id}" in told, told
        term.tmux("send-keys", "-t", "t", "typed after the move", "Enter")
        term.wait_for("echo: typed after the move", timeout=30)
        on_b = b.run_role("convocate", "ls", "--json", check=False)
        assert '"mv-follow"' in on_b.stdout and b.agent_id in on_b.stdout
        term.tmux("send-keys", "-t", "t", "C-b", "d")
        screen = term.wait_for("EXIT=", timeout=30)
        assert "EXIT=0" in screen and "detached from mv-follow; it keeps running" in screen, screen
    finally:
        term.close()
        a.run_role("convocate", "kill", "mv-follow", check=False)
        a.run_role("convocate", "delete", "mv-follow", check=False)


def test_to_auto_moves_a_stopped_session_where_placement_puts_it(pair) -> None:
    a, b = pair
    made = a.run_role("convocate", "new", "mv-auto", "--agent", a.agent_id, "--no-start", "--cpus", "0.2",
                      "--memory", "256", check=False)
    assert made.returncode == 0, made.stderr
    try:
        done = a.run_role("convocate", "move", "mv-auto", "--to", "auto", "--json", check=False)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["to"], result["running"]) == (b.agent_id, False), result
        again = a.run_role("convocate", "move", "mv-auto", "--to", b.agent_id, check=False)
        assert again.returncode == 2 and f'is on agent "{b.agent_id}" already' in again.stderr, again.stderr
    finally:
        a.run_role("convocate", "delete", "mv-auto", check=False)


async def test_resume_without_a_journal_clears_a_left_move_mark(pair) -> None:
    """A move mark whose journal is gone (another shell host) refuses restart until --resume clears it."""
    import asyncio

    a, b = pair

    async with _shell(a) as cluster:
        source = cluster.client(a.agent_id)
        made = await source.call("create", {"name": "mv-left", "cpus": 0.2, "memory_mb": 256})
        sid = made["uuid"]
        await source.call("override", {"id": sid, "moving_to": b.agent_id})
        with pytest.raises(Conflict, match="is being moved to agent"):
            await source.call("restart", {"id": sid})
        done = await asyncio.to_thread(a.run_role, "convocate", "move", "mv-left", "--resume", check=False)
        assert done.returncode == 0 and "no interrupted move of mv-left" in done.stderr, done.stderr
        assert (await source.call("restart", {"id": sid}))["running"] is True
        await source.call("kill", {"id": sid})
        await source.call("delete", {"id": sid})
