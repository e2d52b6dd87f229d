"""The attach subsystem: typing, output, resize, detach, observers, vanished operators."""

from __future__ import annotations

import asyncio
import json

import pytest

from convocate.common.framing import encode_line
from convocate.common.protocol import ATTACH_SUBSYSTEM
from tests.conftest import connect, rpc_ok

pytestmark = pytest.mark.docker

DETACH = b"\x02d"  # tmux prefix C-b, then d


async def detach(process) -> None:
    """Press the detach key as a person would.

    tmux takes keys that arrive less than ``assume-paste-time`` (1 ms) after
    the previous ones for a paste and does not run bindings for them; a script
    that answers an echo at once can be that fast.
    """
    await asyncio.sleep(0.02)
    process.stdin.write(DETACH)


class Screen:
    """Collects what an attach channel shows."""

    def __init__(self, process):
        self.process = process
        self.data = b""

    async def wait_for(self, needle: bytes, timeout: float = 10.0) -> None:
        async def pump():
            while needle not in self.data:
                chunk = await self.process.stdout.read(65536)
                if not chunk:
                    raise AssertionError(f"channel ended before {needle!r}; saw {self.data[-500:]!r}")
                self.data += chunk

        await asyncio.wait_for(pump(), timeout)

    async def drain_to_eof(self, timeout: float = 10.0) -> None:
        async def pump():
            while chunk := await self.process.stdout.read(65536):
                self.data += chunk

        try:
            await asyncio.wait_for(pump(), timeout)
        except TimeoutError:
            raise AssertionError(f"channel still open after {timeout} s; last output {self.data[-300:]!r}") from None


async def open_attach(conn, sid, *, cols=100, rows=30, read_only=False, after_header=b""):
    process = await conn.create_process(subsystem=ATTACH_SUBSYSTEM, encoding=None)
    process.stdin.write(encode_line({"id": sid, "cols": cols, "rows": rows, "read_only": read_only,
                                     "term": "xterm-256color"}) + after_header)
    return process, Screen(process)


async def at_prompt(conn, sid, **header):
    """:func:`open_attach` (``header`` as there), then wait for the session's prompt; returns (process, screen)."""
    process, screen = await open_attach(conn, sid, **header)
    await screen.wait_for(b"> ")
    return process, screen


async def leave(process, screen: Screen) -> None:
    """Detach as a person would, then read the channel to its end."""
    await detach(process)
    await screen.drain_to_eof()


def tmux_clients(docker_client, sid):
    container = docker_client.containers.get(f"convocate-session-{sid}")
    code, out = container.exec_run(["tmux", "list-clients", "-F",
                                    "#{client_control_mode} #{client_width}x#{client_height} #{client_readonly}"],
                                   user="1337:1337", environment={"HOME": "/home/claude"})
    assert code == 0, out
    # terminal clients only: the agent's recorder is a control-mode client (issue 19)
    return [line[2:] for line in out.decode().split("\n")[:-1] if line.startswith("0 ")]


async def call(cluster, op, params):
    async with connect(cluster) as conn:
        return await rpc_ok(conn, op, params)


@pytest.fixture(scope="module")
def session(cluster):
    """One running session shared by the module's attach tests."""
    made = asyncio.run(call(cluster, "create", {"name": "attach", "cpus": 0.2, "memory_mb": 256, "start": True}))
    yield made["uuid"]
    asyncio.run(call(cluster, "kill", {"id": made["uuid"]}))


async def wait_clients(docker_client, sid, count, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        clients = tmux_clients(docker_client, sid)
        if len(clients) == count:
            return clients
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} tmux clients, have {clients}")


async def test_typing_reaches_the_session_and_output_comes_back(ssh, session, docker_client):
    process, screen = await at_prompt(ssh, session)
    process.stdin.write(b"typed over ssh\r")
    await screen.wait_for(b"echo: typed over ssh")
    assert tmux_clients(docker_client, session) == ["100x30 0"]
    listed = {s["uuid"]: s for s in await rpc_ok(ssh, "list")}[session]
    assert listed["state"] == "C" and listed["attached"] and listed["attached_count"] == 1
    await detach(process)
    await screen.drain_to_eof()
    assert b"[detached" in screen.data
    await asyncio.wait_for(process.wait_closed(), 10)
    after = await rpc_ok(ssh, "get", {"id": session})
    assert after["running"] and after["state"] == "R" and after["attached_count"] == 0
    await wait_clients(docker_client, session, 0)


async def test_bytes_sent_with_the_header_are_not_lost(ssh, session):
    process, screen = await open_attach(ssh, session, after_header=b"right after the header\r")
    await screen.wait_for(b"echo: right after the header")
    await leave(process, screen)


