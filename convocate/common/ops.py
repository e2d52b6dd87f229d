"""The RPC operations and the strict decoding of their parameters (DESIGN §3).

Each op declares its parameters once, here; the agent decodes requests with
:func:`decode_params` and clients may use :data:`OPS` to know what exists.
Params are strict: an unknown field, a wrong JSON type, a missing required
field or a value that breaks its rule is a :class:`BadRequest` whose message
starts with ``decode params:`` and names the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from convocate.common import credentials, messages, operator_claim
from convocate.common.errors import BadRequest
from convocate.common.model import (
    parse_trash_id,
    validate_dns_name,
    validate_name,
    validate_port,
    validate_protocol,
    validate_uuid,
)
from convocate.common.protocol import json_type
from convocate.common.timefmt import parse_rfc3339

#: Largest text accepted by ``send``, in bytes of UTF-8.
SEND_TEXT_MAX = 64 * 1024
#: Largest ``lines`` accepted by ``capture`` (the image keeps 100000 lines of history).
CAPTURE_LINES_MAX = 100_000
#: Largest ``max_bytes`` of ``recording_read`` (bytes of the file per response, issue 19).
RECORDING_READ_MAX = 256 * 1024
#: Largest ``max_matches`` of ``recording_grep``, and its longest pattern (characters).
GREP_MATCHES_MAX = 10_000
GREP_PATTERN_MAX = 1000
#: Bounds of a per-session CPU limit, in cores.
CPUS_MIN, CPUS_MAX = 0.01, 1024.0
#: Bounds of a per-session memory limit, in MiB. Docker refuses less than 6 MiB.
MEMORY_MIN_MB, MEMORY_MAX_MB = 16, 16 * 1024 * 1024

_KIND_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
               "object": "an object"}


def _kind_matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown parameter kind {kind!r}")


def _cpus(value: float) -> float:
    if not (CPUS_MIN <= value <= CPUS_MAX):
        raise BadRequest(messages.BAD_RANGE.format(field="cpus", value=value, low=CPUS_MIN, high=CPUS_MAX,
                                                   unit=" cores"))
    return float(value)


def _memory(value: int) -> int:
    if not (MEMORY_MIN_MB <= value <= MEMORY_MAX_MB):
        raise BadRequest(messages.BAD_RANGE.format(field="memory_mb", value=value, low=MEMORY_MIN_MB,
                                                   high=MEMORY_MAX_MB, unit=" MiB"))
    return value


def _lines(value: int) -> int:
    if not (0 <= value <= CAPTURE_LINES_MAX):
        raise BadRequest(messages.BAD_RANGE.format(field="lines", value=value, low=0, high=CAPTURE_LINES_MAX, unit=""))
    return value


def _send_text(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > SEND_TEXT_MAX:
        raise BadRequest(messages.BAD_TEXT.format(field="text", reason=f"longer than {SEND_TEXT_MAX} bytes"))
    if "\x00" in value:
        raise BadRequest(messages.BAD_TEXT.format(field="text", reason="contains a NUL character"))
    return value


def _timestamp(value: str) -> str:
    try:
        parse_rfc3339(value)
    except ValueError as e:
        raise BadRequest(messages.BAD_TEXT.format(field="since", reason=str(e))) from e
    return value


def _window(field: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            parse_rfc3339(value)
        except ValueError as e:
            raise BadRequest(messages.BAD_TEXT.format(field=field, reason=str(e))) from e
        return value
    return check


def _bounded(field: str, low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not (low <= value <= high):
            raise BadRequest(messages.BAD_RANGE.format(field=field, value=value, low=low, high=high, unit=""))
        return value
    return check


def _recording_file(value: str) -> str:
    from convocate.common.asciicast import FILE_NAME_PATTERN

    if not FILE_NAME_PATTERN.fullmatch(value):
        raise BadRequest(messages.BAD_RECORDING_FILE.format(value=value))
    return value


def _grep_pattern(value: str) -> str:
    if len(value) > GREP_PATTERN_MAX:
        raise BadRequest(messages.GREP_BAD_PATTERN.format(pattern=value[:40] + "...",
                                                          reason=f"longer than {GREP_PATTERN_MAX} characters"))
    try:
        re.compile(value)
    except re.error as e:
        raise BadRequest(messages.GREP_BAD_PATTERN.format(pattern=value, reason=e)) from None
    return value


def _trash_id(value: str) -> str:
    parse_trash_id(value)
    return value


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    Attributes:
        name: Field name in ``params``.
        kind: JSON type: ``string``, ``integer``, ``number``, ``boolean`` or ``object``.
        required: Whether the field must be present.
        check: Validator/normaliser applied to a present value; raises BadRequest.
    """

    name: str
    kind: str
    required: bool = False
    check: Callable[[Any], Any] | None = None


def _agent_id(value: str) -> str:
    if value and not re.fullmatch(r"[a-z0-9]{8}", value):  # "" clears (override's moving_to)
        raise BadRequest(messages.BAD_AGENT_ID.format(value=value))
    return value


def _id(name: str = "id") -> Param:
    return Param(name, "string", required=True, check=lambda v: validate_uuid(v, name))


_NAME = Param("name", "string", check=validate_name)
_PORT = Param("port", "integer", check=validate_port)
_PROTOCOL = Param("protocol", "string", check=validate_protocol)
_DNS = Param("dns_name", "string", check=validate_dns_name)
_CPUS = Param("cpus", "number", check=_cpus)
_MEMORY = Param("memory_mb", "integer", check=_memory)
#: A session's credential name (issue 15): ``""`` means the agent's ``default`` credential.
_CREDENTIAL = Param("credential", "string", check=credentials.validate_session_credential)
_CREDENTIAL_NAME = Param("name", "string", required=True, check=credentials.validate_name)

