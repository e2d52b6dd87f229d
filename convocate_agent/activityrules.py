"""The activity classifier, pure: a session's reports (hooks, MCP tools, supervisor) into its activity state.

States (DESIGN: `activity`): ``working``, ``waiting`` (for the operator, with the question),
``idle``, ``crashed`` (the supervisor gave up), ``exited``, or ``limited`` (a usage or rate limit
ended the turn; with the time it resets). Every report is untrusted (DESIGN §8): texts are cut to
:data:`DETAIL_MAX` characters and a reset time is believed only within :data:`LIMIT_HORIZON_S`.
The reports reach the agent through :mod:`convocate_agent.activity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convocate.common.model import ACTIVITIES

WORKING, WAITING, IDLE, CRASHED, EXITED, LIMITED = ACTIVITIES
#: Claude Code's name prefix for the tools of convocate's in-session MCP server.
OWN_TOOLS = "mcp__convocate__"
DETAIL_MAX = 500
#: Furthest a reported reset time may lie ahead, in s: Claude's limits reset within 5 hours or a week;
#: anything later (or earlier than now) is not believed (a session is untrusted, DESIGN §8).
LIMIT_HORIZON_S = 8 * 24 * 3600
#: What a ``StopFailure`` with this ``error`` is (Claude Code 2.1.330's hook input); any other error ends the
#: turn as ``idle`` with "turn failed: <error>".
RATE_LIMIT_ERROR = "rate_limit"


@dataclass(frozen=True)
class Activity:
    """A session's activity state.

    Attributes:
        state: One of :data:`ACTIVITIES`, or ``""`` when nothing was reported yet.
        detail: The question (waiting), the progress message, or why it crashed.
        at: When it last changed, ns since the epoch.
        until: ``limited`` only: when the limit resets, or when the agent tries again (ns since the epoch).
    """

    state: str = ""
    detail: str = ""
    at: int = 0
    until: int = 0


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    return (value if isinstance(value, str) else str(value))[:DETAIL_MAX]


def limit_until(data: dict[str, Any], now: int, retry_s: float) -> int:
    """When a ``limited`` session's limit resets, in ns since the epoch.

    ``resets_at`` (epoch seconds, from the transcript) counts only as an
    integer within [now, now + :data:`LIMIT_HORIZON_S`]; anything else the
    session says is ignored, and the agent tries again ``retry_s`` from now.
    """
    resets = data.get("resets_at")
    if isinstance(resets, int) and not isinstance(resets, bool):
        at = resets * 1_000_000_000
        if now <= at <= now + LIMIT_HORIZON_S * 1_000_000_000:
            return at
    return now + int(retry_s * 1_000_000_000)


def next_activity(current: Activity, source: str, event: str, data: dict[str, Any], now: int, *,
                  limit_retry_s: float = 300.0) -> Activity | None:
    """The activity after one report, or None when the report does not change it.

    Rules: a prompt or a tool call means working; a notification (Claude Code
    asks for permission or input) or an ``ask`` means waiting, with its text,
    until the operator's next prompt; the end of a turn (Stop) otherwise means idle; the supervisor giving up means
    crashed; a clean exit means exited. Progress and explicit status reports
    set what they say. A turn ended by an API error (``StopFailure``, Claude
    Code 2.1.330) with ``error`` ``rate_limit`` means limited, with Claude's
    message and the reset time (:func:`limit_until`); any other API error
    (``authentication_failed``, ``overloaded``, ``billing_error``, ...) ends the
    turn as idle with "turn failed: <error>". Limited ends with the next
    prompt, tool call or turn, as every state does.

    Args:
        current: The activity before the report.
        source: ``hook``, ``mcp`` or ``supervisor``.
        event: The report's event.
        data: The report's data (untrusted).
        now: The time, ns since the epoch.
        limit_retry_s: When a limit's reset time is unknown, seconds until the agent tries again
            (agent setting ``limit_retry_s``).
    """
    if source == "hook":
        new, until = _after_hook(current, event, data, now, limit_retry_s)
    elif source == "mcp":
        new, until = _after_mcp(event, data), 0
    elif source == "supervisor":
        new, until = _after_supervisor(current, event, data)
    else:
        new, until = None, 0
    if new is None or (new[0], new[1], until) == (current.state, current.detail, current.until):
        return None
    return Activity(new[0], new[1], now, until)


def _after_hook(current: Activity, event: str, data: dict[str, Any], now: int,
                limit_retry_s: float) -> tuple[tuple[str, str] | None, int]:
    """``((state, detail) or None, until)`` after a Claude Code hook event (rules: :func:`next_activity`)."""
    if event == "UserPromptSubmit":
        return (WORKING, _text(data, "prompt")), 0
    if event in ("PreToolUse", "PostToolUse") and not _text(data, "tool_name").startswith(OWN_TOOLS):
        # Working on, keeping what it works on; after a wait, say which tool it went back to.
        # (Calls of convocate's own tools report their meaning through the mcp source.)
        tool = _text(data, "tool_name")
        return (WORKING, current.detail if current.state == WORKING else (f"using {tool}" if tool else "")), 0
    if event == "Notification":
        return (WAITING, _text(data, "message") or "needs the operator"), 0
    if event == "Stop" and current.state == WAITING:
        return None, 0  # the turn that asked ends; the question stands until the operator answers
    if event in ("Stop", "SessionStart"):
        return (IDLE, ""), 0
    if event == "SessionEnd":
        return (EXITED, _text(data, "reason")), 0
    if event == "StopFailure":
        error = _text(data, "error")[:64] or "unknown"
        message = _text(data, "last_assistant_message")
        if error == RATE_LIMIT_ERROR:
            return (LIMITED, message or "rate limited"), limit_until(data, now, limit_retry_s)
        return (IDLE, (f"turn failed: {error}" + (f" ({message})" if message else ""))[:DETAIL_MAX]), 0
    return None, 0


def _after_mcp(event: str, data: dict[str, Any]) -> tuple[str, str] | None:
    """``(state, detail)`` or None after a report of convocate's MCP tools (rules: :func:`next_activity`)."""
    if event == "progress":
        return WORKING, _text(data, "message")
    if event == "ask":
        return WAITING, _text(data, "question")
    if event == "status" and data.get("status") in (WORKING, IDLE, WAITING):
        return str(data["status"]), _text(data, "message")
    return None


def _after_supervisor(current: Activity, event: str, data: dict[str, Any]) -> tuple[tuple[str, str] | None, int]:
    """``((state, detail) or None, until)`` after a supervisor report (rules: :func:`next_activity`)."""
    if event == "start":
        return (IDLE, "starting" if str(data.get("attempt", "1")) == "1" else
                f"restarted (attempt {data.get('attempt')})"), 0
    if event == "gave_up":
        return (CRASHED, f"the agent command failed {data.get('failures', '?')} times in a row "
                         f"(last exit status {data.get('status', '?')})"), 0
    if event == "exit" and str(data.get("status")) == "0":
        return (EXITED, "the agent command exited cleanly"), 0
    if event == "exit":
        new = (current.state or WORKING, f"exited with status {data.get('status')}; the supervisor restarts it")
        return new, current.until if new[0] == LIMITED else 0
    return None, 0
