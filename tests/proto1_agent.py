"""A protocol-1 agent double: what an agent of the Go original v0.0.5 answers (issue 16, item 4).

A real SSH server on loopback (the agent's own :class:`SubsystemListener`, as tests/fake_agents.py
uses it) serving ``convocate-agent-rpc`` and ``convocate-agent-attach`` the way v0.0.5's
internal/agentserver does (docs/compat.md has the table):

- one request per channel: ``{"op", "params"}`` read, an ``id`` ignored, one response line back
  with no ``id`` and no ``code``: ``{"ok":true,"result":...}`` or ``{"ok":false,"error":"..."}``;
- ``ping`` answers ``agent_id``, ``version`` ("0.0.5") and ``server_time``, nothing else;
- params decoded strictly: an unknown field is ``decode params: json: unknown field "start"``;
- ``list`` of no sessions answers ``null``; ``delete``/``restart``... answer ``{}``;
- a missing session is ``session "<id>" does not exist``; an unknown op ``unknown op: "capacity"``;
- attach: one JSON header line ``{"id","cols","rows"}`` (other fields ignored, as Go's
  ``json.Unmarshal`` does), then a raw byte pipe. Here the pipe is a local pty running
  ``tmux new-session -A`` (a private tmux server, one tmux session per agent session, running
  ``cat`` so typed text comes back) in place of v0.0.5's ``docker exec ... tmux attach``: Ctrl-b d
  detaches as it does there; a refusal is one ``{"ok":false,"error":"attach: ..."}`` line.

Sessions live in memory; ``restart`` marks one running (no container).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import asyncssh

from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM
from convocate.common.sshpeers import Caller
from convocate.common.sshserver import SubsystemListener
from convocate.common.timefmt import format_rfc3339

VERSION = "0.0.5"
_PARAMS = {  # v0.0.5's request structs (internal/agentserver/cruds.go)
    "get": {"id"}, "delete": {"id"}, "kill": {"id"}, "background": {"id"}, "override": {"id"},
    "restart": {"id"}, "create": {"name", "port", "protocol", "dns_name"},
    "edit": {"id", "name", "port", "protocol", "dns_name"}, "clone": {"source_id", "name"},
}
_OPS = frozenset({"ping", "list", "settings-get", "settings-set", *_PARAMS})


class Proto1Error(Exception):
    """An error v0.0.5 would return: its text is the whole answer."""


def _go_json(obj: Any) -> bytes:
    """Encode as Go's ``json.Encoder`` does: compact, one line, ``<>&`` escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()


