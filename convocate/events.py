"""Local subscribers of status-serve: ``convocate events`` and the agent marks of ``convocate ls``.

status-serve writes newline JSON on ``/run/convocate/status.sock``: first one
``agent.status`` per known agent and a ``replay.done`` marker, then every
event as it arrives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from convocate.common.errors import Unreachable
from convocate.common.framing import LineTooLong, read_frames
from convocate.common.paths import Paths
from convocate.common.protocol import AGENT_STATUS, REPLAY_DONE
from convocate.localstatus import agent_mark  # noqa: F401  (moved there: ls needs it without asyncio)


async def subscribe(paths: Paths) -> AsyncIterator[dict[str, Any]]:
    """Yield the messages of the local status socket until it closes.

    Raises:
        Unreachable: status-serve is not running (no socket, or nobody listening).
    """
    path = paths.status_socket
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 21)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise Unreachable(f"status-serve is not running ({path}: {e.strerror}); start convocate-status.service") from e
    try:
        async for frame in read_frames(reader):
            if isinstance(frame, LineTooLong):
                continue
            try:
                message = json.loads(frame)
            except ValueError:
                continue
            if isinstance(message, dict):
                yield message
    finally:
        writer.close()


async def agent_states(paths: Paths, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """The replayed ``agent.status`` of every agent status-serve knows (empty if it is not running)."""
    states: dict[str, dict[str, Any]] = {}

    async def read() -> None:
        async for message in subscribe(paths):
            if message.get("type") == AGENT_STATUS:
                states[str(message.get("agent_id"))] = message.get("data") or {}
            elif message.get("type") == REPLAY_DONE:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except (TimeoutError, Unreachable):
        pass
    return states


def format_message(message: dict[str, Any]) -> str:
    """One human-readable line for a status message."""
    stamp = message.get("timestamp", "")
    clock = stamp[11:19] if isinstance(stamp, str) and len(stamp) >= 19 else "--:--:--"
    kind = str(message.get("type", "?"))
    agent = str(message.get("agent_id", "-"))
    data = message.get("data") if isinstance(message.get("data"), dict) else {}
    session = message.get("session_id")
    if kind == AGENT_STATUS:
        flags = [("connected" if data.get("connected") else "disconnected")] + (["stale"] if data.get("stale") else [])
        return f"{clock}  {agent}  {kind}  {', '.join(flags)}  version {data.get('version') or '?'}"
    if kind == REPLAY_DONE:
        return f"{clock}  --------  (live from here)"
    detail = ""
    if session:
        name = data.get("name")
        detail = f"{name} ({session[:8]})" if name else session[:8]
    elif data.get("dropped_events"):
        detail = f"{data['dropped_events']} event(s) dropped while disconnected"
    return f"{clock}  {agent}  {kind}  {detail}".rstrip()
