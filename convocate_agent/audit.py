"""The agent's audit trail: one hash-chained JSON record per operator action (issue 19 items 3 and 4).

Every op that changes state or reads a session's content, its refusals included, and every attach
(open and end) becomes one line of :attr:`Paths.agent_audit_log` (``/var/lib/convocate-agent/audit.jsonl``,
mode 0600, the agent's user)::

    {"agent":"k3v9x2qa","duration_ms":12.5,"op":"send","operator":null,"params":{...},"prev":"<64 hex>",
     "result":"ok","seq":7,"session":"<uuid>","time":"2026-12-07T06:30:00.123456789Z",
     "via":{"comment":"convocate shell","fingerprint":"SHA256:...","peer":"127.0.0.1:50514"}}

The line is canonical JSON (``sort_keys``, compact separators, ``ensure_ascii``: no byte above 0x7e and no
control character, so rsyslog forwards it unchanged); ``prev`` is the hex SHA-256 of the previous line's
bytes without its newline, :data:`GENESIS` for the first. An append is one ``write(2)`` of the whole line
under an :class:`asyncio.Lock` and ``flock(2)``, then ``fsync``: lines never interleave. At start the chain
continues from the file's last whole line (read from the tail). A torn last line (power loss, disk full)
is left in place: the next append first ends it with a newline, and the next record says
``"repaired": true`` and chains from the last whole record, so ``convocate audit --verify`` reports the
torn line instead of failing on it silently. The agent never rotates or truncates the file.

Each record also goes to the agent's log (the journal under systemd) as ``audit <line>``, and as an
RFC 5424 datagram with APP-NAME :data:`AUDIT_APP_NAME` to the agent host's rsyslog audit socket
(:attr:`Paths.agent_audit_socket`), which forwards it over TLS to the shell host's
``<agent-id>.audit.jsonl`` (``convocate_host.rsyslog``). A failed write or send is logged loudly and
never fails, or waits for, the op it records. Reading the trail back is :mod:`convocate_agent.auditread`.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from convocate.common import credentials, messages
from convocate.common.auditchain import AUDIT_APP_NAME, canonical, line_hash
from convocate.common.errors import BadRequest
from convocate.common.model import validate_uuid
from convocate.common.ops.params import AuditReadParams
from convocate.common.timefmt import format_rfc3339, now_ns
from convocate_agent.auditread import Tail, read_records, read_tail

log = logging.getLogger(__name__)
#: The journal's ``audit <line>`` records: at INFO whatever ``--log-level`` says (a logger's own level
#: decides; the handlers of the root logger print what it passes on).
journal = logging.getLogger(__name__ + ".journal")
journal.setLevel(logging.INFO)

#: PRI of a forwarded record: facility authpriv (10), severity notice (5), RFC 5424 §6.2.1.
AUDIT_PRI = 10 * 8 + 5
#: Ops not recorded: the reads the TUI polls every few seconds (no session content), and the trail's
#: own reads. Every other op, an unknown one included, is recorded with its outcome.
NOT_RECORDED = frozenset({"ping", "list", "get", "capacity", "settings-get", "credential_list", "trash",
                          "audit_read", "operator_challenge"})
#: Longest forwarded datagram, in bytes: a Unix datagram cannot exceed the socket's send buffer
#: (``net.core.wmem_max``, 212992 on Debian) and the shell's imtcp takes frames up to 200000 bytes
#: (its ``MaxFrameSize``); the drop-ins raise rsyslog's maxMessageSize to
#: :data:`convocate_host.rsyslog.MAX_MESSAGE_SIZE` (256 KiB) above it. A longer record stays in the
#: agent's file and journal and is not forwarded (logged); the shell's copy then shows the gap.
FORWARD_MAX = 190_000
#: Longest ``params`` kept in a record, in bytes of canonical JSON: every valid request fits (a 64 KiB
#: ``send`` of control characters escapes to 384 KiB); a longer one (a client's garbage, up to the 1 MiB
#: line) is kept as its size and SHA-256, so that any one record fits an ``audit_read`` answer.
PARAMS_MAX = 400_000


def redact(params: Any) -> Any:
    """``params`` with every ``secret`` replaced by ``secret_fingerprint`` (credentials never reach the trail).

    Args:
        params: A request's ``params`` as the client sent it (any JSON value).

    Returns:
        A copy; a string ``secret`` becomes its :func:`convocate.common.credentials.fingerprint`,
        any other ``secret`` value ``"<redacted>"``.
    """
    if not isinstance(params, dict):
        return params
    out = {}
    for key, value in params.items():
        if key == "secret":
            out["secret_fingerprint"] = credentials.fingerprint(value) if isinstance(value, str) else "<redacted>"
        else:
            out[key] = value
    return out


def bounded(params: Any) -> Any:
    """``params``, or ``{"truncated": true, "bytes": N, "sha256": H}`` when longer than :data:`PARAMS_MAX`."""
    data = canonical({"p": params})
    if len(data) <= PARAMS_MAX:
        return params
    return {"truncated": True, "bytes": len(data) - 6, "sha256": line_hash(data[5:-1])}


def _session_of(op: str, params: Any, result: Any) -> str | None:
    """The session an op is about: the new one of ``create``/``clone``/``restore``, else its ``id``."""
    candidates = []
    if isinstance(params, dict):
        candidates += [params.get("id"), params.get("source_id")]
    if op in ("create", "clone", "restore") and isinstance(result, dict):  # the new session
        view = result.get("session") if isinstance(result.get("session"), dict) else result
        candidates.insert(0, view.get("uuid"))
    for value in candidates:
        if isinstance(value, str):
            try:
                return validate_uuid(value)
            except BadRequest:
                continue
    return None


def caller_fields(caller: Any) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``(operator, via)`` of a :class:`~convocate.common.sshpeers.Caller` (or a bare fingerprint string).

    ``operator`` is what ``caller.state["operator"]`` holds (the proof of the operator's identity,
    issue 19), else None; ``via`` names the SSH key that opened the connection and where from.
    """
    if isinstance(caller, str):
        return None, {"fingerprint": caller, "comment": "", "peer": ""}
    state = getattr(caller, "state", None) or {}
    operator = state.get("operator")
    return (dict(operator) if isinstance(operator, dict) else None), {
        "fingerprint": str(getattr(caller, "fingerprint", "")),
        "comment": str(getattr(caller, "comment", "")),
        "peer": str(getattr(caller, "peer", "")),
    }


