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
        doc: What it means and its rule, and what its absence means, for the op reference (docs/ops.md).
    """

    name: str
    kind: str
    required: bool = False
    check: Callable[[Any], Any] | None = None
    doc: str = ""


def _agent_id(value: str) -> str:
    if value and not re.fullmatch(r"[a-z0-9]{8}", value):  # "" clears (override's moving_to)
        raise BadRequest(messages.BAD_AGENT_ID.format(value=value))
    return value


def _id(name: str = "id", doc: str = "the session's UUIDv4") -> Param:
    return Param(name, "string", required=True, check=lambda v: validate_uuid(v, name), doc=doc)


_NAME_RULE = "1-64 of letters, digits, space, `_ - .`"
_NAME = Param("name", "string", check=validate_name, doc=f"new name: {_NAME_RULE}; absent: kept")
_NEW_NAME = Param("name", "string", required=True, check=validate_name, doc=_NAME_RULE)
_PORT = Param("port", "integer", check=validate_port,
              doc="published port: 0 none, -1 the lowest free >= 1001, 1-65535 unused on the agent [create: 0]")
_PROTOCOL = Param("protocol", "string", check=validate_protocol, doc="`tcp` or `udp`; `\"\"` is `tcp` [create: tcp]")
_DNS = Param("dns_name", "string", check=validate_dns_name,
             doc="one RFC 1123 label, lowercased, unique on the agent; `\"\"` none [create: none]")
_CPUS = Param("cpus", "number", check=_cpus,
              doc=f"CPU limit, {CPUS_MIN}-{CPUS_MAX:g} cores [create: the agent's `default_cpus`]")
_MEMORY = Param("memory_mb", "integer", check=_memory,
                doc=f"memory limit, {MEMORY_MIN_MB}-{MEMORY_MAX_MB} MiB [create: the agent's `default_memory_mb`]")
#: A session's credential name (issue 15): ``""`` means the agent's ``default`` credential.
_CREDENTIAL = Param("credential", "string", check=credentials.validate_session_credential,
                    doc="the cluster credential the session starts with; `\"\"` the agent's `default` [create: \"\"]")
_CREDENTIAL_NAME = Param("name", "string", required=True, check=credentials.validate_name,
                         doc="credential name: 1-32 of a-z, 0-9, `-`, starting with a letter or digit")
_SINCE = Param("since", "string", check=_timestamp, doc="RFC 3339 time: only what came at or after it [all]")
_LINES = Param("lines", "integer", check=_lines, doc=f"0-{CAPTURE_LINES_MAX} lines of history [0]")

#: Every op and its parameters. ``None`` marks an op whose params are an open
#: object validated by its handler (``settings-set``).
OPS: dict[str, tuple[Param, ...] | None] = {
    "ping": (),
    "list": (),
    "get": (_id(),),
    "create": (
        _NEW_NAME, _PORT, _PROTOCOL, _DNS, _CPUS, _MEMORY,
        Param("start", "boolean", doc="start the container too, admission-checked first [false]"), _CREDENTIAL,
    ),
    "edit": (_id(), _NAME, _PORT, _PROTOCOL, _DNS, _CPUS, _MEMORY, _CREDENTIAL),
    "clone": (_id("source_id", "the UUIDv4 of the session to copy"), _NEW_NAME),
    "delete": (_id(),),
    "kill": (_id(),),
    "background": (_id(),),
    # moving_to (issue 18): the operators detached are told the session moves to that agent, and the
    # copy here is not restarted until the move ends; "" clears that (a rolled-back move).
    "override": (_id(), Param("moving_to", "string", check=_agent_id,
                              doc="the agent a move takes the session to (8 of a-z, 0-9); `\"\"` clears it [none]")),
    "restart": (_id(),),
    "settings-get": (),
    "settings-set": None,
    "capture": (_id(), _LINES),
    "send": (_id(), Param("text", "string", required=True, check=_send_text,
                          doc=f"UTF-8 text, at most {SEND_TEXT_MAX} bytes, no NUL"),
             Param("enter", "boolean", doc="press Enter after the text [false]")),
    "capacity": (),
    "logs": (_id(), Param("lines", "integer", check=_lines, doc=f"the last 0-{CAPTURE_LINES_MAX} lines; 0: 200, or all since `since` [0]"),
             _SINCE),
    "trash": (),
    "restore": (Param("trash_id", "string", required=True, check=_trash_id, doc="an entry of `trash`"),),
    # (ext, issue 15) the cluster's Claude credentials; no result or error ever carries a secret.
    "credential_set": (
        _CREDENTIAL_NAME,
        Param("kind", "string", required=True, check=credentials.validate_kind, doc="`api_key` or `oauth_token`"),
        Param("secret", "string", required=True, check=credentials.validate_secret,
              doc="1-4096 printable ASCII characters, no space; never in a result, an error or a log"),
    ),
    "credential_list": (),
    "credential_delete": (_CREDENTIAL_NAME,),
    # (ext, issue 19) the sessions' terminal recordings, read-only (convocate_agent/recordings.py).
    "recording_list": (_id(),),
    "recording_read": (
        _id(), Param("file", "string", required=True, check=_recording_file, doc="a file `recording_list` named"),
        Param("offset", "integer", check=_bounded("offset", 0, 2**53), doc="byte offset in the file [0]"),
        Param("max_bytes", "integer", check=_bounded("max_bytes", 1, RECORDING_READ_MAX),
              doc=f"most bytes answered, 1-{RECORDING_READ_MAX} [the agent's page size]"),
    ),
    "recording_grep": (
        Param("pattern", "string", required=True, check=_grep_pattern,
              doc=f"a Python regular expression of at most {GREP_PATTERN_MAX} characters"),
        Param("id", "string", check=lambda v: validate_uuid(v, "id"), doc="only this session [every session]"),
        Param("since", "string", check=_window("since"), doc="RFC 3339 time: lines at or after it [all]"),
        Param("until", "string", check=_window("until"), doc="RFC 3339 time: lines at or before it [all]"),
        Param("max_matches", "integer", check=_bounded("max_matches", 1, GREP_MATCHES_MAX),
              doc=f"most matches answered, 1-{GREP_MATCHES_MAX} [the agent's default]"),
    ),
    # (ext, issue 19) the operator's identity on this connection (convocate.common.operator_claim).
    "operator_challenge": (),
    "operator_identify": (
        Param("certificate", "string", required=True,
              check=lambda v: operator_claim.bounded(v, "certificate", operator_claim.MAX_CERTIFICATE_CHARS),
              doc="the operator's OpenSSH certificate, signed by the cluster's operator CA"),
        Param("signature", "string", required=True,
              check=lambda v: operator_claim.bounded(v, "signature", operator_claim.MAX_SIGNATURE_CHARS),
              doc="the certificate key's signature of this connection's challenge"),
    ),
    "operator_whoami": (),
    # (ext, issue 19) the agent's audit trail, in pages (convocate_agent.audit.read_records).
    "audit_read": (
        _SINCE, Param("until", "string", check=_timestamp, doc="RFC 3339 time: records at or before it [all]"),
        Param("session", "string", check=lambda v: validate_uuid(v, "session"),
              doc="only records about this session's UUIDv4 [all]"),
        Param("operator", "string", doc="only this verified operator, by name or `SHA256:` fingerprint [all]"),
        Param("after_seq", "integer", doc="the page after the record of this sequence number [the first]"),
        Param("max", "integer", doc="most records in the page [the agent's page size]"),
        Param("raw", "boolean", doc="the records as the file holds them, for `--verify` [false]"),
    ),
}

#: Ops in the original v2 protocol; the rest are extensions (ext).
ORIGINAL_OPS = frozenset(
    {"ping", "list", "get", "create", "edit", "clone", "delete", "kill", "background", "override", "restart",
     "settings-get", "settings-set"}
)


#: What each op does and what it answers, for the op reference (docs/ops.md); keyed like :data:`OPS`.
OP_DOCS: dict[str, tuple[str, str]] = {
    "ping": ("the agent's identity and what its protocol offers", "`{agent_id, version, server_time, protocol, "
             "capabilities}`"),
    "list": ("every session, newest `last_accessed` first", "array of session metadata"),
    "get": ("one session", "session metadata"),
    "create": ("a new session: UUIDv4, home from the skeleton, its record; admission-checked when it starts",
               "session metadata"),
    "edit": ("change a stopped or running session's record; a field left out keeps its value; limits apply "
             "from its next start", "session metadata"),
    "clone": ("copy a session's home (modes, symlinks) under a new UUID; port and DNS name cleared",
              "session metadata"),
    "delete": ("move a stopped, unlocked session's home to the trash", "`{uuid, trash}`"),
    "kill": ("stop the container: SIGTERM, then SIGKILL after 10 s", "session metadata"),
    "background": ("detach every tmux client; the container keeps running", "session metadata"),
    "override": ("take a locked session over: clear a stale lock or detach the other operator",
                 "`{session, cleared_lock, detached}`"),
    "restart": ("start, or start again, the container with the agent's current image; admission-checked",
                "session metadata"),
    "settings-get": ("the agent's settings", "settings object"),
    "settings-set": ("a validated partial update of the settings, persisted (fields: convocate_agent/settings.py)",
                     "the new settings object"),
    "capture": ("the text of the session's tmux pane", "`{uuid, text}`"),
    "send": ("type text into the session (tmux send-keys)", "`{uuid, sent, enter}`"),
    "capacity": ("host totals, reservations, live usage and the 90% limits", "capacity object"),
    "logs": ("the session's supervisor and activity logs, merged by time", "`{uuid, lines, last}`"),
    "trash": ("the deleted sessions still in the trash", "array of `{trash_id, uuid, ...}`"),
    "restore": ("bring a session back from the trash; a port or DNS name taken since is cleared",
                "`{session, cleared}`"),
    "credential_set": ("store one of the cluster's Claude credentials on the agent",
                       "`{name, kind, fingerprint, set_at}`"),
    "credential_list": ("the credentials the agent holds, without secrets", "array of `{name, kind, fingerprint, set_at}`"),
    "credential_delete": ("remove a credential from the agent", "`{name, deleted}`"),
    "recording_list": ("a session's terminal recordings, one file per start", "array of `{file, started, bytes, current}`"),
    "recording_read": ("a page of one recording file", "`{data, next_offset, eof}`"),
    "recording_grep": ("search the recordings' text", "`{matches, truncated, reason, scanned_bytes}`"),
    "operator_challenge": ("a fresh challenge for this connection's operator claim", "`{nonce, agent_id, expires_in}`"),
    "operator_identify": ("prove the operator's identity on this connection", "`{name, fingerprint}`"),
    "operator_whoami": ("who this connection is taken for", "`{operator}` (null: no claim verified)"),
    "audit_read": ("a page of the agent's audit trail", "`{records, next_seq, more}`"),
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The op reference, ``docs/ops.md``, rendered from :data:`OPS` and :data:`OP_DOCS`.

    ``python -m convocate.common.ops > docs/ops.md`` writes it; ``tests/test_ops.py`` checks the file
    is current, so the reference cannot drift from what the agent decodes.
    """
    out = ["# RPC operations", "",
           "Generated from `convocate/common/ops.py` by `python -m convocate.common.ops > docs/ops.md`;",
           "edit that module, not this file. The framing, the errors and their codes are DESIGN §3.",
           "(ext) marks an op the original protocol does not have. Every parameter is optional unless",
           "marked required; a field not listed is refused (`decode params: unknown field`).", ""]
    out += ["| op | what it does | result |", "| --- | --- | --- |"]
    for op in OPS:
        what, result = OP_DOCS[op]
        ext = "" if op in ORIGINAL_OPS else " (ext)"
        out.append(f"| [`{op}`](#{op}){ext} | {_cell(what)} | {_cell(result)} |")
    for op, spec in OPS.items():
        out += ["", f"## {op}", "", OP_DOCS[op][0][:1].upper() + OP_DOCS[op][0][1:] + ".", ""]
        if spec is None:
            out.append("Params: an open object, checked field by field by the agent's settings.")
        elif not spec:
            out.append("No params.")
        else:
            out += ["| param | type | rule [default] |", "| --- | --- | --- |"]
            out += [f"| `{p.name}`{' (required)' if p.required else ''} | {p.kind} | {_cell(p.doc)} |" for p in spec]
    return "\n".join(out) + "\n"


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


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference_markdown())
