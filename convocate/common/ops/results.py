"""What each op answers, as types the shell reads responses into (DESIGN §3).

A result type is a :class:`WireRecord` dataclass (a JSON object of named fields), a session view
(:class:`~convocate.common.model.SessionView`), an array of one of those, or an open JSON object
whose fields another module owns (``capacity``, the settings). Each one is also what the op reference
(``docs/ops.md``) says the op answers, so the reference and the client read the same definition.

Reading is lenient in one direction only, the one a mixed cluster needs: a field the agent sends that
the type does not name is ignored (a newer agent may add fields), and a field the type gives a
default may be absent (an older agent may lack it). A missing field without a default, or a value of
the wrong JSON type, is a :class:`ProtocolError` naming the op's result and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from convocate.common.errors import ConvocateError, ProtocolError
from convocate.common.framing import json_type
from convocate.common.model import SessionView

T = TypeVar("T")

#: The JSON kinds a field's annotation may name, and what ``json_type`` calls them.
_JSON_KINDS: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,),
                                            dict: (dict,), list: (list,)}


class ResultReader:
    """How one op's ``result`` is read: a callable ``(result, agent_id) -> T`` with a doc for the reference.

    Args:
        read: Turns the JSON value into the result type; raises ProtocolError (or BadRequest for session
            metadata, from :meth:`SessionView.from_wire`) when the value is not of the shape.
        doc: The result's shape in the op reference, e.g. ``"session metadata"``.
    """

    def __init__(self, read: Callable[[Any, str], Any], doc: str) -> None:
        self.read = read
        self.doc = doc

    def __call__(self, result: Any, agent_id: str) -> Any:
        return self.read(result, agent_id)


@dataclass(frozen=True)
class WireRecord:
    """A result that is one JSON object of named fields; subclasses are frozen dataclasses.

    A field annotated ``SessionView`` (or ``SessionView | None``) is read with
    :meth:`SessionView.from_wire`; a field of another type is taken as the JSON value it is, after its
    kind is checked (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``, or any when ``Any``).
    """

    #: What the reference says after the field list, e.g. ``"(null: no claim verified)"``.
    NOTE: ClassVar[str] = ""
    #: The object as the agent sent it (``--json`` prints it, every field included); not compared.
    received: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, kw_only=True)

    @classmethod
    def from_wire(cls: type[T], obj: Any, agent_id: str = "") -> T:
        """Read the JSON object ``obj``.

        Raises:
            ProtocolError: ``obj`` is not an object, or a field is missing or of the wrong kind.
        """
        if not isinstance(obj, dict):
            raise ProtocolError(f"{cls.__name__}: expected a JSON object, got {json_type(obj)}")
        values: dict[str, Any] = {}
        for f, hint in _fields(cls):
            if f.name not in obj:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ProtocolError(f'{cls.__name__}: missing field "{f.name}"')
                continue
            values[f.name] = _read_field(cls.__name__, f.name, hint, obj[f.name], agent_id)
        return cls(**values, received=obj)

    @classmethod
    def wire_doc(cls) -> str:
        """The reference's shape: ``{a, b, c}`` and the note."""
        names = ", ".join(f.name for f, _ in _fields(cls))
        return f"`{{{names}}}`" + (f" {cls.NOTE}" if cls.NOTE else "")


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    """A record's wire fields with their resolved annotations, worked out once per class."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.name != "received")


def _read_field(record: str, name: str, hint: Any, value: Any, agent_id: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    if SessionView in options:
        return SessionView.from_wire(value, agent_id)
    if Any in options:
        return value
    kinds = tuple(k for o in options for k in _JSON_KINDS.get(typing.get_origin(o) or o, ()))
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ProtocolError(f'{record}: field "{name}" must be {expected}, got {json_type(value)}')


def record(cls: type[WireRecord]) -> ResultReader:
    """The reader of a :class:`WireRecord` result."""
    return ResultReader(cls.from_wire, cls.wire_doc())


def array_of(item: ResultReader) -> ResultReader:
    """The reader of an array whose every element ``item`` reads."""
    def read(result: Any, agent_id: str) -> list[Any]:
        if not isinstance(result, list):
            raise ProtocolError(f"expected a JSON array of {item.doc}, got {json_type(result)}")
        return [item(element, agent_id) for element in result]
    return ResultReader(read, f"array of {item.doc}")


def json_object(doc: str) -> ResultReader:
    """The reader of an open JSON object whose fields another module defines (named in ``doc``)."""
    def read(result: Any, agent_id: str) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise ProtocolError(f"{doc}: expected a JSON object, got {json_type(result)}")
        return result
    return ResultReader(read, doc)


#: ``get``, ``create``... answer one session's metadata object.
SESSION = ResultReader(SessionView.from_wire, "session metadata")
#: ``list`` answers an array of them, newest ``last_accessed`` first.
SESSIONS = array_of(SESSION)


@dataclass(frozen=True)
class Ping(WireRecord):
    """``ping``: the agent's identity and what it offers; protocol 1 (Go v0.0.5) sends the first three only."""

    agent_id: str
    version: str
    server_time: str
    protocol: int = 1
    capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deleted(WireRecord):
    """``delete``: the session's UUID and its trash entry (``""`` from protocol 1: no trash there)."""

    uuid: str
    trash: str = ""


