"""Usage limits and replies end to end (issue 15, items 3 and 4): the stand-in claude ends a turn with a 429 as
Claude Code 2.1.330 does (an API error line in the transcript, then the StopFailure hooks), the real agent
makes the session ``limited`` until the reset and types ``continue`` when ``resume_after_limit`` is on (also
after an agent restart); ``convocate reply`` and the TUI's W answer a waiting session without attaching."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from convocate.common import messages
from convocate.common.timefmt import now_ns, parse_rfc3339
from tests.conftest import connect, make_cluster, rpc_ok
from tests.test_session_activity import activity, kill_and_delete, started, type_line
from tests.test_status import Subscriber

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_image):
    yield from make_cluster(tmp_path_factory.mktemp("limits"), session_image, status=True)


@contextlib.asynccontextmanager
async def idle_session(cluster, name: str):
    """A connection to the agent, a status subscriber, and session ``name`` started and idle.

    Yields:
        ``(ssh, sub, sid)``. After the block the session is killed and deleted (not when the block raised:
        the module's clean-up removes it then).
    """
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        sid = await started(ssh, name)
        await sub.wait_for(activity("idle", sid, ""))
        yield ssh, sub, sid
        await rpc_ok(ssh, "kill", {"id": sid})
        await rpc_ok(ssh, "delete", {"id": sid})


@contextlib.asynccontextmanager
async def agent_settings(ssh, changes: dict, restore: dict):
    """``settings-set`` of ``changes`` for the block, then of ``restore`` (also when the block raised)."""
    await rpc_ok(ssh, "settings-set", changes)
    try:
        yield
    finally:
        await rpc_ok(ssh, "settings-set", restore)


async def test_a_rate_limit_is_limited_until_the_reset_then_resumed(cluster):
    async with idle_session(cluster, "limited-one") as (ssh, sub, sid), \
            agent_settings(ssh, {"resume_after_limit": True, "resume_message": "continue", "limit_retry_s": 2},
                           restore={"resume_after_limit": False, "limit_retry_s": 300}):
        # The 429 carried the unified rate-limit headers: the reset time comes from the transcript.
        start = len(sub.messages)
        before = now_ns()
        await type_line(ssh, sid, "/limit 2")
        _, limited = await sub.wait_for(activity("limited", sid), start)
        assert limited["data"]["detail"].startswith("You've hit your 5-hour limit")
        until = parse_rfc3339(limited["data"]["until"])
        assert before // 10**9 + 1 <= until // 10**9 <= now_ns() // 10**9 + 2
        got = await rpc_ok(ssh, "get", {"id": sid})
        assert got["activity"] == "limited" and got["activity_until"] == limited["data"]["until"]
        listed = await asyncio.to_thread(cluster.run_role, "convocate", "ls")
        assert "limited until " in listed.stdout
        # At the reset (plus the grace), the agent types the resume message, as send does.
        t, working = await sub.wait_for(activity("working", sid, "continue"), start, timeout=20)
        assert time.time() >= until / 1e9
        await sub.wait_for(activity("idle", sid), start)
        logs = await asyncio.to_thread(cluster.run_role, "convocate", "logs", sid)
        assert "agent resume" in logs.stdout and "StopFailure" in logs.stdout

        # A plain 429 (no reset time): limited for limit_retry_s, then resumed.
        start = len(sub.messages)
        await type_line(ssh, sid, "/limit")
        _, limited = await sub.wait_for(activity("limited", sid, "API Error: Request rejected (429) · Rate limited"),
                                        start)
        await sub.wait_for(activity("working", sid, "continue"), start, timeout=20)

        # The operator's own prompt ends the limit first: no resume is typed afterwards.
        start = len(sub.messages)
        await type_line(ssh, sid, "/limit 1")
        await sub.wait_for(activity("limited", sid), start)
        await type_line(ssh, sid, "carry on myself")
        await sub.wait_for(activity("working", sid, "carry on myself"), start)
        await asyncio.sleep(5.0)  # past the reset and the grace
        assert not [m for m in sub.since(start) if m["type"] == "session.activity"
                    and m["data"].get("detail") == "continue"]


async def test_without_resume_a_limit_ends_idle_at_its_reset(cluster):
    """No session shows a reset time that has passed: without resume_after_limit it becomes idle, typing nothing."""
    async with idle_session(cluster, "limited-idle") as (ssh, sub, sid), \
            agent_settings(ssh, {"resume_after_limit": False, "limit_retry_s": 1}, restore={"limit_retry_s": 300}):
        start = len(sub.messages)
        await type_line(ssh, sid, "/limit")
        _, limited = await sub.wait_for(activity("limited", sid), start)
        after_limit = len(sub.messages)
        _, over = await sub.wait_for(activity("idle", sid), start, timeout=20)
        assert over["data"]["detail"] == messages.LIMIT_OVER.format(until=limited["data"]["until"])
        got = await rpc_ok(ssh, "get", {"id": sid})
        assert got["activity"] == "idle" and "activity_until" not in got
        assert [m["data"]["activity"] for m in sub.since(after_limit)
                if m["type"] == "session.activity"] == ["idle"]  # nothing was typed


async def test_a_pending_resume_survives_an_agent_restart(cluster):
    async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
        sid = await started(ssh, "limited-two")
        await sub.wait_for(activity("idle", sid, ""))
        await rpc_ok(ssh, "settings-set", {"resume_after_limit": True, "resume_message": "please go on"})
        start = len(sub.messages)
        # Long enough that the agent is surely down before the reset, even on a loaded machine (a 4 s limit
        # ran out during a slow stop in CI, and the old agent typed the message itself).
        await type_line(ssh, sid, "/limit 12")
        await sub.wait_for(activity("limited", sid), start)
    try:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start, same_port=True)
        assert "resumes_planned=1" in cluster.log_text()
        async with connect(cluster) as ssh, Subscriber(cluster.paths.status_socket) as sub:
            for _ in range(400):  # from the stored activity, the restarted agent types the message
                got = await rpc_ok(ssh, "get", {"id": sid})
                if got["activity"] == "working" or got["activity"] == "idle":
                    break
                await asyncio.sleep(0.1)
            assert got["activity"] in ("working", "idle"), got
            screen = (await rpc_ok(ssh, "capture", {"id": sid}))["text"]
            assert "echo: please go on" in screen
    finally:
        async with connect(cluster) as ssh:
            await rpc_ok(ssh, "settings-set", {"resume_after_limit": False, "resume_message": "continue"})
            await rpc_ok(ssh, "kill", {"id": sid})
            await rpc_ok(ssh, "delete", {"id": sid})


async def test_reply_answers_a_waiting_session_and_refuses_an_idle_one(cluster):
    async with idle_session(cluster, "replied") as (ssh, sub, sid):
        refused = await asyncio.to_thread(cluster.run_role, "convocate", "reply", "replied", "hello", check=False)
        assert refused.returncode == 4 and "replied is not waiting for an answer (it is idle)" in refused.stderr
        screen = (await rpc_ok(ssh, "capture", {"id": sid}))["text"]
        assert "hello" not in screen  # nothing was typed

        start = len(sub.messages)
        await type_line(ssh, sid, "/notify Shall I push to main?")
        await sub.wait_for(activity("waiting", sid, "Shall I push to main?"), start)
        done = await asyncio.to_thread(cluster.run_role, "convocate", "reply", "replied", "-", "--wait",
                                       "--timeout", "20", input="yes,\npush it\n")
        assert done.returncode == 0 and "replied took the reply (now " in done.stdout
        await sub.wait_for(activity("working", sid, "yes, push it"), start)
        assert "echo: yes, push it" in (await rpc_ok(ssh, "capture", {"id": sid}))["text"]

        forced = await asyncio.to_thread(cluster.run_role, "convocate", "reply", "replied", "anyway", "--force")
        assert forced.returncode == 0 and "replied to replied" in forced.stdout
        await sub.wait_for(activity("working", sid, "anyway"), start)


def test_the_tui_lists_the_waiting_sessions_and_replies_to_one(cluster):
    from tests.test_tui import TUI

    for name in ("calm", "asker-one", "asker-two"):
        cluster.run_role("convocate", "new", name, "--cpus", "0.1", "--memory", "100")
    with TUI(cluster.env) as tui:
        tui.open(cols=150)
        for name in ("calm", "asker-one", "asker-two"):
            tui.wait_for_activity(name, "idle")
        tui.keys("W")
        tui.wait_for("no session is waiting for you")
        cluster.run_role("convocate", "send", "asker-one", "/notify", "Which database?")
        tui.wait_for("? Which database?")
        cluster.run_role("convocate", "send", "asker-two", "/notify", "May I delete the cache?")
        tui.wait_for("? May I delete the cache?")
        tui.wait_for("(2 waiting)")  # the title counts them
        tui.keys("W")
        screen = tui.wait_for("Waiting for you (2)")
        assert "asker-one" in screen and "asker-two" in screen
        tui.keys("Down", "Enter")  # the second one: asker-two
        tui.wait_for("Reply to asker-two on")
        tui.keys("yes, delete it", pause=0.3)
        tui.keys("Enter")  # Enter in the box sends it
        tui.wait_for("reply to asker-two: done")
        tui.wait_for_activity("asker-two", "idle")  # Claude took it: working, then the turn ended
        assert "WAITING" in tui.row("asker-one")
        capture = cluster.run_role("convocate", "capture", "asker-two")
        assert "echo: yes, delete it" in capture.stdout
        tui.wait_for("(1 waiting)")
    kill_and_delete(cluster, ("calm", "asker-one", "asker-two"))
