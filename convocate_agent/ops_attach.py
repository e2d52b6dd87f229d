"""Attach accounting: who is attached to a session, its move mark, and the pane's text (``capture``, ``send``).

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring).
The attach relay itself (the channel, its bytes, the recorder's tap) is :mod:`convocate_agent.attach`;
this group opens the exec it relays and counts the operators, which every session view shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from convocate.common.attachheader import AttachHeader
from convocate.common.errors import ConfigError, NotFound
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.model import validate_uuid
from convocate.common.ops.params import CaptureParams, SendParams
from convocate.common.paths import Paths
from convocate.common.protocol import SESSION_ATTACHED, SESSION_DETACHED
from convocate.common.timefmt import now_ns
from convocate_agent.containerexec import TMUX_SESSION
from convocate_agent.execpipe import ExecStream
from convocate_agent.ops_lifecycle import READY_TIMEOUT_S
from convocate_agent.runtime import ContainerState, DockerRuntime
from convocate_agent.state import SessionState

log = logging.getLogger("convocate_agent.service")  # the name the agent's op log lines had before the split


class AttachOps:
    """``open_attach``, ``close_attach``, the move marks, ``capture`` and ``send``.

    Owns ``_attached`` (session → operators attached; read by every view and by
    ``on_container_event``) and ``_moving`` (session → the agent a move takes it to, persisted in
    ``agent_moving_dir``; read by ``restart``, written by ``override`` and ``delete``). Reads
    ``_starting``, which lifecycle's ``_start`` keeps. The annotations below are every shared
    part it uses; :class:`~convocate_agent.service.AgentService` provides them.
    """

    # Shared parts (AgentService.__init__).
    paths: Paths
    runtime: DockerRuntime
    state: SessionState
    uid: int
    gid: int
    _attached: dict[str, int]
    _moving: dict[str, str]
    _starting: dict[str, asyncio.Event]
    # Of the core (AgentService).
    _emit: Callable[..., None]
    _require_running: Callable[[str], Awaitable[ContainerState]]

    async def open_attach(self, request: AttachHeader) -> ExecStream:
        """Start an attach exec for ``request`` and count the operator as attached.

        An attach that comes while the session is starting waits for the start to end (at most
        ``READY_TIMEOUT_S``), so that it finds tmux up rather than ``no sessions``: an operator a
        move detached attaches again as soon as the target's container runs (issue 18).

        Raises:
            NotFound: no such session.
            Conflict: the session is not running.
            DockerError: the exec could not be started.
        """
        starting = self._starting.get(request.session_id)
        if starting is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(starting.wait(), READY_TIMEOUT_S)
        await self._require_running(request.session_id)
        stream = await self.runtime.open_attach(request.session_id, cols=request.cols, rows=request.rows,
                                                term=request.term, read_only=request.read_only,
                                                uid=self.uid, gid=self.gid)
        sid = request.session_id
        self._attached[sid] = self._attached.get(sid, 0) + 1
        try:
            meta = self.state.meta(sid).with_changes(last_accessed=now_ns())
            self.state.save_soon(meta)
        except (NotFound, ConfigError, OSError) as e:
            log.warning("attach %s: cannot record last access: %s", sid, e)
        else:
            self._emit(SESSION_ATTACHED, sid, {"read_only": request.read_only,
                                               "attached_count": self._attached[sid], "name": meta.name})
        return stream

    def close_attach(self, session_id: str) -> None:
        """Count an operator as detached."""
        count = max(0, self._attached.get(session_id, 0) - 1)
        if count:
            self._attached[session_id] = count
        else:
            self._attached.pop(session_id, None)
        self._emit(SESSION_DETACHED, session_id, {"attached_count": count})

    # --- a move's mark (issue 18) ---------------------------------------------------
    def moving_to(self, session_id: str) -> str | None:
        """The agent a move takes the session to, while it is moving (see :meth:`override`)."""
        return self._moving.get(session_id)

    def _load_moving(self) -> dict[str, str]:
        moving: dict[str, str] = {}
        try:
            names = os.listdir(self.paths.agent_moving_dir)
        except FileNotFoundError:
            return moving
        for name in names:
            target = read_token(self.paths.agent_moving_dir / name)
            if target:
                moving[name] = target
        return moving

    def _set_moving(self, session_id: str, target: str | None) -> None:
        """Mark (or, with None, unmark) the session as moving to ``target``; written before it counts."""
        path = self.paths.agent_moving_dir / validate_uuid(session_id)
        if target is None:
            path.unlink(missing_ok=True)
            self._moving.pop(session_id, None)
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, f"{target}\n".encode(), mode=0o600)
        self._moving[session_id] = target

    # --- the pane -------------------------------------------------------------------
    async def capture(self, params: CaptureParams) -> dict[str, Any]:
        """The session pane's text; ``lines`` > 0 includes that many lines of history."""
        session_id = params.id
        await self._require_running(session_id)
        args = ["capture-pane", "-p", "-J", "-t", TMUX_SESSION]
        if params.lines > 0:
            args += ["-S", f"-{params.lines}"]
        out = await self.runtime.tmux(session_id, *args)
        return {"uuid": session_id, "text": out.decode("utf-8", "replace")}

    async def send(self, params: SendParams) -> dict[str, Any]:
        """Type ``text`` into the session (tmux ``send-keys -l``), then Enter if asked."""
        session_id = params.id
        await self._require_running(session_id)
        if params.text:
            await self.runtime.tmux(session_id, "send-keys", "-t", TMUX_SESSION, "-l", "--", params.text)
        if params.enter:
            await self.runtime.tmux(session_id, "send-keys", "-t", TMUX_SESSION, "Enter")
        return {"uuid": session_id, "sent": len(params.text), "enter": params.enter}
