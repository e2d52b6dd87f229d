"""The RPC channel's limits against a real agent, with the shell's own key (issue 14 item 4).

The attacker here holds a key the agent accepts (a compromised shell-side
process, or a session that got hold of one): it may call ops, but it must not
hold channels open forever, open them without bound, smuggle an environment
or a terminal into subsystems that have no use for them, or slip an ID past
validation with a trailing newline. The last test attacks the operator's CLI:
a session named like another session's UUID prefix.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncssh
import pytest
from asyncssh.packet import String

from convocate.common import messages
from convocate.common.framing import encode_line
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from convocate.common.sshserver import MAX_CHANNELS
from convocate_agent.rpc import REQUEST_TIMEOUT_S
from tests.conftest import connect, openssh_args, rpc, rpc_ok, run_openssh
from tests.harness import LocalCluster

PING = encode_line({"op": "ping", "params": {}})


async def _read_all(process: asyncssh.SSHClientProcess, timeout: float) -> bytes:
    return await asyncio.wait_for(process.stdout.read(), timeout)


async def _trickled(ssh: asyncssh.SSHClientConnection, subsystem: str, start: bytes, byte: bytes
                    ) -> tuple[bytes, float]:
    """Open ``subsystem``, send ``start`` and then ``byte`` once a second, never a newline.

    Returns:
        All the agent wrote before it closed the channel, and the seconds that took.
    """
    process = await ssh.create_process(subsystem=subsystem, encoding=None)
    started = time.monotonic()
    process.stdin.write(start)

    async def trickle() -> None:  # a byte a second must not buy more time
        while True:
            await asyncio.sleep(1)
            process.stdin.write(byte)

    trickler = asyncio.ensure_future(trickle())
    try:
        out = await _read_all(process, REQUEST_TIMEOUT_S + 5)
    finally:
        trickler.cancel()
        process.close()
    return out, time.monotonic() - started


async def test_an_unterminated_request_line_is_closed_after_the_request_timeout(ssh) -> None:
    out, elapsed = await _trickled(ssh, RPC_SUBSYSTEM, b'{"op": "ping", "params": {', b" ")
    lines = out.splitlines()
    assert len(lines) == 1, out
    response = json.loads(lines[0])
    detail = messages.RPC_REQUEST_TIMEOUT.format(seconds=REQUEST_TIMEOUT_S)
    assert response == {"ok": False, "error": messages.MALFORMED_REQUEST.format(detail=detail), "code": "bad_request"}
    assert REQUEST_TIMEOUT_S - 0.5 <= elapsed <= REQUEST_TIMEOUT_S + 3, elapsed


async def test_an_attach_header_that_never_ends_is_refused_after_the_request_timeout(ssh) -> None:
    """A silent or trickling attach channel must not hold one of the agent's channel slots for ever."""
    out, elapsed = await _trickled(ssh, ATTACH_SUBSYSTEM, b'{"id": "', b"0")  # never the rest of the header
    detail = messages.RPC_REQUEST_TIMEOUT.format(seconds=REQUEST_TIMEOUT_S)
    assert json.loads(out) == {"ok": False, "error": messages.ATTACH_BAD_HEADER.format(detail=detail),
                               "code": "bad_request"}, out
    assert REQUEST_TIMEOUT_S - 0.5 <= elapsed <= REQUEST_TIMEOUT_S + 3, elapsed


async def test_a_kept_open_channel_gets_the_timeout_again_after_each_response(ssh) -> None:
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    try:
        for _ in range(2):  # the multi-request form (DESIGN §3 ext) still works within the timeout
            process.stdin.write(PING)
            line = await asyncio.wait_for(process.stdout.readline(), 10)
            assert json.loads(line)["ok"], line
            await asyncio.sleep(REQUEST_TIMEOUT_S / 2)
        out = await _read_all(process, REQUEST_TIMEOUT_S + 3)  # then silence: closed
    finally:
        process.close()
    assert json.loads(out)["code"] == "bad_request", out


