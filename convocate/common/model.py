"""The session metadata model, its validation rules and the session states.

A session is a UUIDv4, a home directory on an agent holding ``session.json``,
and a container. :class:`SessionMeta` is what ``session.json`` stores;
:class:`SessionView` adds what only the agent knows at the moment of asking
(running, attached, state) and is the metadata object on the wire (DESIGN §3).
All functions here are pure. The field rules live in :mod:`convocate.common.fields` and are
re-exported here (``from … import X as X``), since callers across the packages import them from the model.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from convocate.common.errors import BadRequest
from convocate.common.fields import AUTO_PORT_LOW as AUTO_PORT_LOW
from convocate.common.fields import CREDENTIAL_NAME_PATTERN as CREDENTIAL_NAME_PATTERN
from convocate.common.fields import DEFAULT_CREDENTIAL as DEFAULT_CREDENTIAL
from convocate.common.fields import DNS_LABEL_MAX as DNS_LABEL_MAX
from convocate.common.fields import DNS_NAME_MAX as DNS_NAME_MAX
from convocate.common.fields import NAME_MAX as NAME_MAX
from convocate.common.fields import PORT_AUTO as PORT_AUTO
from convocate.common.fields import PORT_MAX as PORT_MAX
from convocate.common.fields import PORT_NONE as PORT_NONE
from convocate.common.fields import PROTOCOLS as PROTOCOLS
from convocate.common.fields import is_uuid4 as is_uuid4
from convocate.common.fields import new_uuid as new_uuid
from convocate.common.fields import normalize_dns_name as normalize_dns_name
from convocate.common.fields import parse_trash_id as parse_trash_id
from convocate.common.fields import validate_credential_name as validate_credential_name
from convocate.common.fields import validate_dns_name as validate_dns_name
from convocate.common.fields import validate_name as validate_name
from convocate.common.fields import validate_port as validate_port
from convocate.common.fields import validate_protocol as validate_protocol
from convocate.common.fields import validate_session_credential as validate_session_credential
from convocate.common.fields import validate_uuid as validate_uuid
from convocate.common.timefmt import format_rfc3339, parse_rfc3339

# Session states (DESIGN §4).
STATE_STOPPED = "-"
STATE_LOCKED = "L"
STATE_RUNNING = "R"
STATE_CONNECTED = "C"
STATE_ORPHAN = "O"

#: Activity states of the agent inside a session (convocate_agent.activity).
ACTIVITIES = ("working", "waiting", "idle", "crashed", "exited", "limited")
#: The activity of a session that hit a usage or rate limit (issue 15); ``activity_until`` says when it resets.
ACTIVITY_LIMITED = "limited"
#: A credential fingerprint as the agent records it (convocate.common.credentials.fingerprint).
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{16}")


@dataclass(frozen=True)
class SessionMeta:
    """What ``session.json`` stores for one session.

    Attributes:
        uuid: The session's UUIDv4.
        name: Display name, see :func:`validate_name`.
        created_at: Creation time, ns since the epoch.
        last_accessed: Last attach or lifecycle change, ns since the epoch.
        port: Published port, 0 for none.
        protocol: ``tcp`` or ``udp``.
        dns_name: Lowercase DNS name, ``""`` for none.
        cpus: CPU reservation and limit, in cores (float).
        memory_mb: Memory reservation and limit, in MiB.
        image: Image tag the container last started from, ``""`` if never started.
        activity: What the agent in the session is doing (``working``, ``waiting``,
            ``idle``, ``crashed``, ``exited``), ``""`` when unknown.
        activity_detail: The question it waits on, its progress message, or why it crashed.
        activity_at: When the activity last changed, ns since the epoch (0: never).
        activity_until: ``limited`` only: when the limit resets (or the agent tries again), ns since
            the epoch; 0 otherwise. On the wire ``activity_until`` (RFC 3339), omitted when 0.
        credential: Name of the cluster credential the session uses; ``""`` means ``default``
            (convocate.common.credentials).
        credential_fingerprint: Fingerprint of the credential its container last started with,
            ``""`` for none (never the secret).
    """

    uuid: str
    name: str
    created_at: int
    last_accessed: int
    port: int = 0
    protocol: str = "tcp"
    dns_name: str = ""
    cpus: float = 0.0
    memory_mb: int = 0
    image: str = ""
    activity: str = ""
    activity_detail: str = ""
    activity_at: int = 0
    activity_until: int = 0
    credential: str = ""
    credential_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        """The object written to ``session.json``."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "created_at": format_rfc3339(self.created_at),
            "last_accessed": format_rfc3339(self.last_accessed),
            "port": self.port,
            "protocol": self.protocol,
            "dns_name": self.dns_name,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "image": self.image,
            **self._activity_json(),
            "credential": self.credential,
            "credential_fingerprint": self.credential_fingerprint,
        }

    def _activity_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"activity": self.activity}
        if self.activity_detail:
            out["activity_detail"] = self.activity_detail
        if self.activity_at:
            out["activity_at"] = format_rfc3339(self.activity_at)
        if self.activity_until:
            out["activity_until"] = format_rfc3339(self.activity_until)
        return out

    @classmethod
    def from_json(cls, obj: Any, *, expected_uuid: str | None = None) -> SessionMeta:
        """Rebuild metadata from a ``session.json`` object, checking every field.

        Files written by the original agents lack the extension fields; those
        take their zero values.

        Args:
            obj: The decoded JSON.
            expected_uuid: The UUID of the directory the file was found in; a
                file naming another UUID is refused.

        Raises:
            BadRequest: a field is missing, mistyped or breaks its rule.
        """
        if not isinstance(obj, dict):
            raise BadRequest("session metadata must be a JSON object")
        sid = validate_uuid(obj.get("uuid"), "uuid")
        if expected_uuid is not None and sid != expected_uuid:
            raise BadRequest(f'uuid "{sid}" does not match its directory "{expected_uuid}"')
        try:
            created = parse_rfc3339(obj["created_at"])
            accessed = parse_rfc3339(obj.get("last_accessed") or obj["created_at"])
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"bad or missing timestamp: {e}") from e
        port, cpus, memory, image = _resources_from_json(obj)
        activity, detail, activity_at, activity_until = _activity_from_json(obj)
        credential = validate_session_credential(obj.get("credential", "") or "")
        fingerprint = obj.get("credential_fingerprint", "") or ""
        if not isinstance(fingerprint, str) or (fingerprint and not _FINGERPRINT.fullmatch(fingerprint)):
            raise BadRequest(f"bad credential_fingerprint {fingerprint!r}")
        return cls(
            uuid=sid,
            name=validate_name(obj.get("name")),
            created_at=created,
            last_accessed=accessed,
            port=port,
            protocol=validate_protocol(obj.get("protocol", "tcp") or "tcp"),
            dns_name=normalize_dns_name(obj.get("dns_name", "") or ""),
            cpus=float(cpus),
            memory_mb=memory,
            image=image,
            activity=activity if activity in ACTIVITIES else "",
            activity_detail=detail if isinstance(detail, str) else "",
            activity_at=activity_at,
            activity_until=activity_until if activity == ACTIVITY_LIMITED else 0,
            credential=credential,
            credential_fingerprint=fingerprint,
        )

    def with_changes(self, **changes: Any) -> SessionMeta:
        """A copy with ``changes`` applied (fields are not re-validated)."""
        return replace(self, **changes)


