"""Session activity (DESIGN: `activity`): reports from inside a session, its activity, the resume after a limit, ``logs``.

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring).
The pure parts (what a report does to an activity, the log formats) are :mod:`convocate_agent.activity`;
this group applies them to the session's record and publishes ``session.activity``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError, NotFound
from convocate.common.model import SessionMeta
from convocate.common.ops.params import LogsParams, SendParams
from convocate.common.paths import Paths
from convocate.common.protocol import SESSION_ACTIVITY
from convocate.common.timefmt import format_rfc3339, now_ns, parse_rfc3339
from convocate_agent.activityrules import IDLE, LIMITED, Activity, next_activity
from convocate_agent.sessionlogs import ACTIVITY_LOG, SUPERVISOR_LOG, append_log, merge_logs, read_log_tail, report_line
from convocate_agent.settings import Settings
from convocate_agent.state import SessionState

log = logging.getLogger("convocate_agent.service")  # the name the agent's op log lines had before the split

#: Seconds after a limit's reset before ``resume_after_limit`` types its message (clocks differ a little).
RESUME_GRACE_S = 3.0


class ActivityOps:
    """``on_report``, ``_set_activity``, the resume after a usage limit (issue 15) and ``logs``.

    Owns ``_resumes`` (session → the timer of its pending resume, at most one) and ``_resuming``
    (the tasks typing one). The annotations below are every shared part it uses;
    :class:`~convocate_agent.service.AgentService` provides them.
    """

    # Shared parts (AgentService.__init__; ``settings`` is replaced by ``settings_set``).
    paths: Paths
    settings: Settings
    state: SessionState
    uid: int
    gid: int
    _resumes: dict[str, asyncio.TimerHandle]
    _resuming: set[asyncio.Task[None]]
    # Of the core (AgentService) and of the attach group (AttachOps.send).
    _emit: Callable[..., None]
    send: Callable[[SendParams], Awaitable[dict[str, Any]]]

    # --- what the agent inside a session reports --------------------------------------------------
    def on_report(self, session_id: str, source: str, event: str, data: dict[str, Any]) -> None:
        """A report from inside a session (called by its own socket): log it, update its activity."""
        home = self.paths.session_dir(session_id)
        try:
            append_log(home, ACTIVITY_LOG, report_line(source, event, data), (self.uid, self.gid))
        except OSError as e:
            log.info("session %s: cannot append to its activity log: %s", session_id, e)
        try:
            meta = self.state.meta(session_id)
        except (NotFound, ConfigError):
            return
        current = Activity(meta.activity, meta.activity_detail, meta.activity_at, meta.activity_until)
        new = next_activity(current, source, event, data, now_ns(), limit_retry_s=self.settings.limit_retry_s)
        if new is not None:
            self._set_activity(session_id, new, meta)

    def _set_activity(self, session_id: str, activity: Activity, meta: SessionMeta | None = None) -> Any:
        """Record a new activity (in memory now, its record's write queued) and publish ``session.activity``.

        Returns:
            The write's future (a ``concurrent.futures.Future``), or None when the session is gone.
        """
        try:
            meta = meta or self.state.meta(session_id)
        except (NotFound, ConfigError):
            return None
        previous = meta.activity
        meta = meta.with_changes(activity=activity.state, activity_detail=activity.detail, activity_at=activity.at,
                                 activity_until=activity.until if activity.state == LIMITED else 0)
        written = self.state.save_soon(meta)
        data = {"activity": activity.state, "detail": activity.detail, "previous": previous, "name": meta.name,
                "at": format_rfc3339(activity.at)}
        if meta.activity_until:
            data["until"] = format_rfc3339(meta.activity_until)
        self._emit(SESSION_ACTIVITY, session_id, data)
        self._schedule_resume(meta)
        return written

    # --- resume after a usage limit (issue 15) ------------------------------------------------------
    def _cancel_resume(self, session_id: str) -> None:
        handle = self._resumes.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _schedule_resume(self, meta: SessionMeta) -> None:
        """(Re)plan the end of a session's limit: at ``activity_until`` + :data:`RESUME_GRACE_S` while it is limited.

        Then, with ``resume_after_limit``, ``resume_message`` is typed into it; without, it becomes
        ``idle`` (the limit is over and it waits for a prompt), so no session shows a reset time that
        has passed. Any other activity, or no event loop (a synchronous caller), cancels it. Timers
        live in memory only; :meth:`recover` plans them again from the stored activities.
        """
        self._cancel_resume(meta.uuid)
        if not (meta.activity == LIMITED and meta.activity_until):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, (meta.activity_until - now_ns()) / 1e9) + RESUME_GRACE_S
        self._resumes[meta.uuid] = loop.call_later(delay, self._start_resume, meta.uuid, meta.activity_at)

    def reschedule_resumes(self) -> int:
        """Plan the resumes of every stored ``limited`` session (after a restart or a settings change).

        Returns:
            How many are pending now.
        """
        for session_id in list(self._resumes):
            self._cancel_resume(session_id)
        for meta in self.state.metas():
            self._schedule_resume(meta)
        return len(self._resumes)

    def _start_resume(self, session_id: str, limited_at: int) -> None:
        self._resumes.pop(session_id, None)
        task = asyncio.get_running_loop().create_task(self._resume(session_id, limited_at))
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self, session_id: str, limited_at: int) -> None:
        """Type ``resume_message`` into a session still limited since ``limited_at``, as ``send`` does."""
        try:
            meta = self.state.meta(session_id)
        except (NotFound, ConfigError):
            return
        if meta.activity != LIMITED or meta.activity_at != limited_at:
            return
        if not self.settings.resume_after_limit:
            self._set_activity(session_id, Activity(IDLE, messages.LIMIT_OVER.format(
                until=format_rfc3339(meta.activity_until)), now_ns()), meta)
            return
        text = self.settings.resume_message
        try:
            await self.send(SendParams(id=session_id, text=text, enter=True))
        except ConvocateError as e:
            log.info("session %s: cannot resume after its limit: %s", session_id, e)
            return
        log.info("session %s: limit reset at %s, typed %r", session_id, format_rfc3339(meta.activity_until), text)
        try:
            append_log(self.paths.session_dir(session_id), ACTIVITY_LOG,
                       report_line("agent", "resume", {"message": text,
                                                       "until": format_rfc3339(meta.activity_until)}),
                       (self.uid, self.gid))
        except OSError as e:
            log.info("session %s: cannot append to its activity log: %s", session_id, e)

    async def logs(self, params: LogsParams) -> dict[str, Any]:
        """The session's supervisor, activity and report logs, merged by time (newest last).

        ``last`` is the time of the newest line, or with none the ``since`` asked for (``""``: none).
        """
        session_id = params.id
        self.state.meta(session_id)
        home = self.paths.session_dir(session_id)
        texts = await asyncio.to_thread(lambda: {name.removesuffix(".log"): read_log_tail(home, name)
                                                 for name in (SUPERVISOR_LOG, ACTIVITY_LOG, "report.log")})
        since = parse_rfc3339(params.since) if params.since else 0
        lines = merge_logs(texts, since, params.lines or (0 if since else 200))
        last = lines[-1].split(": ", 1)[1].split(" ", 1)[0] if lines else params.since or ""
        return {"uuid": session_id, "lines": lines, "last": last}
