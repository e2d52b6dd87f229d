#!/opt/convocate/mcp/bin/python3 -I
"""convocate-mcp: the MCP server every Claude Code session in a convocate container gets.

It speaks MCP over stdio only (Claude Code starts it as a child process) and
opens no port and no socket of its own: each tool call becomes one ``mcp``
message to the convocate agent through convocate_report (the agent's Unix
socket at /run/convocate-agent/agent.sock). Tools:

    report_progress(message)          -> mcp progress {message}
    ask_operator(question)            -> mcp ask {question}
    set_status(status, message="")    -> mcp status {status, message}; status is
                                         working, idle or waiting

A tool whose message cannot be delivered (agent away) still succeeds and says
the operator could not be notified; the miss is logged to
~/.convocate/logs/report.log. Built on the official MCP Python SDK (``mcp``,
pinned in mcp-requirements.txt), run from the venv /opt/convocate/mcp.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import anyio.to_thread  # noqa: E402
import convocate_report as report  # noqa: E402
from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402

INSTRUCTIONS = """\
You run in a convocate session: a container an operator attaches to from time to time, \
while they watch many sessions at once. These tools tell the operator's console what you \
are doing. Use ask_operator when you need a decision or information only the operator \
has; then end your turn and wait, their answer arrives as a new message. Use \
report_progress for milestones of long work, and set_status when your state is not \
obvious (for example waiting on a long build)."""

server = MCPServer(name="convocate", instructions=INSTRUCTIONS, log_level="WARNING")


async def _deliver(event: str, data: dict) -> tuple[bool, str]:
    return await anyio.to_thread.run_sync(report.send, "mcp", event, data)


def _text(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        raise ToolError(f"{what} must not be empty")
    return value


@server.tool(structured_output=False)
async def report_progress(message: str) -> str:
    """Tell the operator about progress on the current task (one short line, e.g. "tests pass, now updating the docs").

    Use it for milestones of long work; the operator sees the latest message in their session list.
    """
    ok, why = await _deliver("progress", {"message": _text(message, "message")})
    if ok:
        return "Progress reported to the operator."
    return f"Progress noted, but the operator could not be notified ({why})."


@server.tool(structured_output=False)
async def ask_operator(question: str) -> str:
    """Ask the operator a question and alert them that this session needs them.

    Use it when you need a decision, approval or information only the operator has. After
    calling it, end your turn and wait: the operator's answer arrives as a new message in
    this session. Do not guess the answer and do not keep working on what depends on it.
    """
    ok, why = await _deliver("ask", {"question": _text(question, "question")})
    if ok:
        return ("The operator has been alerted and shown your question. Their answer will arrive "
                "as a new message in this session: end your turn now and wait for it.")
    return (f"The operator could not be notified ({why}). Ask the question in your reply instead "
            "and end your turn; the operator will answer there when they next look at this session.")


@server.tool(structured_output=False)
async def set_status(status: str, message: str = "") -> str:
    """Set this session's status as the operator sees it: "working", "idle" or "waiting", with an optional short message.

    working: busy on a task; idle: done, nothing to do; waiting: blocked on something
    (the operator, a long build, an external event), say what in the message.
    """
    value = (status or "").strip().lower()
    why = report.status_error(value)
    if why:
        raise ToolError(why)
    ok, why = await _deliver("status", {"status": value, "message": (message or "").strip()})
    if ok:
        return f"Status set to {value}."
    return f"Status {value} noted, but the operator could not be notified ({why})."


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
