"""Text rendering of sessions for the CLI (pure functions, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from convocate.common.model import ACTIVITY_LIMITED, SessionMeta, SessionView

COLUMNS = ("#", "ST", "NAME", "AGENT", "SESSION", "ACTIVITY", "PORT", "DNS", "CREATED", "LAST ACCESSED")


def local_time(ns: int) -> str:
    """``YYYY-MM-DD HH:MM`` in the local time zone."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def until_clock(ns: int, now_ns: int | None = None) -> str:
    """A reset time in the local time zone: ``HH:MM`` today, ``MM-DD HH:MM`` on another day."""
    when = time.localtime(ns / 1e9)
    today = time.localtime(time.time() if now_ns is None else now_ns / 1e9)
    same_day = (when.tm_year, when.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M" if same_day else "%m-%d %H:%M", when)


def activity_text(meta: SessionMeta, now_ns: int | None = None) -> str:
    """A session's activity for a table: ``limited until 17:00`` for a limited one, else the state (``-``)."""
    if meta.activity == ACTIVITY_LIMITED and meta.activity_until:
        return f"limited until {until_clock(meta.activity_until, now_ns)}"
    return meta.activity or "-"


def session_row(index: int, view: SessionView) -> tuple[str, ...]:
    """One table row for a session."""
    m = view.meta
    port = f"{m.port}/{m.protocol}" if m.port else "-"
    return (str(index), view.state, m.name, view.agent_id or "-", m.uuid[:8], activity_text(m), port,
            m.dns_name or "-", local_time(m.created_at), local_time(m.last_accessed))


def format_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned columns separated by two spaces, header first."""
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip() for r in all_rows)


#: ``convocate ls --wide`` adds these: the image the container last started from, and its Claude Code version.
WIDE_COLUMNS = ("IMAGE", "CLAUDE CODE")


def sessions_table(views: list[SessionView], *, wide: bool = False) -> str:
    """The ``convocate ls`` table, in the given order, numbered from 1; ``wide`` adds :data:`WIDE_COLUMNS`."""
    if not wide:
        return format_table(session_row(i, v) for i, v in enumerate(views, start=1))
    return format_table(((*session_row(i, v), v.meta.image or "-", v.claude_code or "-")
                         for i, v in enumerate(views, start=1)), (*COLUMNS, *WIDE_COLUMNS))


def waiting_table(views: list[SessionView]) -> str:
    """Sessions waiting for the operator, with what they ask."""
    return format_table(((v.meta.name, v.agent_id, v.meta.uuid[:8], local_time(v.meta.activity_at),
                          v.meta.activity_detail or "-") for v in views),
                        ("NAME", "AGENT", "SESSION", "WAITING SINCE", "QUESTION"))


def session_summary(view: SessionView) -> str:
    """``name (uuid8) on agent, state``: one line for a lifecycle result."""
    m = view.meta
    return f"{m.name} ({m.uuid[:8]}) on {view.agent_id}, state {view.state}"


def print_json(obj: Any) -> None:
    """Print ``obj`` as the verbs' ``--json`` output: indented, UTF-8 as it is."""
    import json

    print(json.dumps(obj, indent=2, ensure_ascii=False))


def wire_with_agent(view_wire: dict[str, Any], agent_id: str) -> dict[str, Any]:
    """A session's wire metadata with the agent it lives on added."""
    return {**view_wire, "agent_id": agent_id}


def capacity_cells(agent: dict[str, Any]) -> tuple[str, str, str, str]:
    """SESSIONS, CPUS, MEMORY and LOAD cells from an agent's ``capacity`` result (reserved/limit)."""
    cap = agent.get("capacity")
    if not isinstance(cap, dict):
        return ("-", "-", "-", "-")
    reserved, limits, usage = cap.get("reserved", {}), cap.get("limits", {}), cap.get("usage", {})
    return (str(reserved.get("sessions", "-")),
            f"{reserved.get('cpus', 0):g}/{limits.get('cpus', 0):g}",
            f"{reserved.get('memory_mb', 0) / 1024:.1f}/{limits.get('memory_mb', 0) / 1024:.1f} GiB",
            f"{usage.get('load1', 0):.2f}")