@dataclass(frozen=True)
class Overridden(WireRecord):
    """``override``: the session after it, the lock cleared (described) and the operators detached."""

    session: SessionView
    cleared_lock: str = ""
    detached: int = 0


@dataclass(frozen=True)
class Captured(WireRecord):
    """``capture``: the pane's text."""

    uuid: str
    text: str


@dataclass(frozen=True)
class Sent(WireRecord):
    """``send``: how many characters were typed, and whether Enter followed."""

    uuid: str
    sent: int
    enter: bool


@dataclass(frozen=True)
class Logs(WireRecord):
    """``logs``: the merged log lines and the time of the last one (for ``--follow``'s next ``since``)."""

    uuid: str
    lines: list[Any]
    last: str = ""


@dataclass(frozen=True)
class TrashEntry(WireRecord):
    """One ``trash`` entry; ``name``, ``dns_name``, ``port`` when its record could be read."""

    trash_id: str
    uuid: str
    deleted_at: str
    purge_after: str
    name: str = ""
    dns_name: str = ""
    port: int = 0


@dataclass(frozen=True)
class Restored(WireRecord):
    """``restore``: the session back, and the fields cleared because another session took them meanwhile."""

    session: SessionView
    cleared: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CredentialSummary(WireRecord):
    """One credential as ``credential_set`` and ``credential_list`` answer it: never its secret."""

    name: str
    kind: str
    fingerprint: str
    set_at: str


@dataclass(frozen=True)
class CredentialDeleted(WireRecord):
    """``credential_delete``."""

    name: str
    deleted: bool


@dataclass(frozen=True)
class RecordingFile(WireRecord):
    """One ``recording_list`` entry; ``current`` marks the file a running session's recorder appends to."""

    file: str
    started: str
    bytes: int
    current: bool


@dataclass(frozen=True)
class RecordingPage(WireRecord):
    """``recording_read``: whole lines of the file from the offset asked."""

    data: str
    next_offset: int
    eof: bool


@dataclass(frozen=True)
class GrepResult(WireRecord):
    """``recording_grep``: the matches, and why the search stopped early if it did."""

    matches: list[Any]
    truncated: bool
    reason: str
    scanned_bytes: int


@dataclass(frozen=True)
class Challenge(WireRecord):
    """``operator_challenge``: the nonce to sign, for this agent, valid for ``expires_in`` seconds."""

    nonce: str
    agent_id: str
    expires_in: float


@dataclass(frozen=True)
class Identified(WireRecord):
    """``operator_identify``: the operator the connection is now taken for."""

    name: str
    fingerprint: str


@dataclass(frozen=True)
class WhoAmI(WireRecord):
    """``operator_whoami``: ``{name, fingerprint}`` of the verified operator."""

    NOTE: ClassVar[str] = "(null: no claim verified)"
    operator: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditPage(WireRecord):
    """``audit_read``: one page of records and where the next one starts."""

    records: list[Any]
    next_seq: int
    more: bool


def read_result(reader: ResultReader, op: str, result: Any, agent_id: str) -> Any:
    """``reader(result, agent_id)``, with a shape error re-raised as one ProtocolError naming ``op`` and the agent.

    Raises:
        ProtocolError: the result is not of the op's shape.
    """
    try:
        return reader(result, agent_id)
    except ConvocateError as e:
        raise ProtocolError(f"agent {agent_id}: {op} answered a result of another shape: {e.message}") from e