def derive_state(*, running: bool, attached_count: int, locked: bool) -> str:
    """Derive a session's one-character state (DESIGN §4).

    Args:
        running: The container is up.
        attached_count: Operators attached right now.
        locked: A lock file with a live holder exists.

    Returns:
        ``C`` up and attached, ``R`` up, ``L`` locked and not up, ``-`` otherwise.
        (``O`` is decided by the shell, which alone sees orphan directories.)
    """
    if running:
        return STATE_CONNECTED if attached_count > 0 else STATE_RUNNING
    return STATE_LOCKED if locked else STATE_STOPPED


@dataclass(frozen=True)
class SessionView:
    """The session metadata object on the wire: stored fields plus live state.

    Attributes:
        meta: The stored metadata.
        running: The container is up.
        attached_count: Operators attached through this agent.
        locked: A lifecycle lock with a live holder exists.
        agent_id: The agent the session lives on (filled in by shell-side clients).
        orphan: A session directory on the shell host that no agent claims (state ``O``).
        claude_code: The Claude Code version the session's container runs (its image's
            ``convocate.claude-code`` label), ``""`` when it has no container or the label is missing.
        credential_stale: The container runs with a credential fingerprint that is no longer the
            current one for its credential's name (``convocate auth set`` changed it, or removed it).
        credential_missing: The session names a credential the agent does not have (it starts without one).
        received: The object as the agent sent it, when read by :meth:`from_wire` (``--json`` prints it,
            with every field, ours or a newer agent's); not compared.
    """

    meta: SessionMeta
    running: bool = False
    attached_count: int = 0
    locked: bool = False
    agent_id: str = ""
    orphan: bool = False
    claude_code: str = ""
    credential_stale: bool = False
    credential_missing: bool = False
    received: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state(self) -> str:
        """One of ``- L R C`` (see :func:`derive_state`), or ``O`` for an orphan."""
        if self.orphan:
            return STATE_ORPHAN
        return derive_state(running=self.running, attached_count=self.attached_count, locked=self.locked)

    def to_wire(self) -> dict[str, Any]:
        """The metadata object of DESIGN §3; ``port``/``protocol``/``dns_name`` omitted when unset."""
        m = self.meta
        wire: dict[str, Any] = {
            "uuid": m.uuid,
            "name": m.name,
            "created_at": format_rfc3339(m.created_at),
            "last_accessed": format_rfc3339(m.last_accessed),
        }
        if m.port:
            wire["port"] = m.port
            wire["protocol"] = m.protocol
        if m.dns_name:
            wire["dns_name"] = m.dns_name
        wire.update(
            running=self.running,
            attached=self.attached_count > 0,
            state=self.state,
            image=m.image,
            cpus=m.cpus,
            memory_mb=m.memory_mb,
            attached_count=self.attached_count,
            **m._activity_json(),
            credential=m.credential,
            credential_fingerprint=m.credential_fingerprint,
            credential_stale=self.credential_stale,
            credential_missing=self.credential_missing,
        )
        if self.claude_code:  # (ext) omitted when unknown
            wire["claude_code"] = self.claude_code
        return wire

    @classmethod
    def from_wire(cls, obj: Any, agent_id: str = "") -> SessionView:
        """Rebuild a view from an agent's metadata object (original or extended).

        Raises:
            BadRequest: the object is not valid session metadata.
        """
        if not isinstance(obj, dict):
            raise BadRequest("session metadata must be a JSON object")
        meta = SessionMeta.from_json(obj)
        running = bool(obj.get("running", False))
        count = obj.get("attached_count")
        if not isinstance(count, int) or isinstance(count, bool):
            count = 1 if obj.get("attached") else 0
        state = obj.get("state")
        claude_code = obj.get("claude_code", "")
        return cls(
            meta=meta,
            running=running,
            attached_count=count,
            locked=state == STATE_LOCKED,
            agent_id=agent_id,
            claude_code=claude_code if isinstance(claude_code, str) else "",
            credential_stale=obj.get("credential_stale") is True,
            credential_missing=obj.get("credential_missing") is True,
            received=obj,
        )


