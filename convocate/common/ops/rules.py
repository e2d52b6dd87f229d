"""The rules an op's parameters are checked by: JSON kinds, bounds and validators (DESIGN §3).

Each :class:`Param` is one field's rule, declared once and used by every op that has the field
(``convocate.common.ops.params``). A check raises :class:`BadRequest` naming the field; the
decoder prefixes ``decode params:``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from convocate.common import credentials, messages
from convocate.common.errors import BadRequest
from convocate.common.model import (
    parse_trash_id,
    validate_dns_name,
    validate_name,
    validate_port,
    validate_protocol,
    validate_uuid,
)
from convocate.common.timefmt import parse_rfc3339

#: Largest text accepted by ``send``, in bytes of UTF-8.
SEND_TEXT_MAX = 64 * 1024
#: Largest ``lines`` accepted by ``capture`` (the image keeps 100000 lines of history).
CAPTURE_LINES_MAX = 100_000
#: Largest ``max_bytes`` of ``recording_read`` (bytes of the file per response, issue 19), and its default.
RECORDING_READ_MAX = 256 * 1024
RECORDING_READ_DEFAULT = 256 * 1024
#: Largest ``max_matches`` of ``recording_grep``, and its longest pattern (characters).
GREP_MATCHES_MAX = 10_000
GREP_PATTERN_MAX = 1000
#: ``recording_grep``'s ``max_matches`` when left out.
GREP_MATCHES_DEFAULT = 1000
#: Records one ``audit_read`` answer holds at most: its ``max`` default and ceiling.
AUDIT_READ_MAX = 1000
#: Bounds of a per-session CPU limit, in cores.
CPUS_MIN, CPUS_MAX = 0.01, 1024.0
#: Bounds of a per-session memory limit, in MiB. Docker refuses less than 6 MiB.
MEMORY_MIN_MB, MEMORY_MAX_MB = 16, 16 * 1024 * 1024

KIND_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
               "object": "an object"}


def kind_matches(kind: str, value: Any) -> bool:
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


def check_lines(value: int) -> int:
    if not (0 <= value <= CAPTURE_LINES_MAX):
        raise BadRequest(messages.BAD_RANGE.format(field="lines", value=value, low=0, high=CAPTURE_LINES_MAX, unit=""))
    return value


def check_send_text(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > SEND_TEXT_MAX:
        raise BadRequest(messages.BAD_TEXT.format(field="text", reason=f"longer than {SEND_TEXT_MAX} bytes"))
    if "\x00" in value:
        raise BadRequest(messages.BAD_TEXT.format(field="text", reason="contains a NUL character"))
    return value


def check_rfc3339(field: str) -> Callable[[str], str]:
    """The check of an RFC 3339 time in ``field``; its refusal names that field."""
    def check(value: str) -> str:
        try:
            parse_rfc3339(value)
        except ValueError as e:
            raise BadRequest(messages.BAD_TEXT.format(field=field, reason=str(e))) from e
        return value
    return check


def check_bounded(field: str, low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not (low <= value <= high):
            raise BadRequest(messages.BAD_RANGE.format(field=field, value=value, low=low, high=high, unit=""))
        return value
    return check


def check_recording_file(value: str) -> str:
    from convocate.common.asciicast import FILE_NAME_PATTERN

    if not FILE_NAME_PATTERN.fullmatch(value):
        raise BadRequest(messages.BAD_RECORDING_FILE.format(value=value))
    return value


def check_grep_pattern(value: str) -> str:
    if len(value) > GREP_PATTERN_MAX:
        raise BadRequest(messages.GREP_BAD_PATTERN.format(pattern=value[:40] + "...",
                                                          reason=f"longer than {GREP_PATTERN_MAX} characters"))
    try:
        re.compile(value)
    except re.error as e:
        raise BadRequest(messages.GREP_BAD_PATTERN.format(pattern=value, reason=e)) from None
    return value


def check_trash_id(value: str) -> str:
    parse_trash_id(value)
    return value


def check_audit_page(decoded: dict[str, Any]) -> None:
    """``audit_read``'s ranges: ``max`` 1 to :data:`AUDIT_READ_MAX`, ``after_seq`` >= 0 (in that order).

    A rule across fields (``AuditReadParams.check_together``), not each field's check, so that it runs
    after every field's type and rule, as the agent's own check did: a request wrong in several ways
    is refused for the same field as before.

    Raises:
        BadRequest: :data:`messages.BAD_RANGE` naming the field.
    """
    if "max" in decoded:
        check_bounded("max", 1, AUDIT_READ_MAX)(decoded["max"])
    if "after_seq" in decoded and decoded["after_seq"] < 0:
        raise BadRequest(messages.BAD_RANGE.format(field="after_seq", value=decoded["after_seq"], low=0, high="any",
                                                   unit=""))


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    Attributes:
        name: Field name in ``params``.
        kind: JSON type: ``string``, ``integer``, ``number``, ``boolean`` or ``object``.
        required: Whether the field must be present.
        check: Validator/normaliser applied to a present value; raises BadRequest.
        doc: What it means and its rule, and what its absence means, for the op reference (docs/ops.md).
        default: What an optional field left out reads as (on the agent, what the op does without it);
            ``None``: absent is a meaning of its own, which the handler reads (``edit``'s "keep",
            ``create``'s limits from the agent's settings).
    """

    name: str
    kind: str
    required: bool = False
    check: Callable[[Any], Any] | None = None
    doc: str = ""
    default: Any = None