def attach_ended(detached_by_tmux: bool) -> str:
    """How an attach ended, for its ``*_end`` record (called in the relay's clean-up).

    Returns:
        ``detached`` (tmux's client ended: detach key, or the session is over), ``agent stopping``
        (the agent's shutdown cancelled the relay), else ``channel closed`` (the operator went).
    """
    if detached_by_tmux:
        return "detached"
    task = asyncio.current_task()
    return "agent stopping" if task is not None and task.cancelling() else "channel closed"


# --- forwarding --------------------------------------------------------------------------------------------

class Forwarder:
    """Sends each record to the agent host's rsyslog socket; an outage is logged once, never waited for.

    Args:
        socket_path: The imuxsock socket (:attr:`Paths.agent_audit_socket`); None sends nothing.
        agent_id: HOSTNAME of the messages (the agent's rsyslog template writes it again anyway).
    """

    def __init__(self, socket_path: Path | None, agent_id: str) -> None:
        self.socket_path = socket_path
        self.agent_id = agent_id
        self._down: str | None = None

    def message(self, line: bytes, ns: int) -> bytes:
        """The RFC 5424 datagram of one record: ``<85>1 TIME AGENT convocate-audit PID - - LINE``."""
        head = f"<{AUDIT_PRI}>1 {format_rfc3339(ns)} {self.agent_id} {AUDIT_APP_NAME} {os.getpid()} - - "
        return head.encode("ascii") + line

    def send(self, line: bytes, ns: int) -> None:
        """Send one record (non-blocking); logs the first failure of an outage and its end."""
        if self.socket_path is None:
            return
        data = self.message(line, ns)
        if len(data) > FORWARD_MAX:
            log.error(messages.AUDIT_TOO_LONG_TO_FORWARD.format(size=len(data), limit=FORWARD_MAX))
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                if len(data) > 64 * 1024:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(data) + 4096)
                s.sendto(data, str(self.socket_path))
        except OSError as e:
            reason = errno.errorcode.get(e.errno or 0, str(e))
            if self._down is None:
                log.error(messages.AUDIT_FORWARD_DOWN.format(socket=self.socket_path, error=e))
            self._down = reason
            return
        if self._down is not None:
            log.warning(messages.AUDIT_FORWARD_BACK.format(socket=self.socket_path))
            self._down = None


# --- the log -----------------------------------------------------------------------------------------------

