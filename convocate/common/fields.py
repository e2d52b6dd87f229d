"""Field rules of session metadata: UUIDs, trash ids, names, credentials, ports, protocols, DNS names.

Each ``validate_*`` takes a decoded JSON value and returns it checked (or normalised), raising
:class:`~convocate.common.errors.BadRequest` with a message from :mod:`convocate.common.messages`
naming the field and the rule. The rules come from DESIGN §3 (session metadata), RFC 4122 (UUIDv4)
and RFC 1035 §2.3.4 (DNS labels). All functions here are pure.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest

PROTOCOLS = ("tcp", "udp")
PORT_NONE = 0
PORT_AUTO = -1
#: Lowest port the agent hands out for ``port: -1`` (DESIGN §3).
AUTO_PORT_LOW = 1001
PORT_MAX = 65535

NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9 _.\-]{1,64}")
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
DNS_NAME_MAX = 253
#: Longest DNS label (RFC 1035 §2.3.4).
DNS_LABEL_MAX = 63


def validate_uuid(value: Any, field_name: str = "id") -> str:
    """Check that ``value`` is a canonical UUIDv4 before it touches a path.

    Accepts the lowercase hyphenated form only (``uuid.uuid4()`` rendered by
    ``str``), so one session has exactly one spelling and ``..``, ``/`` or NUL
    can never reach the filesystem.

    Args:
        value: The candidate, usually a request parameter.
        field_name: The parameter name used in the error.

    Returns:
        ``value`` unchanged.

    Raises:
        BadRequest: ``value`` is not a string in canonical UUIDv4 form (RFC 9562 §5.4).
    """
    if not isinstance(value, str) or not _UUID4.fullmatch(value):
        # Control characters are shown escaped, so the text cannot forge a line where it is logged.
        shown = (value if value.isprintable() else repr(value)[1:-1]) if isinstance(value, str) else repr(value)
        raise BadRequest(messages.BAD_UUID.format(field=field_name, value=shown))
    return value


_TRASH_ID = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.(\d{1,20})")


def parse_trash_id(value: Any) -> tuple[str, int]:
    """Split a trash entry ID ``<uuid>.<deleted-at-ns>`` (the entry's directory name).

    Returns:
        ``(session uuid, deletion time in ns)``.

    Raises:
        BadRequest: not of that form (checked before it becomes a path).
    """
    m = _TRASH_ID.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise BadRequest(f'field "trash_id": {value!r} is not a trash entry ID (<uuid>.<nanoseconds>)')
    return m.group(1), int(m.group(2))


def is_uuid4(value: str) -> bool:
    """Whether ``value`` is a canonical UUIDv4 (e.g. a directory name under the session base)."""
    return bool(_UUID4.fullmatch(value))


def new_uuid() -> str:
    """A fresh random UUIDv4 in canonical form."""
    return str(uuidlib.uuid4())


#: The credential a session uses when its metadata names none (``credential: ""``), issue 15.
DEFAULT_CREDENTIAL = "default"
#: A credential name, which is also its file name in the credential store.
CREDENTIAL_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def validate_credential_name(value: Any, field_name: str = "name") -> str:
    """Check a credential name: ``[a-z0-9][a-z0-9-]{0,31}`` (it becomes a file name).

    Raises:
        BadRequest: the name breaks the rule.
    """
    if not isinstance(value, str) or not CREDENTIAL_NAME_PATTERN.fullmatch(value):
        shown = value if isinstance(value, str) and value.isprintable() else repr(value)
        raise BadRequest(messages.BAD_CREDENTIAL_NAME.format(field=field_name, value=shown[:64]))
    return value


def validate_session_credential(value: Any) -> str:
    """A session's ``credential`` field: ``""`` (the default credential) or a credential name.

    Raises:
        BadRequest: neither.
    """
    return "" if value == "" else validate_credential_name(value, "credential")


def validate_name(value: Any, field_name: str = "name") -> str:
    """Check a session name: 1-64 of letters, digits, space, ``_``, ``-``, ``.`` (DESIGN §3).

    Leading and trailing spaces are refused rather than trimmed, so what the
    operator typed is what is stored.

    Raises:
        BadRequest: the name breaks the rule.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value != value.strip():
        raise BadRequest(messages.BAD_NAME.format(field=field_name, value=value))
    return value


def validate_port(value: Any) -> int:
    """Check a requested port: 0 none, -1 auto, 1-65535 explicit (DESIGN §3).

    Raises:
        BadRequest: out of range or not an integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not (PORT_AUTO <= value <= PORT_MAX):
        raise BadRequest(messages.BAD_PORT.format(value=value))
    return value


def validate_protocol(value: Any) -> str:
    """Check a port protocol: ``tcp`` or ``udp``; the empty string means ``tcp``.

    Raises:
        BadRequest: any other value.
    """
    if value == "":
        return "tcp"
    if value not in PROTOCOLS:
        raise BadRequest(messages.BAD_PROTOCOL.format(value=value))
    return value


def normalize_dns_name(value: Any) -> str:
    """Lowercase a DNS name and check its syntax only; ``""`` means none.

    Rules (RFC 1123 §2.1, RFC 1035 §2.3.4): dot-separated labels of 1-63
    characters from ``a-z 0-9 -``, not starting or ending with ``-``, at most
    253 characters in all. A trailing dot is refused. This is the syntax layer
    of :func:`validate_dns_name`; alone it serves names read back from stored
    metadata (which older agents may hold dotted) and the cluster's domain.
    Whether a session may *publish* a name is :func:`validate_dns_name`'s rule.

    Returns:
        The lowercased name.

    Raises:
        BadRequest: the name breaks a rule; the message says which.
    """
    if not isinstance(value, str):
        raise BadRequest(messages.WRONG_TYPE.format(field="dns_name", expected="a string", got=type(value).__name__))
    name = value.lower()
    if name == "":
        return ""

    def bad(reason: str) -> BadRequest:
        return BadRequest(messages.BAD_DNS_NAME.format(value=value, reason=reason))

    if len(name) > DNS_NAME_MAX:
        raise bad(f"longer than {DNS_NAME_MAX} characters")
    for label in name.split("."):
        if label == "":
            raise bad("empty label")
        if len(label) > DNS_LABEL_MAX:
            raise bad(f"label {label[:16]!r}... is longer than {DNS_LABEL_MAX} characters")
        if not _DNS_LABEL.fullmatch(label):
            raise bad(f"label {label!r} must be a-z, 0-9 and '-', not starting or ending with '-'")
    return name


def validate_dns_name(value: Any, domain: str | None = None) -> str:
    """The one check of a session's DNS name: the agent's on create/edit, status-serve's on every event.

    A session's DNS name is one RFC 1123 label (``web``), which the shell host publishes as
    ``web.<domain>`` and ``web``; or, where the cluster's domain is known (status-serve), a name
    inside that domain (``web.convocate.internal``), published as it is. Any other dotted name is
    refused: ``api.anthropic.com`` would otherwise be answered by the cluster's resolver for every
    host that uses it (issue 14). The agent does not know the cluster's domain, so it takes single
    labels only.

    Args:
        value: The candidate (a request parameter, or a field of an agent's event).
        domain: The cluster's DNS domain (status-serve); None where it is not known (the agent).

    Returns:
        The lowercased name, ``""`` for none.

    Raises:
        BadRequest: not a string, bad syntax (see :func:`normalize_dns_name`), or outside the domain.
    """
    name = normalize_dns_name(value)
    if "." not in name:
        return name
    domain = (domain or "").lower().strip(".")
    if domain and name.endswith("." + domain) and name != domain:
        return name
    reason = (messages.DNS_NAME_OUTSIDE_DOMAIN.format(domain=domain) if domain
              else messages.DNS_NAME_NOT_A_LABEL)
    raise BadRequest(messages.BAD_DNS_NAME.format(value=value, reason=reason))