class Proto1Agent:
    """One v0.0.5-speaking agent.

    Args:
        agent_id: Its ID (v0.0.5's IDs are host names; any string does).
        host_key: Its ed25519 host key.
        authorized: Path of its authorized_keys file.

    Attributes:
        sessions: ``{uuid: metadata}`` in v0.0.5's shape (``running`` kept here, stamped on reads).
        requests: Every request object received on the RPC subsystem, in order.
    """

    def __init__(self, agent_id: str, host_key: asyncssh.SSHKey, authorized: Path) -> None:
        self.agent_id = agent_id
        self.sessions: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.attached: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.tmux_socket = f"convocate-proto1-{uuidlib.uuid4().hex[:8]}"
        self.listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=host_key,
                                          authorized_keys=authorized,
                                          subsystems=frozenset({RPC_SUBSYSTEM, ATTACH_SUBSYSTEM}),
                                          handler=self._handle, server_version="convocate-proto1-double")

    async def start(self) -> int:
        """Start listening; returns the port."""
        (_, port), = await self.listener.start()
        return port

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        await self.listener.stop_accepting()
        await self.listener.close_connections()
        subprocess.run(["tmux", "-L", self.tmux_socket, "kill-server"], capture_output=True, check=False)

    def _handle(self, process: asyncssh.SSHServerProcess, caller: Caller) -> Any:
        if process.subsystem == ATTACH_SUBSYSTEM:
            return asyncio.ensure_future(self._attach(process))
        return asyncio.ensure_future(self._rpc(process))

    # --- RPC -----------------------------------------------------------------------
    async def _rpc(self, process: asyncssh.SSHServerProcess) -> None:
        line = await process.stdin.readline()
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            process.stdout.write(_go_json({"ok": False, "error": f"malformed request: {e}"}))
            process.exit(0)
            return
        self.requests.append(req)
        op = req.get("op")
        try:
            if op not in _OPS:
                raise Proto1Error(f'unknown op: "{op}"')
            answer = {"ok": True, "result": self._run(op, req.get("params"))}
        except Proto1Error as e:
            answer = {"ok": False, "error": str(e)}
        process.stdout.write(_go_json(answer))
        process.exit(0)

    def _view(self, sid: str) -> dict[str, Any]:
        meta = dict(self.sessions[sid])
        if sid in self.running:
            meta["running"] = True
        if self.attached.get(sid):
            meta["attached"] = True
        return meta

    def _session(self, sid: str) -> str:
        if sid not in self.sessions:
            raise Proto1Error(f'session "{sid}" does not exist')
        return sid

    def _run(self, op: str, raw: Any) -> Any:
        params: dict[str, Any] = {}
        if raw is not None:
            if not isinstance(raw, dict):
                raise Proto1Error(f"decode params: json: cannot unmarshal {type(raw).__name__} into Go value")
            for key in raw:
                if key not in _PARAMS.get(op, set()) and op in _PARAMS:
                    raise Proto1Error(f'decode params: json: unknown field "{key}"')
            params = raw
        if op == "ping":
            return {"agent_id": self.agent_id, "version": VERSION, "server_time": format_rfc3339(time.time_ns())}
        if op == "list":
            views = sorted((self._view(s) for s in self.sessions), key=lambda m: m["last_accessed"], reverse=True)
            return views or None  # Go: a nil slice marshals as null
        if op in ("settings-get", "settings-set"):
            return {}
        if op == "create":
            name = params.get("name", "")
            if not name:
                raise Proto1Error("session name cannot be empty")
            stamp = format_rfc3339(time.time_ns())
            meta: dict[str, Any] = {"uuid": str(uuidlib.uuid4()), "name": name, "created_at": stamp,
                                    "last_accessed": stamp}
            for key in ("port", "protocol", "dns_name"):
                if params.get(key):
                    meta[key] = params[key]
            self.sessions[meta["uuid"]] = meta
            return self._view(meta["uuid"])
        if op == "clone":
            src = self.sessions.get(params.get("source_id", ""))
            if src is None:
                raise Proto1Error(f'session "{params.get("source_id", "")}" does not exist')
            meta = {**src, "uuid": str(uuidlib.uuid4()), "name": params.get("name") or src["name"]}
            self.sessions[meta["uuid"]] = meta
            return self._view(meta["uuid"])
        sid = self._session(params.get("id", ""))
        if op == "get":
            return self._view(sid)
        if op == "edit":
            for key in ("name", "port", "protocol", "dns_name"):
                if params.get(key):
                    self.sessions[sid][key] = params[key]
            return self._view(sid)
        if op == "delete":
            if sid in self.running:
                raise Proto1Error(f'session "{sid}" is currently locked (in use)')
            del self.sessions[sid]
        elif op == "restart":
            if sid in self.running:
                raise Proto1Error(f'session "{self.sessions[sid]["name"]}" already running')
            self.running.add(sid)
            self.sessions[sid]["last_accessed"] = format_rfc3339(time.time_ns())
        elif op == "kill":
            self.running.discard(sid)
        return {}

    # --- attach --------------------------------------------------------------------
    async def _attach(self, process: asyncssh.SSHServerProcess) -> None:
        line = await process.stdin.readline()
        try:
            header = json.loads(line)
            sid = header.get("id", "") if isinstance(header, dict) else ""
            if not sid:
                raise ValueError("missing id")
        except ValueError as e:
            process.stdout.write(_go_json({"ok": False, "error": f"bad attach header: decode header: {e}"}))
            process.exit(0)
            return
        if sid not in self.running:
            process.stdout.write(_go_json({"ok": False, "error": f'attach: session "{sid}" is not running'}))
            process.exit(0)
            return
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        child = subprocess.Popen(["tmux", "-L", self.tmux_socket, "-f", "/dev/null", "new-session", "-A", "-s",
                                  sid[:8], "-x", str(header.get("cols") or 80), "-y", str(header.get("rows") or 24),
                                  "cat"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env)
        os.close(slave)
        os.set_blocking(master, False)
        loop = asyncio.get_running_loop()
        self.attached[sid] = self.attached.get(sid, 0) + 1
        done = asyncio.Event()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if data:
                process.stdout.write(data)
            else:
                done.set()

        loop.add_reader(master, readable)

        async def pump_in() -> None:
            while True:
                data = await process.stdin.read(65536)
                if not data:
                    break
                os.write(master, data)
            done.set()

        pump = asyncio.ensure_future(pump_in())
        try:
            await done.wait()
        finally:
            pump.cancel()
            loop.remove_reader(master)
            child.kill()
            child.wait()
            os.close(master)
            self.attached[sid] -= 1
            process.exit(0)