#: Every op and its parameters. ``None`` marks an op whose params are an open
#: object validated by its handler (``settings-set``).
OPS: dict[str, tuple[Param, ...] | None] = {
    "ping": (),
    "list": (),
    "get": (_id(),),
    "create": (
        Param("name", "string", required=True, check=validate_name),
        _PORT, _PROTOCOL, _DNS, _CPUS, _MEMORY,
        Param("start", "boolean"), _CREDENTIAL,
    ),
    "edit": (_id(), _NAME, _PORT, _PROTOCOL, _DNS, _CPUS, _MEMORY, _CREDENTIAL),
    "clone": (_id("source_id"), Param("name", "string", required=True, check=validate_name)),
    "delete": (_id(),),
    "kill": (_id(),),
    "background": (_id(),),
    # moving_to (issue 18): the operators detached are told the session moves to that agent, and the
    # copy here is not restarted until the move ends; "" clears that (a rolled-back move).
    "override": (_id(), Param("moving_to", "string", check=_agent_id)),
    "restart": (_id(),),
    "settings-get": (),
    "settings-set": None,
    "capture": (_id(), Param("lines", "integer", check=_lines)),
    "send": (_id(), Param("text", "string", required=True, check=_send_text), Param("enter", "boolean")),
    "capacity": (),
    "logs": (_id(), Param("lines", "integer", check=_lines), Param("since", "string", check=_timestamp)),
    "trash": (),
    "restore": (Param("trash_id", "string", required=True, check=_trash_id),),
    # (ext, issue 15) the cluster's Claude credentials; no result or error ever carries a secret.
    "credential_set": (
        _CREDENTIAL_NAME,
        Param("kind", "string", required=True, check=credentials.validate_kind),
        Param("secret", "string", required=True, check=credentials.validate_secret),
    ),
    "credential_list": (),
    "credential_delete": (_CREDENTIAL_NAME,),
    # (ext, issue 19) the sessions' terminal recordings, read-only (convocate_agent/recordings.py).
    "recording_list": (_id(),),
    "recording_read": (
        _id(), Param("file", "string", required=True, check=_recording_file),
        Param("offset", "integer", check=_bounded("offset", 0, 2**53)),
        Param("max_bytes", "integer", check=_bounded("max_bytes", 1, RECORDING_READ_MAX)),
    ),
    "recording_grep": (
        Param("pattern", "string", required=True, check=_grep_pattern),
        Param("id", "string", check=lambda v: validate_uuid(v, "id")),
        Param("since", "string", check=_window("since")), Param("until", "string", check=_window("until")),
        Param("max_matches", "integer", check=_bounded("max_matches", 1, GREP_MATCHES_MAX)),
    ),
    # (ext, issue 19) the operator's identity on this connection (convocate.common.operator_claim).
    "operator_challenge": (),
    "operator_identify": (
        Param("certificate", "string", required=True,
              check=lambda v: operator_claim.bounded(v, "certificate", operator_claim.MAX_CERTIFICATE_CHARS)),
        Param("signature", "string", required=True,
              check=lambda v: operator_claim.bounded(v, "signature", operator_claim.MAX_SIGNATURE_CHARS)),
    ),
    "operator_whoami": (),
    # (ext, issue 19) the agent's audit trail, in pages (convocate_agent.audit.read_records).
    "audit_read": (
        Param("since", "string", check=_timestamp), Param("until", "string", check=_timestamp),
        Param("session", "string", check=lambda v: validate_uuid(v, "session")),
        Param("operator", "string"), Param("after_seq", "integer"), Param("max", "integer"),
        Param("raw", "boolean"),
    ),
}

#: Ops in the original v2 protocol; the rest are extensions (ext).
ORIGINAL_OPS = frozenset(
    {"ping", "list", "get", "create", "edit", "clone", "delete", "kill", "background", "override", "restart",
     "settings-get", "settings-set"}
)


def decode_params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` against ``op``'s declaration.

    Args:
        op: The operation name.
        params: The request's ``params`` object.

    Returns:
        A new dict holding only the fields present, each checked and
        normalised (e.g. ``dns_name`` lowercased, ``protocol: ""`` → ``tcp``).

    Raises:
        BadRequest: ``unknown op: "<op>"``, or ``decode params: ...`` naming
            the first offending field.
    """
    if op not in OPS:
        raise BadRequest(messages.UNKNOWN_OP.format(op=op))
    spec = OPS[op]
    if spec is None:
        return dict(params)
    known = {p.name: p for p in spec}
    for key in params:
        if key not in known:
            raise BadRequest(messages.DECODE_PARAMS.format(detail=messages.UNKNOWN_FIELD.format(field=key)))
    out: dict[str, Any] = {}
    for p in spec:
        if p.name not in params:
            if p.required:
                raise BadRequest(messages.DECODE_PARAMS.format(detail=messages.MISSING_FIELD.format(field=p.name)))
            continue
        value = params[p.name]
        if not _kind_matches(p.kind, value):
            raise BadRequest(
                messages.DECODE_PARAMS.format(
                    detail=messages.WRONG_TYPE.format(field=p.name, expected=_KIND_NAMES[p.kind], got=json_type(value))
                )
            )
        if p.check is not None:
            try:
                value = p.check(value)
            except BadRequest as e:
                raise BadRequest(messages.DECODE_PARAMS.format(detail=e.message)) from e
        out[p.name] = value
    return out
