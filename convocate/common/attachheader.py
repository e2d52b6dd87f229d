"""The attach header: the first line an attach channel carries (DESIGN §3, ``convocate-agent-attach``).

One JSON object, then a newline, then the terminal's bytes. The shell builds it with
:meth:`AttachHeader.to_wire` and the agent reads it with :func:`parse_header`, so both sides hold
one definition of its fields, their defaults and their bounds. A refusal comes back as one
error line that parses like any :class:`~convocate.common.protocol.Response`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest
from convocate.common.framing import decode_object, json_type
from convocate.common.model import validate_uuid

#: Longest attach header accepted, in bytes.
HEADER_MAX = 4096
#: Largest terminal dimension accepted (tmux's own limit is 10000).
DIMENSION_MAX = 10000
#: ``TERM`` when the header gives none (or ``""``).
DEFAULT_TERM = "xterm-256color"
_FIELDS = frozenset({"id", "cols", "rows", "read_only", "term"})


@dataclass(frozen=True)
class AttachHeader:
    """A decoded attach header.

    Attributes:
        session_id: The session UUID (``id`` on the wire).
        cols: Terminal width, 1-10000; 0 or absent on the wire means 80.
        rows: Terminal height, 1-10000; 0 or absent on the wire means 24.
        read_only: Attach as an observer (ext: the Go original reads only id, cols and rows).
        term: ``TERM`` of the operator's terminal.
    """

    session_id: str
    cols: int = 80
    rows: int = 24
    read_only: bool = False
    term: str = DEFAULT_TERM

    def to_wire(self) -> dict[str, Any]:
        """The header object as the shell sends it."""
        return {"id": self.session_id, "cols": self.cols, "rows": self.rows, "term": self.term,
                "read_only": self.read_only}


def _bad(detail: str) -> BadRequest:
    return BadRequest(messages.ATTACH_BAD_HEADER.format(detail=detail))


def _dimension(obj: dict[str, Any], key: str, default: int) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(messages.WRONG_TYPE.format(field=key, expected="an integer", got=json_type(value)))
    if not (0 <= value <= DIMENSION_MAX):
        raise _bad(messages.BAD_RANGE.format(field=key, value=value, low=0, high=DIMENSION_MAX, unit=""))
    return value or default


def parse_header(line: bytes) -> AttachHeader:
    """Decode and check an attach header line (without its newline).

    Raises:
        BadRequest: ``bad attach header: ...`` naming the field: not a JSON object, an unknown or
            missing field, a wrong JSON type, a dimension out of 0-10000.
    """
    obj = decode_object(line, what="header", refusal=_bad)
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise _bad(messages.UNKNOWN_FIELD.format(field=unknown[0]))
    if "id" not in obj:
        raise _bad(messages.MISSING_FIELD.format(field="id"))
    try:
        session_id = validate_uuid(obj["id"])
    except BadRequest as e:
        raise _bad(e.message) from e
    cols, rows = _dimension(obj, "cols", 80), _dimension(obj, "rows", 24)
    read_only = obj.get("read_only", False)
    if not isinstance(read_only, bool):
        raise _bad(messages.WRONG_TYPE.format(field="read_only", expected="a boolean", got=json_type(read_only)))
    term = obj.get("term", DEFAULT_TERM)
    if not isinstance(term, str):
        raise _bad(messages.WRONG_TYPE.format(field="term", expected="a string", got=json_type(term)))
    return AttachHeader(session_id, cols, rows, read_only, term or DEFAULT_TERM)