class AuditLog:
    """The agent's append-only, hash-chained audit file.

    Args:
        path: The file (:attr:`Paths.agent_audit_log`); its directory must exist.
        agent_id: The agent's ID, in every record.
        forward_socket: The rsyslog socket records are forwarded through, or None.
    """

    def __init__(self, path: Path, agent_id: str, forward_socket: Path | None = None) -> None:
        self.path = path
        self.agent_id = agent_id
        self.forwarder = Forwarder(forward_socket, agent_id)
        self._lock = asyncio.Lock()
        self._tail = read_tail(path)
        if self._tail.torn:
            log.error(messages.AUDIT_TORN_TAIL.format(path=path, seq=self._tail.seq))

    @property
    def seq(self) -> int:
        """``seq`` of the last record written (0: none yet)."""
        return self._tail.seq

    async def append(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Add one record (``seq``, ``time``, ``agent`` and ``prev`` are filled in); never raises.

        Args:
            fields: The record's other fields (``operator``, ``via``, ``op``, ``session``, ``params``,
                ``result``, ...), JSON values.

        Returns:
            The record written, or None when it could not be (the failure is logged as an error).
        """
        async with self._lock:
            try:
                record, line, ns = await asyncio.to_thread(self._append_locked, fields)
            except Exception as e:  # disk full, permissions, a bug: the op goes on regardless
                log.error(messages.AUDIT_WRITE_FAILED.format(path=self.path, op=fields.get("op"), error=e))
                return None
        journal.info("audit %s", line.decode("ascii"))
        self.forwarder.send(line, ns)
        return record

    def _append_locked(self, fields: dict[str, Any]) -> tuple[dict[str, Any], bytes, int]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size != self._tail.size:  # another process appended (or the file changed)
                self._tail = read_tail(self.path)
            tail = self._tail
            ns = now_ns()
            record = dict(fields)
            record.update(seq=tail.seq + 1, time=format_rfc3339(ns), agent=self.agent_id, prev=tail.prev)
            if tail.torn:
                record["repaired"] = True
            line = canonical(record)
            data = (b"\n" if tail.open_line else b"") + line + b"\n"
            written = os.write(fd, data)
            if written != len(data):
                self._tail = Tail(seq=tail.seq, prev=tail.prev, torn=True, size=-1)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
            self._tail = Tail(seq=record["seq"], prev=line_hash(line), torn=False, size=tail.size + len(data))
            return record, line, ns
        except OSError:
            self._tail = Tail(seq=self._tail.seq, prev=self._tail.prev, torn=self._tail.torn, size=-1)
            raise
        finally:
            os.close(fd)

    # --- the hooks -------------------------------------------------------------------------------------

    async def record_rpc(self, caller: Any, op: str, params: Any, result: Any, outcome: str,
                         duration_ms: float) -> None:
        """Record one RPC op (:meth:`convocate_agent.rpc.RpcDispatcher.handle_frame`), unless polled.

        Args:
            caller: Who sent it.
            op: The op's name as sent (``?`` when the request could not be read).
            params: Its ``params`` as sent (None when unreadable); secrets are replaced (:func:`redact`).
            result: The op's result (for the new session's id of ``create``/``restore``).
            outcome: ``ok`` or ``<code>: <message>``.
            duration_ms: How long the op took, in milliseconds.
        """
        if op in NOT_RECORDED:
            return
        operator, via = caller_fields(caller)
        await self.append({"operator": operator, "via": via, "op": op, "session": _session_of(op, params, result),
                           "params": bounded(redact(params)), "result": outcome, "duration_ms": round(duration_ms, 1)})

    async def record_attach(self, caller: Any, session_id: str | None, read_only: bool, params: dict[str, Any],
                            outcome: str) -> None:
        """Record an attach channel opening (op ``attach``, or ``observe`` when read-only), or its refusal."""
        operator, via = caller_fields(caller)
        await self.append({"operator": operator, "via": via, "op": "observe" if read_only else "attach",
                           "session": session_id, "params": params, "result": outcome, "duration_ms": 0})

    async def record_attach_end(self, caller: Any, session_id: str, read_only: bool, *, started: float,
                                input_bytes: int, output_bytes: int, ended: str) -> None:
        """Record the end of an attach (op ``attach_end`` / ``observe_end``).

        Args:
            started: ``time.monotonic()`` when it opened.
            input_bytes: Bytes the operator sent into the session.
            output_bytes: Bytes the session sent to the operator.
            ended: :func:`attach_ended`.
        """
        operator, via = caller_fields(caller)
        duration_s = round(time.monotonic() - started, 3)
        await self.append({"operator": operator, "via": via, "op": ("observe" if read_only else "attach") + "_end",
                           "session": session_id, "params": {}, "result": "ok", "duration_ms": 0,
                           "duration_s": duration_s, "input_bytes": input_bytes, "output_bytes": output_bytes,
                           "ended": ended})

    # --- audit_read ------------------------------------------------------------------------------------

    async def read_op(self, params: AuditReadParams) -> dict[str, Any]:
        """The op ``audit_read``: records in file order, filtered, bounded to fit one response line.

        Args:
            params: Decoded (``convocate.common.ops``, which checked the ranges): ``since``/``until``
                (RFC 3339), ``session``, ``operator`` (a name or a ``SHA256:`` fingerprint), ``after_seq``
                (records with a greater ``seq``), ``max`` (1..1000).

        Returns:
            ``{"records": [...], "next_seq": N, "more": bool}``: ``next_seq`` is the ``after_seq`` of the
            next page (the last ``seq`` looked at); ``more`` says that the page stopped early. Lines that
            are not records (a torn write) come as ``{"invalid_line": "<text>", "line": N}``, so a
            verifier sees them.
        """
        return await asyncio.to_thread(read_records, self.path, params)
