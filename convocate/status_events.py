"""What an agent's status event may hold: the type and size rules status-serve checks (issue 14).

Every session is untrusted, and so is what an agent says for it: :func:`check_event` checks each
field of an event before anything of it is used, the DNS name by
:func:`convocate.common.model.validate_dns_name` inside the cluster's domain. The event types are
:mod:`convocate.common.protocol`'s.
"""

from __future__ import annotations

from convocate.common.errors import BadRequest
from convocate.common.model import is_uuid4, validate_dns_name
from convocate.common.protocol import (
    AGENT_STARTED,
    CONTAINER_CREATED,
    CONTAINER_DELETED,
    CONTAINER_EDITED,
    CONTAINER_STARTED,
    CONTAINER_STOPPED,
    EVENT_TYPES,
    SESSION_ACTIVITY,
    SESSION_ATTACHED,
    SESSION_DETACHED,
    Event,
)
from convocate.common.timefmt import parse_rfc3339
from convocate.registry import AGENT_ID

#: Event types that concern one session: they need a ``session_id`` (a UUIDv4).
SESSION_EVENTS = frozenset({CONTAINER_CREATED, CONTAINER_EDITED, CONTAINER_STARTED, CONTAINER_STOPPED,
                            CONTAINER_DELETED, SESSION_ATTACHED, SESSION_DETACHED, SESSION_ACTIVITY})
#: Event types whose data is the session's metadata, ``dns_name`` included.
METADATA_EVENTS = frozenset({CONTAINER_CREATED, CONTAINER_EDITED, CONTAINER_STARTED})
#: Longest ``timestamp`` (RFC 3339 with nanoseconds and an offset is 35 characters).
TIMESTAMP_MAX = 64
#: Longest ``version`` and ``image`` of ``agent.started`` (a Docker reference is at most 255 characters).
STARTED_TEXT_MAX = 256


def check_event(event: Event, domain: str | None) -> None:
    """Check every field of an agent's event for type and size before anything of it is used.

    Args:
        event: The parsed event.
        domain: The cluster's DNS domain, for :func:`validate_dns_name`.

    Raises:
        BadRequest: a field breaks its rule; the message says which (and is safe to log: values are repr'd).
    """
    def bad(what: str) -> BadRequest:
        return BadRequest(f"event {event.type[:64]!r}: {what}")

    if event.type not in EVENT_TYPES:
        raise bad("not an event type agents send")
    if not AGENT_ID.match(event.agent_id):
        raise bad(f"agent_id {event.agent_id[:64]!r} is not 8 of a-z and 0-9")
    if event.type in SESSION_EVENTS:
        if event.session_id is None or not is_uuid4(event.session_id):
            raise bad(f"session_id {str(event.session_id)[:64]!r} is not a UUIDv4")
    elif event.session_id is not None:
        raise bad("an agent event carries no session_id")
    if len(event.timestamp) > TIMESTAMP_MAX:
        raise bad(f"timestamp longer than {TIMESTAMP_MAX} characters")
    try:
        parse_rfc3339(event.timestamp)
    except (TypeError, ValueError) as e:
        raise bad(f"timestamp {event.timestamp!r} is not RFC 3339: {e}") from e
    if event.data is not None and not isinstance(event.data, dict):
        raise bad(f"data must be an object, got {type(event.data).__name__}")
    data = event.data or {}
    if event.type == AGENT_STARTED:
        for name in ("version", "image"):
            value = data.get(name, "")
            if not isinstance(value, str) or len(value) > STARTED_TEXT_MAX:
                raise bad(f"data.{name} must be a string of at most {STARTED_TEXT_MAX} characters")
        if not isinstance(data.get("capacity", {}), dict):
            raise bad("data.capacity must be an object")
    for name in ("heartbeat_interval_s", "interval_s"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(f"data.{name} must be a number")
    if event.type in METADATA_EVENTS:
        uuid = data.get("uuid", event.session_id)
        if uuid != event.session_id:
            raise bad(f"data.uuid {str(uuid)[:64]!r} is not the event's session_id")
        validate_dns_name(data.get("dns_name", "") or "", domain)
