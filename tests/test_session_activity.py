"""Session activity end to end: the stand-in claude calls the hooks and the MCP tools as Claude Code would,
the agent derives the activity, and the shell sees it on the status socket, in ls, wait, logs and the TUI."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.conftest import connect, make_cluster, rpc_ok
from tests.harness import REPO, python
from tests.test_status import Subscriber

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_image):
    yield from make_cluster(tmp_path_factory.mktemp("activity"), session_image, status=True)


def activity(kind: str, sid: str, detail: str | None = None):
    return lambda m: (m["type"] == "session.activity" and m.get("session_id") == sid
                      and m["data"]["activity"] == kind and (detail is None or m["data"]["detail"] == detail))


async def type_line(ssh, sid: str, text: str) -> None:
    await rpc_ok(ssh, "send", {"id": sid, "text": text, "enter": True})


async def started(ssh, name: str, cpus: float = 0.1, memory_mb: int = 160) -> str:
    made = await rpc_ok(ssh, "create", {"name": name, "cpus": cpus, "memory_mb": memory_mb, "start": True})
    for _ in range(100):
        if "convocate stand-in claude" in (await rpc_ok(ssh, "capture", {"id": made["uuid"]}))["text"]:
            return made["uuid"]
        await asyncio.sleep(0.05)
    raise AssertionError("the stand-in did not start")


def kill_and_delete(cluster, names) -> None:
    """``convocate kill NAME`` then ``convocate delete NAME``, for each of ``names`` in turn."""
    for name in names:
        cluster.run_role("convocate", "kill", name)
        cluster.run_role("convocate", "delete", name)


async def test_activity_follows_hooks_and_mcp_tools(cluster):
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        # It calls the in-session MCP server, whose import alone takes ~1.9 CPU-seconds (mcp, pydantic;
        # measured with `docker run --cpus`): ~19 s at 0.1 CPU, past the 15 s wait. 0.5 CPU, as the TUI's
        # waiting test gives its asking session.
        sid = await started(ssh, "busy", cpus=0.5, memory_mb=256)
        await sub.wait_for(activity("idle", sid, ""))  # SessionStart
        start = len(sub.messages)
        await type_line(ssh, sid, "write the docs")
        await sub.wait_for(activity("working", sid, "write the docs"), start)
        await sub.wait_for(activity("idle", sid), start)  # Stop, at the end of the turn

        start = len(sub.messages)
        await type_line(ssh, sid, "/ask Which database should I use?")
        _, waiting = await sub.wait_for(activity("waiting", sid, "Which database should I use?"), start)
        assert waiting["data"]["name"] == "busy"
        got = await rpc_ok(ssh, "get", {"id": sid})
        assert got["activity"] == "waiting" and got["activity_detail"] == "Which database should I use?"

        listed = await asyncio.to_thread(cluster.run_role, "convocate", "ls", "--waiting")
        assert "busy" in listed.stdout and "Which database should I use?" in listed.stdout

        start = len(sub.messages)
        await type_line(ssh, sid, "/progress migrating the schema")
        await sub.wait_for(activity("working", sid, "migrating the schema"), start)
        await type_line(ssh, sid, "/notify Claude needs your permission to use Bash")
        await sub.wait_for(activity("waiting", sid, "Claude needs your permission to use Bash"), start)
        await type_line(ssh, sid, "/status idle resting")
        await sub.wait_for(activity("idle", sid), start)

        logs = await asyncio.to_thread(cluster.run_role, "convocate", "logs", sid)
        assert "activity: " in logs.stdout and "supervisor: " in logs.stdout and "mcp ask" in logs.stdout
        await rpc_ok(ssh, "kill", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": sid})


async def test_a_session_cannot_report_for_another(cluster, docker_client):
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        a = await started(ssh, "honest")
        b = await started(ssh, "victim")
        await sub.wait_for(activity("idle", b, ""))  # SessionStart (the supervisor's start says "starting")
        container = docker_client.containers.get(f"convocate-session-{a}")
        start = len(sub.messages)
        # Whatever the report claims, it arrives on a's socket, so it is a's.
        code, out = container.exec_run(["convocate-report", "mcp", "ask", f"question=I am {b}", f"session={b}"],
                                       user="1337:1337", environment={"HOME": "/home/claude"})
        assert code == 0, out
        _, message = await sub.wait_for(activity("waiting", a), start)
        assert message["session_id"] == a
        assert (await rpc_ok(ssh, "get", {"id": b}))["activity"] == "idle"
        leaked = [m for m in sub.since(start) if m["type"] == "session.activity" and m.get("session_id") == b]
        assert not leaked, leaked
        # And the container sees only its own socket directory.
        code, out = container.exec_run(["ls", "/run/convocate-agent"], user="1337:1337")
        assert out.split() == [b"agent.sock"]
        for sid in (a, b):
            await rpc_ok(ssh, "kill", {"id": sid})
            await rpc_ok(ssh, "delete", {"id": sid})


async def test_a_crash_looping_agent_ends_as_crashed(cluster):
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        await rpc_ok(ssh, "settings-set", {"agent_command": "sh -c 'sleep 0.2; exit 3'", "restart_backoff_s": 0.05})
        try:
            made = await rpc_ok(ssh, "create", {"name": "doomed", "cpus": 0.1, "memory_mb": 100, "start": True})
        finally:
            await rpc_ok(ssh, "settings-set", {"agent_command": "claude", "restart_backoff_s": 1.0})
        _, crashed = await sub.wait_for(activity("crashed", made["uuid"]), timeout=30)
        assert "failed 5 times in a row" in crashed["data"]["detail"]
        await sub.wait_for(lambda m: m["type"] == "container.stopped" and m.get("session_id") == made["uuid"],
                           timeout=30)
        for _ in range(100):  # Docker reports "die" a moment before the container's state says so
            got = await rpc_ok(ssh, "get", {"id": made["uuid"]})
            if not got["running"]:
                break
            await asyncio.sleep(0.05)
        assert got["activity"] == "crashed" and not got["running"]
        await rpc_ok(ssh, "delete", {"id": made["uuid"]})


async def test_wait_returns_when_the_state_comes_and_fails_clearly_on_timeout(cluster):
    async with connect(cluster) as ssh:
        sid = await started(ssh, "patient", cpus=0.5, memory_mb=256)  # /ask starts the MCP server (~19 s at 0.1 CPU)
        waiter = subprocess.Popen([python(), "-m", "convocate", "wait", sid, "--for", "waiting", "--timeout", "60"],
                                  env=cluster.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        await asyncio.sleep(1.0)
        assert waiter.poll() is None  # still waiting
        await type_line(ssh, sid, "/ask Ready?")
        out, _ = await asyncio.to_thread(waiter.communicate, timeout=30)
        assert waiter.returncode == 0 and "patient is waiting" in out

        late = await asyncio.to_thread(cluster.run_role, "convocate", "wait", sid, "--for", "exited", "--timeout", "1",
                                       check=False)
        assert late.returncode == 124 and "is still waiting after 1 s (waited for exited)" in late.stderr
        await rpc_ok(ssh, "kill", {"id": sid})
        done = await asyncio.to_thread(cluster.run_role, "convocate", "wait", sid, "--for", "exited", "--timeout", "5")
        assert done.returncode == 0
        await rpc_ok(ssh, "delete", {"id": sid})


def test_the_tui_marks_a_waiting_session_and_jumps_to_it(cluster):
    from tests.test_tui import TUI

    # The asker's first tool call starts the in-session MCP server, which alone imports for 6 s and takes
    # 65 MiB at 0.1 CPU (measured): within 100 MiB beside tmux and the stand-in it could not be sure to
    # live (once, in CI, its report never came within the 60 s below). It gets room; the others stay small.
    for name, cpus, memory in (("calm-one", "0.1", "100"), ("asker", "0.5", "256"), ("calm-two", "0.1", "100")):
        cluster.run_role("convocate", "new", name, "--cpus", cpus, "--memory", memory)
    with TUI(cluster.env) as tui:
        tui.open(cols=170)  # room for the question after the row
        tui.wait_state("asker", "R")
        for name in ("calm-one", "asker", "calm-two"):
            tui.wait_for_activity(name, "idle")
        cluster.run_role("convocate", "send", "asker", "/ask", "Shall I push?")
        screen = tui.wait_for("? Shall I push?", timeout=60)  # the first tool call starts the MCP server
        assert "WAITING" in tui.row("asker")
        assert "asker is waiting: Shall I push?" in screen
        tui.select("calm-two")
        tui.keys("w")
        tui.keys("Enter")  # attach to the highlighted row: the waiting one
        tui.wait_for("> /ask Shall I push?")
        tui.keys("C-b", "d")
        tui.wait_for("detached from asker")
    kill_and_delete(cluster, ("calm-one", "asker", "calm-two"))

