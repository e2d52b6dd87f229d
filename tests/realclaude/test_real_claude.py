"""The real Claude Code in a session, end to end: the real agent, real tmux, the pinned Claude Code,
a scripted fake Messages API in the session's own network namespace (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.realclaude.conftest import Driver
from tests.realclaude.fakeapi import conversation

pytestmark = [pytest.mark.docker, pytest.mark.realclaude]


async def test_plain_answer_goes_working_then_idle(driver: Driver):
    s = await driver.start("plain")
    s.api.queue_text("Hello from the fake API: forty-two.")
    since = await driver.prompt(s, "What is the answer?")
    await driver.wait_activity(s, "working", since, detail="What is the answer?")
    await driver.wait_activity(s, "idle", since)
    screen = await driver.wait_screen(s, "Hello from the fake API: forty-two.")
    assert "What is the answer?" in screen
    (request,) = s.api.wait_message_requests(1)
    assert request["body"]["stream"] is True
    assert "What is the answer?" in conversation(request)
    got = await driver.call("get", {"id": s.sid})
    assert got["activity"] == "idle"
    # The wait CLI agrees.
    waited = await asyncio.to_thread(driver.cluster.run_role, "convocate", "wait", s.sid, "--for", "idle",
                                     "--timeout", "30")
    assert waited.returncode == 0, waited.stderr


async def test_bash_tool_use_writes_a_file_in_the_work_dir(driver: Driver):
    s = await driver.start("bash")
    s.api.queue_tool_use("Bash", {"command": "echo made-by-bash > made.txt", "description": "Write made.txt"})
    s.api.queue_text("Wrote made.txt.")
    since = await driver.prompt(s, "Please write made.txt")
    await driver.wait_activity(s, "idle", since)
    await driver.wait_screen(s, "Wrote made.txt.")
    requests = s.api.wait_message_requests(2)
    work_dir = await driver.work_dir()
    made = driver.host_path(s, work_dir) / "made.txt"
    assert made.read_text() == "made-by-bash\n"
    # The second request carries the tool's result back to the model.
    results = [block for m in requests[1]["body"]["messages"] if isinstance(m["content"], list)
               for block in m["content"] if block.get("type") == "tool_result"]
    assert results and not results[-1].get("is_error"), results


async def test_ask_operator_waits_and_the_answer_reaches_the_model(driver: Driver):
    s = await driver.start("asker")
    question = "Which database should I use?"
    s.api.queue_tool_use("mcp__convocate__ask_operator", {"question": question})
    s.api.queue_text("I will wait for the operator's answer.")
    since = await driver.prompt(s, "Set up the storage")
    waiting = await driver.wait_activity(s, "waiting", since, detail=question)
    assert waiting["data"]["name"] == "asker"
    await driver.wait_screen(s, "I will wait for the operator's answer.")
    got = await driver.call("get", {"id": s.sid})
    assert (got["activity"], got["activity_detail"]) == ("waiting", question)
    # The answer, for now typed in with send (`convocate reply` / the TUI's W come with engineer limited's part).
    s.api.queue_text("Postgres it is.")
    since = await driver.prompt(s, "Use Postgres")
    await driver.wait_activity(s, "working", since, detail="Use Postgres")
    await driver.wait_activity(s, "idle", since)
    requests = s.api.wait_message_requests(3)
    last = conversation(requests[-1])
    assert "Use Postgres" in last and question in last
    await driver.wait_screen(s, "Postgres it is.")