def _resources_from_json(obj: dict[str, Any]) -> tuple[int, float | int, int, str]:
    """The stored ``port``, ``cpus``, ``memory_mb`` and ``image`` of a ``session.json`` object, checked.

    Raises:
        BadRequest: a field is mistyped or out of range.
    """
    port = obj.get("port", 0) or 0
    validate_port(port)
    if port == PORT_AUTO:
        raise BadRequest("stored port cannot be -1 (auto)")
    cpus = obj.get("cpus", 0) or 0
    memory = obj.get("memory_mb", 0) or 0
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 <= cpus <= sys.float_info.max:
        raise BadRequest(f"bad cpus {cpus!r}")  # NaN, and an integer beyond float's range, too
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise BadRequest(f"bad memory_mb {memory!r}")
    image = obj.get("image", "") or ""
    if not isinstance(image, str):
        raise BadRequest(f"bad image {image!r}")
    return port, cpus, memory, image


def _activity_from_json(obj: dict[str, Any]) -> tuple[Any, Any, float, float]:
    """The stored ``activity``, ``activity_detail``, ``activity_at`` and ``activity_until`` (raw, unfiltered).

    Raises:
        BadRequest: a timestamp does not parse.
    """
    activity = obj.get("activity", "") or ""
    detail = obj.get("activity_detail", "") or ""
    try:
        activity_at = parse_rfc3339(obj["activity_at"]) if obj.get("activity_at") else 0
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad activity_at: {e}") from e
    try:
        activity_until = parse_rfc3339(obj["activity_until"]) if obj.get("activity_until") else 0
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad activity_until: {e}") from e
    return activity, detail, activity_at, activity_until
