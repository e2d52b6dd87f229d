"""The real Claude Code in a session, end to end: the real agent, real tmux, the pinned Claude Code,
a scripted fake Messages API in the session's own network namespace (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest

from tests.realclaude.conftest import API_KEY, PROMPT_MARK, Driver
from tests.realclaude.fake_messages_api import UNSCRIPTED
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
    assert {k.lower(): v for k, v in request["headers"].items()}.get("x-api-key") == API_KEY  # `convocate auth set` reached Claude Code...
    assert API_KEY not in json.dumps(driver.container(s.sid).attrs)  # ...and not through Docker's env
    # The agent recorded Claude Code's screen while nobody was attached (issue 19); grep finds the answer's row.
    deadline = time.monotonic() + 20
    while not (found := await driver.call("recording_grep", {"pattern": "forty-two", "id": s.sid}))["matches"]:
        assert time.monotonic() < deadline, f"the answer is not in the session's recording: {found}"
        await asyncio.sleep(0.5)
    assert [m["line"] for m in found["matches"]][0].endswith("Hello from the fake API: forty-two."), found
    # The wait CLI agrees.
    waited = await asyncio.to_thread(driver.cluster.run_role, "convocate", "wait", s.sid, "--for", "idle",
                                     "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    # A turn nobody scripted: Claude Code shows the fake's error, and the request is on record.
    await driver.prompt(s, "And one more thing")
    await driver.wait_screen(s, UNSCRIPTED)
    last = s.api.wait_message_requests(2)[-1]
    assert last["answer"] == "unscripted" and "And one more thing" in conversation(last)


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
    # The operator answers without attaching: `convocate reply` (what the TUI's W list sends too).
    s.api.queue_text("Postgres it is.")
    await driver.wait_screen(s, PROMPT_MARK)
    since = len(driver.events.messages)
    replied = await asyncio.to_thread(driver.cluster.run_role, "convocate", "reply", s.sid, "Use Postgres",
                                      "--wait", "--timeout", "60")
    assert replied.returncode == 0, replied.stderr
    await driver.wait_activity(s, "working", since, detail="Use Postgres")
    await driver.wait_activity(s, "idle", since)
    requests = s.api.wait_message_requests(3)
    last = conversation(requests[-1])
    assert "Use Postgres" in last and question in last
    await driver.wait_screen(s, "Postgres it is.")


async def _one_turn(driver: Driver, s, prompt: str, answer: str) -> dict:
    """Type ``prompt``, the fake API answers ``answer``; returns the model request that carried the prompt."""
    before = len(s.api.message_requests())
    s.api.queue_text(answer)
    since = await driver.prompt(s, prompt)
    await driver.wait_activity(s, "idle", since)
    await driver.wait_screen(s, answer)
    return s.api.wait_message_requests(before + 1)[before]


def _claude_pids(container) -> list[int]:
    """Host PIDs of the Claude Code processes in the session's container (`docker top`)."""
    top = container.top(ps_args="-eo pid,comm")
    pid, comm = top["Titles"].index("PID"), top["Titles"].index("COMMAND")
    return [int(row[pid]) for row in top["Processes"] if row[comm] == "claude"]


async def _wait_transcript(s, text: str, timeout: float = 30) -> None:
    """Wait until one of the session's Claude Code transcripts holds ``text``."""
    deadline = time.monotonic() + timeout
    while not any(text in p.read_text(errors="replace") for p in (s.home / ".claude" / "projects").glob("*/*.jsonl")):
        assert time.monotonic() < deadline, f"no transcript with {text!r} within {timeout} s"
        await asyncio.sleep(0.1)


async def test_kill_9_of_claude_resumes_the_conversation(driver: Driver):
    s = await driver.start("crashy")
    await _one_turn(driver, s, "Remember the word pelican.", "Noted: pelican.")
    # Claude Code writes its transcript (~/.claude/projects/<cwd>/<id>.jsonl) a moment after the answer is
    # on screen; a kill before that leaves `claude -c` nothing to continue (see the report in docs/benchmarks.md).
    await _wait_transcript(s, "Noted: pelican.")
    container = driver.container(s.sid)
    (pid,) = _claude_pids(container)
    since = len(driver.events.messages)
    os.kill(pid, signal.SIGKILL)  # the claude of the container this test started, by its PID
    await driver.wait_screen(s, "restarting with")
    await driver.wait_activity(s, "idle", since, detail="")  # the supervisor's claude -c: SessionStart again
    logs = container.logs().decode(errors="replace")
    assert re.search(r"restarting with 'claude [^']*-c' in", logs), logs[-2000:]
    request = await _one_turn(driver, s, "Which word?", "Pelican.")
    seen = conversation(request)
    assert "Remember the word pelican." in seen and "Noted: pelican." in seen, seen[-2000:]


async def test_container_restart_answers_and_keeps_the_conversation(driver: Driver):
    s = await driver.start("restarted")
    await _one_turn(driver, s, "Remember the word heron.", "Noted: heron.")
    await _wait_transcript(s, "Noted: heron.")
    old_container = driver.container(s.sid).id
    await driver.restart(s)
    assert driver.container(s.sid).id != old_container  # a new container: the fake API was re-attached
    request = await _one_turn(driver, s, "Which word?", "Heron.")
    seen = conversation(request)
    assert "Which word?" in seen and "Remember the word heron." in seen and "Noted: heron." in seen, seen[-2000:]


async def test_clone_answers_with_its_own_history(driver: Driver):
    source = await driver.start("original")
    await _one_turn(driver, source, "Remember the word egret.", "Noted: egret.")
    await _wait_transcript(source, "Noted: egret.")
    await driver.call("kill", {"id": source.sid})
    copy = await driver.clone(source, "copy")
    first = await _one_turn(driver, copy, "Which word?", "Egret.")
    second = await _one_turn(driver, copy, "And now the word ibis.", "Noted: ibis.")
    seen = conversation(second)
    assert "Which word?" in seen and "Egret." in seen  # the copy's own turns
    assert len(source.api.message_requests()) == 1, "the copy's requests reached the source's API"
    assert "Remember the word egret." in conversation(first)  # the copy continues the source's conversation
    assert "Remember the word egret." in seen


async def test_429_makes_the_session_limited_then_it_resumes(driver: Driver):
    reset = int(time.time()) + 10
    await driver.call("settings-set", {"resume_after_limit": True, "resume_message": "continue",
                                       "limit_retry_s": 10})
    try:
        s = await driver.start("limited")
        s.api.queue_error(429, {
            "x-should-retry": "false", "retry-after": "10",
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(reset),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-5h-status": "rejected",
            "anthropic-ratelimit-unified-5h-reset": str(reset),
        }, {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}})
        s.api.queue_text("Resumed after the limit.")
        since = await driver.prompt(s, "Do the long job")
        await driver.wait_activity(s, "limited", since)
        got = await driver.call("get", {"id": s.sid})
        assert got["activity"] == "limited" and got.get("activity_until"), got
        await driver.wait_activity(s, "working", since, detail="continue", timeout=90)  # resume_after_limit
        await driver.wait_activity(s, "idle", since)
        await driver.wait_screen(s, "Resumed after the limit.")
        requests = s.api.wait_message_requests(2)
        assert "continue" in conversation(requests[-1])
    finally:
        await driver.call("settings-set", {"resume_after_limit": False})