async def test_window_change_resizes_the_tmux_client(ssh, session, docker_client):
    process, screen = await at_prompt(ssh, session, cols=90, rows=25)
    assert tmux_clients(docker_client, session) == ["90x25 0"]
    process.change_terminal_size(132, 43)
    for _ in range(100):
        if tmux_clients(docker_client, session) == ["132x43 0"]:
            break
        await asyncio.sleep(0.05)
    assert tmux_clients(docker_client, session) == ["132x43 0"]
    await leave(process, screen)


async def test_zero_size_means_80x24(ssh, session, docker_client):
    process, screen = await at_prompt(ssh, session, cols=0, rows=0)
    assert tmux_clients(docker_client, session) == ["80x24 0"]
    await leave(process, screen)


async def test_an_observer_sees_output_but_cannot_type(ssh, session, docker_client):
    writer, writer_screen = await open_attach(ssh, session)
    observer, observer_screen = await open_attach(ssh, session, read_only=True)
    await observer_screen.wait_for(b"> ")
    observer.stdin.write(b"from the observer\r")
    writer.stdin.write(b"from the writer\r")
    await observer_screen.wait_for(b"echo: from the writer")
    assert sorted(c.split()[1] for c in tmux_clients(docker_client, session)) == ["0", "1"]
    assert (await rpc_ok(ssh, "get", {"id": session}))["attached_count"] == 2
    screen = (await rpc_ok(ssh, "capture", {"id": session, "lines": 200}))["text"]
    assert "echo: from the writer" in screen and "from the observer" not in screen
    for process, scr in ((observer, observer_screen), (writer, writer_screen)):
        await leave(process, scr)


async def test_background_detaches_every_operator(ssh, session, docker_client):
    processes = [await open_attach(ssh, session) for _ in range(2)]
    for _, screen in processes:
        await screen.wait_for(b"> ")
    await rpc_ok(ssh, "background", {"id": session})
    for _, screen in processes:
        await screen.drain_to_eof()
        assert b"[detached" in screen.data
    assert (await rpc_ok(ssh, "get", {"id": session}))["state"] == "R"


async def test_override_detaches_the_other_operator(ssh, session, cluster):
    async with connect(cluster) as other:
        process, screen = await at_prompt(other, session)
        result = await rpc_ok(ssh, "override", {"id": session})
        assert result["detached"] == 1
        await screen.drain_to_eof()


async def test_a_vanished_operator_leaves_no_tmux_client_behind(cluster, session, docker_client):
    async with connect(cluster) as conn:
        process, screen = await at_prompt(conn, session)
        assert len(tmux_clients(docker_client, session)) == 1
        conn.abort()  # the operator's network goes away; no detach key
    await wait_clients(docker_client, session, 0)
    async with connect(cluster) as conn:
        assert (await rpc_ok(conn, "get", {"id": session}))["attached_count"] == 0


@pytest.mark.parametrize("header, fragment, code", [
    (b"not json\n", "bad attach header: header is not valid JSON", "bad_request"),
    (b'{"cols":80}\n', 'bad attach header: missing required field "id"', "bad_request"),
    (b'{"id":"../../etc"}\n', "is not a UUIDv4", "bad_request"),
    (b'{"id":"7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"}\n', "does not exist", "not_found"),
    (b'{"id":"7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91","cols":"wide"}\n', 'field "cols" must be an integer', "bad_request"),
    (b'{"id":"7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91","shell":true}\n', 'unknown field "shell"', "bad_request"),
    (b"x" * 5000 + b"\n", "line exceeds 4096 bytes", "bad_request"),
])
async def test_bad_attach_headers_get_an_error_line(ssh, header, fragment, code):
    process = await ssh.create_process(subsystem=ATTACH_SUBSYSTEM, encoding=None)
    process.stdin.write(header)
    out = await asyncio.wait_for(process.stdout.read(), 10)
    response = json.loads(out)
    assert response["ok"] is False and fragment in response["error"] and response["code"] == code
    assert (await rpc_ok(ssh, "ping"))["agent_id"]


async def test_attaching_to_a_stopped_session_is_a_conflict(ssh):
    made = await rpc_ok(ssh, "create", {"name": "stopped"})
    process = await ssh.create_process(subsystem=ATTACH_SUBSYSTEM, encoding=None)
    process.stdin.write(encode_line({"id": made["uuid"]}))
    response = json.loads(await asyncio.wait_for(process.stdout.read(), 10))
    assert response == {"ok": False, "error": f'session "{made["uuid"]}" is not running', "code": "conflict"}
    await rpc_ok(ssh, "delete", {"id": made["uuid"]})