async def test_a_connection_holds_at_most_max_channels(cluster: LocalCluster) -> None:
    async with connect(cluster) as conn:
        held = [await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None) for _ in range(MAX_CHANNELS)]
        try:
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
            assert refused.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
            assert refused.value.reason == messages.TOO_MANY_CHANNELS.format(limit=MAX_CHANNELS)
            held.pop().close()
            await asyncio.sleep(0.5)
            assert (await rpc(conn, "ping"))["ok"]  # a slot freed is a slot usable again
        finally:
            for process in held:
                process.close()
    assert f"refused channel {MAX_CHANNELS + 1} from" in cluster.log_text()


async def test_env_is_refused_on_the_rpc_subsystem(cluster: LocalCluster, ssh) -> None:
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None, env={"LD_PRELOAD": "/tmp/evil.so"})
    try:
        # asyncssh sends env without asking for a reply; ask for one to see the agent's answer.
        assert await process.channel._make_request(b"env", String("PROBE_WITH_REPLY"), String("1")) is False
        process.stdin.write(PING)
        process.stdin.write_eof()
        assert json.loads(await _read_all(process, 10))["ok"]
    finally:
        process.close()
    assert "refused env request 'LD_PRELOAD' from SHA256:" in cluster.log_text()


async def test_a_pty_is_refused_on_the_rpc_subsystem(ssh) -> None:
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None, term_type="xterm-256color")
    assert refused.value.code == asyncssh.OPEN_REQUEST_PTY_FAILED


def test_openssh_setenv_and_tty_are_refused_on_the_rpc_subsystem(cluster: LocalCluster, tmp_path) -> None:
    base = openssh_args(cluster, tmp_path)
    with_env = run_openssh([*base[:-1], "-o", "SetEnv=CONVOCATE_PROBE=1", base[-1], "-s", RPC_SUBSYSTEM], PING)
    assert with_env.returncode == 0 and json.loads(with_env.stdout)["ok"], with_env
    assert "refused env request 'CONVOCATE_PROBE' from SHA256:" in cluster.log_text()
    with_tty = run_openssh([*base[:-1], "-tt", base[-1], "-s", RPC_SUBSYSTEM], PING)
    assert b"PTY allocation request failed" in with_tty.stderr, with_tty


@pytest.mark.parametrize("op, params", [
    ("get", {"id": "{uuid}\n"}),
    ("kill", {"id": "{uuid}\n"}),
    ("restore", {"trash_id": "{uuid}.1700000000000000000\n"}),
    ("create", {"name": "trailing-dns", "dns_name": "ok\n"}),
])
async def test_a_trailing_newline_does_not_pass_validation(cluster: LocalCluster, ssh, op: str,
                                                          params: dict) -> None:
    sid = (await rpc_ok(ssh, "create", {"name": f"nl-{op}"}))["uuid"]
    try:
        response = await rpc(ssh, op, {k: v.format(uuid=sid) for k, v in params.items()})
    finally:
        await rpc(ssh, "delete", {"id": sid})
    assert response["ok"] is False and response["code"] == "bad_request", response
    if "id" in params:  # shown escaped, in the response and in the agent's log: no forged line
        bad = messages.BAD_UUID.format(field="id", value=f"{sid}\\n")
        assert response["error"] == messages.DECODE_PARAMS.format(detail=bad), response
        assert f"rpc op={op} caller=SHA256:" in cluster.log_text()
        assert not any(line.startswith('" is not a UUIDv4') for line in cluster.log_text().splitlines())


def test_a_session_named_like_another_sessions_uuid_prefix_is_ambiguous(cluster: LocalCluster) -> None:
    def cli(*args: str):
        return cluster.run_role("convocate", *args, check=False, timeout=120)

    target = json.loads(cli("new", "prefix-target", "--no-start", "--json").stdout)
    prefix = target["uuid"][:8]
    decoy = json.loads(cli("new", prefix, "--no-start", "--json").stdout)
    try:
        deleted = cli("delete", prefix)
        assert deleted.returncode == 2, deleted
        assert "matches 2 sessions" in deleted.stderr and messages.AMBIGUOUS_SESSION.split("{")[0] in deleted.stderr
        listed = {s["uuid"] for s in json.loads(cli("ls", "--json").stdout)}
        assert {target["uuid"], decoy["uuid"]} <= listed  # neither was deleted
        assert cli("delete", target["uuid"]).returncode == 0  # the full UUID still names one session
    finally:
        for made in (target, decoy):
            cli("delete", made["uuid"])