def check_agent_id(value: str) -> str:
    if value and not re.fullmatch(r"[a-z0-9]{8}", value):  # "" clears (override's moving_to)
        raise BadRequest(messages.BAD_AGENT_ID.format(value=value))
    return value


def uuid_param(name: str = "id", doc: str = "the session's UUIDv4") -> Param:
    return Param(name, "string", required=True, check=lambda v: validate_uuid(v, name), doc=doc)


NAME_RULE = "1-64 of letters, digits, space, `_ - .`"
NAME = Param("name", "string", check=validate_name, doc=f"new name: {NAME_RULE}; absent: kept")
NEW_NAME = Param("name", "string", required=True, check=validate_name, doc=NAME_RULE)
PORT = Param("port", "integer", check=validate_port,
              doc="published port: 0 none, -1 the lowest free >= 1001, 1-65535 unused on the agent [create: 0]")
PROTOCOL = Param("protocol", "string", check=validate_protocol, doc="`tcp` or `udp`; `\"\"` is `tcp` [create: tcp]")
DNS = Param("dns_name", "string", check=validate_dns_name,
             doc="one RFC 1123 label, lowercased, unique on the agent; `\"\"` none [create: none]")
CPUS = Param("cpus", "number", check=_cpus,
              doc=f"CPU limit, {CPUS_MIN}-{CPUS_MAX:g} cores [create: the agent's `default_cpus`]")
MEMORY = Param("memory_mb", "integer", check=_memory,
                doc=f"memory limit, {MEMORY_MIN_MB}-{MEMORY_MAX_MB} MiB [create: the agent's `default_memory_mb`]")
#: A session's credential name (issue 15): ``""`` means the agent's ``default`` credential.
CREDENTIAL = Param("credential", "string", check=credentials.validate_session_credential,
                    doc="the cluster credential the session starts with; `\"\"` the agent's `default` [create: \"\"]")
CREDENTIAL_NAME = Param("name", "string", required=True, check=credentials.validate_name,
                         doc="credential name: 1-32 of a-z, 0-9, `-`, starting with a letter or digit")
SINCE = Param("since", "string", check=check_rfc3339("since"), doc="RFC 3339 time: only what came at or after it [all]")
LINES = Param("lines", "integer", check=check_lines, doc=f"0-{CAPTURE_LINES_MAX} lines of history [0]", default=0)

