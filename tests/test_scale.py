"""One agent serves many channels at once on one SSH connection (issue 17 item 5), and its limits.

Real agent, real dockerd and tmux (the stand-in image). No timings are asserted: how fast is
``tests/bench/bench_scale.py``'s business. Wall time of the module: 139 s on the build machine
while a 200-session benchmark ran beside it (load average ~20), most of it starting the ten sessions
of the attach test and the two agents.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import asyncssh
import pytest

from convocate.common import messages
from convocate.common.framing import encode_line
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from convocate.common.sshserver import MAX_CHANNELS
from tests.conftest import connect, make_cluster, rpc_ok
from tests.harness import LocalCluster, python

PING = encode_line({"op": "ping", "params": {}})
#: The documented scale (README, "Capacity"): 200 RPC calls in flight on one connection.
RPC_CHANNELS = 200
#: Attach channels at once on one connection, over a few sessions (several operators per session).
SESSIONS, ATTACHES_PER_SESSION = 10, 5


async def _open_all(conn: asyncssh.SSHClientConnection, subsystem: str, count: int) -> list:
    """``count`` channels of ``subsystem``, opened concurrently and all held open."""
    return list(await asyncio.gather(*(conn.create_process(subsystem=subsystem, encoding=None)
                                       for _ in range(count))))


async def test_one_connection_serves_200_rpc_channels_at_once(cluster: LocalCluster) -> None:
    """Every channel is open before the first request is sent, so the agent holds 200 at once."""
    async with connect(cluster) as conn:
        held = await _open_all(conn, RPC_SUBSYSTEM, RPC_CHANNELS)
        try:
            for process in held:
                process.stdin.write(PING)
                process.stdin.write_eof()
            answers = await asyncio.gather(*(asyncio.wait_for(p.stdout.read(), 60) for p in held))
        finally:
            for process in held:
                process.close()
    agent_ids = {json.loads(a)["result"]["agent_id"] for a in answers if json.loads(a)["ok"]}
    assert agent_ids == {cluster.agent_id}
    assert sum(1 for a in answers if json.loads(a)["ok"]) == RPC_CHANNELS


async def test_one_connection_serves_50_attach_channels_at_once(cluster: LocalCluster, docker_client) -> None:
    """Five operators on each of ten sessions, all on one connection: each sees its screen and its key's echo."""
    async with connect(cluster) as conn:
        made = await asyncio.gather(*(rpc_ok(conn, "create", {"name": f"many-{i}", "cpus": 0.1, "memory_mb": 96,
                                                               "start": True}) for i in range(SESSIONS)))
        sids = [m["uuid"] for m in made]
        held = await _open_all(conn, ATTACH_SUBSYSTEM, SESSIONS * ATTACHES_PER_SESSION)
        try:
            for i, process in enumerate(held):
                process.stdin.write(encode_line({"id": sids[i % SESSIONS], "cols": 80, "rows": 24,
                                                 "read_only": False, "term": "xterm-256color"}))

            async def first_then_echo(process: asyncssh.SSHClientProcess, key: bytes) -> bytes:
                seen = await process.stdout.read(1 << 20)
                assert seen and not seen.startswith(b'{"ok"'), seen[:300]
                await asyncio.sleep(1.0)  # every attach has drawn its first screen before any key
                process.stdin.write(key)
                echoed = b""  # only what came after the key (the first screen may hold the letter)
                while key not in echoed:
                    chunk = await process.stdout.read(1 << 20)
                    assert chunk, f"the attach ended before the echo of {key!r}"
                    echoed += chunk
                return echoed

            keys = [bytes([ord("A") + i // SESSIONS]) for i in range(len(held))]  # one letter per operator
            screens = await asyncio.wait_for(asyncio.gather(*(first_then_echo(p, k) for p, k in zip(held, keys, strict=True))),
                                             120)
            assert all(k in s for k, s in zip(keys, screens, strict=True))
            container = docker_client.containers.get(f"convocate-session-{sids[0]}")
            out = container.exec_run(["tmux", "list-clients", "-F", "#{client_control_mode}"], user="1337:1337",
                                     environment={"HOME": "/home/claude"}).output.decode()
            assert out.split().count("0") == ATTACHES_PER_SESSION  # terminals; the recorder is control mode
        finally:
            for process in held:
                process.close()
            await asyncio.gather(*(rpc_ok(conn, "kill", {"id": sid}) for sid in sids))


async def test_the_channel_over_the_cap_is_refused_at_once_for_attach_too(cluster: LocalCluster) -> None:
    """At MAX_CHANNELS open channels of either subsystem the next one is refused with the message, not left hanging."""
    async with connect(cluster) as conn:
        held = await _open_all(conn, RPC_SUBSYSTEM, MAX_CHANNELS)
        try:
            for subsystem in (ATTACH_SUBSYSTEM, RPC_SUBSYSTEM):
                with pytest.raises(asyncssh.ChannelOpenError) as refused:
                    await asyncio.wait_for(conn.create_process(subsystem=subsystem, encoding=None), 30)
                assert refused.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
                assert refused.value.reason == messages.TOO_MANY_CHANNELS.format(limit=MAX_CHANNELS)
            held.pop().close()
            await asyncio.sleep(0.5)
            process = await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)  # a freed slot is usable
            process.stdin.write(PING)
            process.stdin.write_eof()
            assert json.loads(await asyncio.wait_for(process.stdout.read(), 30))["ok"]
            process.close()
        finally:
            for process in held:
                process.close()
    async with connect(cluster) as other:  # the cap is per connection: another one is served meanwhile
        assert (await rpc_ok(other, "ping"))["agent_id"] == cluster.agent_id


def test_host_cpus_is_what_admission_counts(tmp_path, session_image: str) -> None:
    """``serve --host-cpus`` replaces the probed CPUs in admission and capacity (the bench's 200 sessions)."""
    gen = make_cluster(tmp_path / "root", session_image, agent_args=["--host-cpus", "12.5"])
    cluster = next(gen)
    try:
        async def capacity() -> dict:
            async with connect(cluster) as conn:
                return await rpc_ok(conn, "capacity")

        got = asyncio.run(capacity())
        assert got["host"]["cpus"] == 12.5
        assert got["limits"]["cpus"] == pytest.approx(12.5 * 0.9)
        assert "admission counts 12.5 CPUs (--host-cpus" in cluster.log_text()
    finally:
        gen.close()


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_host_cpus_is_refused_naming_it(tmp_path, value: str) -> None:
    run = subprocess.run([python(), "-m", "convocate_agent", "serve", "--host-cpus", value], capture_output=True,
                         text=True, env={"CONVOCATE_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 2, run
    assert f"argument --host-cpus: {value!r} is not a number of cores above 0" in run.stderr
