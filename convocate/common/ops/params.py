"""Each op's parameters as a dataclass: the table the agent decodes and dispatches from (DESIGN §3).

One class per op declares its fields once: the field's :class:`~convocate.common.ops.rules.Param`
(JSON kind, required or not, check, doc) rides in the field's metadata, the class names its op, its
summary and how its result reads (:mod:`convocate.common.ops.results`). From those classes come
:data:`OPS` (what the agent decodes), :data:`PARAMS` (what the agent dispatches and the shell sends)
and the op reference, ``docs/ops.md``.

On the wire nothing changes: :meth:`OpParams.to_wire` sends only the fields given (``None`` is
"absent"; a field left out reads as its Param's ``default``, what the agent does without it), so a
request built from a class is the same JSON object a client of the original protocol writes by
hand. The agent's handlers take the decoded object (``decode_request``). Decoding is strict: an
unknown field, a wrong JSON type, a missing required field or a value that breaks its rule is a
:class:`BadRequest` whose message starts with ``decode params:`` and names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from convocate.common import credentials, messages, operator_claim
from convocate.common.errors import BadRequest
from convocate.common.model import SessionView, validate_uuid
from convocate.common.ops import results as r
from convocate.common.ops.base import PARAMS, OpParams, op, wire
from convocate.common.ops.rules import (
    AUDIT_READ_MAX,
    CAPTURE_LINES_MAX,
    CPUS,
    CREDENTIAL,
    CREDENTIAL_NAME,
    DNS,
    GREP_MATCHES_DEFAULT,
    GREP_MATCHES_MAX,
    GREP_PATTERN_MAX,
    LINES,
    MEMORY,
    NAME,
    NEW_NAME,
    PORT,
    PROTOCOL,
    RECORDING_READ_DEFAULT,
    RECORDING_READ_MAX,
    SEND_TEXT_MAX,
    SINCE,
    Param,
    check_agent_id,
    check_audit_page,
    check_bounded,
    check_grep_pattern,
    check_lines,
    check_recording_file,
    check_rfc3339,
    check_send_text,
    check_trash_id,
    uuid_param,
)
from convocate.common.timefmt import parse_rfc3339

_ID = uuid_param()
_params = dataclass(frozen=True, kw_only=True)


@op("ping", "the agent's identity and what its protocol offers", r.record(r.Ping), original=True)
@_params
class PingParams(OpParams[r.Ping]):
    """``ping``: no params."""


@op("list", "every session, newest `last_accessed` first", r.SESSIONS, original=True)
@_params
class ListParams(OpParams[list[SessionView]]):
    """``list``: no params."""


@op("get", "one session", r.SESSION, original=True)
@_params
class GetParams(OpParams[SessionView]):
    """``get``: the session."""

    id: str = wire(_ID)


@op("create", "a new session: UUIDv4, home from the skeleton, its record; admission-checked when it starts",
    r.SESSION, original=True)
@_params
class CreateParams(OpParams[SessionView]):
    """``create``: the new session's name and, optionally, its port, DNS name, limits and credential.

    ``cpus`` and ``memory_mb`` left out (``None``) are the agent's ``default_cpus`` and
    ``default_memory_mb`` at the time of the create.
    """

    name: str = wire(NEW_NAME)
    port: int = wire(replace(PORT, default=0))
    protocol: str = wire(replace(PROTOCOL, default="tcp"))
    dns_name: str = wire(replace(DNS, default=""))
    cpus: float | None = wire(CPUS)  # None: the agent's default_cpus
    memory_mb: int | None = wire(MEMORY)  # None: the agent's default_memory_mb
    start: bool = wire(Param("start", "boolean", doc="start the container too, admission-checked first [false]",
                             default=False))
    credential: str = wire(replace(CREDENTIAL, default=""))


@op("edit", "change a stopped or running session's record; a field left out keeps its value; limits apply "
    "from its next start", r.SESSION, original=True)
@_params
class EditParams(OpParams[SessionView]):
    """``edit``: the session and the fields to change; a field left out (``None``) keeps its value."""

    id: str = wire(_ID)
    name: str | None = wire(NAME)
    port: int | None = wire(PORT)
    protocol: str | None = wire(PROTOCOL)
    dns_name: str | None = wire(DNS)
    cpus: float | None = wire(CPUS)
    memory_mb: int | None = wire(MEMORY)
    credential: str | None = wire(CREDENTIAL)


@op("clone", "copy a session's home (modes, symlinks) under a new UUID; port and DNS name cleared", r.SESSION,
    original=True)
@_params
class CloneParams(OpParams[SessionView]):
    """``clone``: the session to copy and the copy's name."""

    source_id: str = wire(uuid_param("source_id", "the UUIDv4 of the session to copy"))
    name: str = wire(NEW_NAME)


@op("delete", "move a stopped, unlocked session's home to the trash", r.record(r.Deleted), original=True)
@_params
class DeleteParams(OpParams[r.Deleted]):
    """``delete``: the session."""

    id: str = wire(_ID)


@op("kill", "stop the container: SIGTERM, then SIGKILL after 10 s", r.SESSION, original=True)
@_params
class KillParams(OpParams[SessionView]):
    """``kill``: the session."""

    id: str = wire(_ID)


@op("background", "detach every tmux client; the container keeps running", r.SESSION, original=True)
@_params
class BackgroundParams(OpParams[SessionView]):
    """``background``: the session."""

    id: str = wire(_ID)


@op("override", "take a locked session over: clear a stale lock or detach the other operator",
    r.record(r.Overridden), original=True)
@_params
class OverrideParams(OpParams[r.Overridden]):
    """``override``: the session; ``moving_to`` (issue 18) tells the operators detached where it goes.

    While ``moving_to`` is set the copy here is not restarted until the move ends; ``""`` clears it
    (a rolled-back move).
    """

    id: str = wire(_ID)
    moving_to: str | None = wire(Param("moving_to", "string", check=check_agent_id,
                                       doc="the agent a move takes the session to (8 of a-z, 0-9); `\"\"` "
                                           "clears it [none]"))


@op("restart", "start, or start again, the container with the agent's current image; admission-checked",
    r.SESSION, original=True)
@_params
class RestartParams(OpParams[SessionView]):
    """``restart``: the session."""

    id: str = wire(_ID)


@op("settings-get", "the agent's settings", r.json_object("settings object"), original=True)
@_params
class SettingsGetParams(OpParams[dict[str, Any]]):
    """``settings-get``: no params."""


@op("settings-set", "a validated partial update of the settings, persisted (fields: convocate_agent/settings.py)",
    r.json_object("the new settings object"), original=True)
@_params
class SettingsSetParams(OpParams[dict[str, Any]]):
    """``settings-set``: an open object of settings, checked field by field by the agent's settings.

    Attributes:
        values: The settings to change, by name (``convocate_agent/settings.py`` defines them).
    """

    OPEN: ClassVar[bool] = True
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The settings themselves are the ``params`` object."""
        return dict(self.values)

    @classmethod
    def decode(cls, params: dict[str, Any]) -> SettingsSetParams:
        """Take the open object as it is; the agent's settings check each field."""
        return cls(values=dict(params))


@op("capture", "the text of the session's tmux pane", r.record(r.Captured))
@_params
class CaptureParams(OpParams[r.Captured]):
    """``capture``: the session and how much history."""

    id: str = wire(_ID)
    lines: int = wire(LINES)


@op("send", "type text into the session (tmux send-keys)", r.record(r.Sent))
@_params
class SendParams(OpParams[r.Sent]):
    """``send``: the session and the text."""

    id: str = wire(_ID)
    text: str = wire(Param("text", "string", required=True, check=check_send_text,
                           doc=f"UTF-8 text, at most {SEND_TEXT_MAX} bytes, no NUL"))
    enter: bool = wire(Param("enter", "boolean", doc="press Enter after the text [false]", default=False))


@op("capacity", "host totals, reservations, live usage and the 90% limits", r.json_object("capacity object"))
@_params
class CapacityParams(OpParams[dict[str, Any]]):
    """``capacity``: no params (the object's fields: ``convocate.placement.AgentLoad``)."""


@op("logs", "the session's supervisor and activity logs, merged by time", r.record(r.Logs))
@_params
class LogsParams(OpParams[r.Logs]):
    """``logs``: the session, how many lines and from when."""

    id: str = wire(_ID)
    lines: int = wire(Param("lines", "integer", check=check_lines,
                            doc=f"the last 0-{CAPTURE_LINES_MAX} lines; 0: 200, or all since `since` [0]", default=0))
    since: str | None = wire(SINCE)


@op("trash", "the deleted sessions still in the trash", r.array_of(r.record(r.TrashEntry)))
@_params
class TrashParams(OpParams[list[r.TrashEntry]]):
    """``trash``: no params."""


@op("restore", "bring a session back from the trash; a port or DNS name taken since is cleared",
    r.record(r.Restored))
@_params
class RestoreParams(OpParams[r.Restored]):
    """``restore``: the trash entry."""

    trash_id: str = wire(Param("trash_id", "string", required=True, check=check_trash_id, doc="an entry of `trash`"))


@op("credential_set", "store one of the cluster's Claude credentials on the agent", r.record(r.CredentialSummary))
@_params
class CredentialSetParams(OpParams[r.CredentialSummary]):
    """``credential_set`` (issue 15): no result or error ever carries the secret."""

    name: str = wire(CREDENTIAL_NAME)
    kind: str = wire(Param("kind", "string", required=True, check=credentials.validate_kind,
                           doc="`api_key` or `oauth_token`"))
    secret: str = wire(Param("secret", "string", required=True, check=credentials.validate_secret,
                             doc="1-4096 printable ASCII characters, no space; never in a result, an error or a log"),
                       secret=True)


@op("credential_list", "the credentials the agent holds, without secrets", r.array_of(r.record(r.CredentialSummary)))
@_params
class CredentialListParams(OpParams[list[r.CredentialSummary]]):
    """``credential_list``: no params."""


@op("credential_delete", "remove a credential from the agent", r.record(r.CredentialDeleted))
@_params
class CredentialDeleteParams(OpParams[r.CredentialDeleted]):
    """``credential_delete``: the credential."""

    name: str = wire(CREDENTIAL_NAME)


@op("recording_list", "a session's terminal recordings, one file per start", r.array_of(r.record(r.RecordingFile)))
@_params
class RecordingListParams(OpParams[list[r.RecordingFile]]):
    """``recording_list`` (issue 19): the session (``convocate_agent/recordings.py``)."""

    id: str = wire(_ID)


@op("recording_read", "a page of one recording file", r.record(r.RecordingPage))
@_params
class RecordingReadParams(OpParams[r.RecordingPage]):
    """``recording_read``: the session, the file and where to read from."""

    id: str = wire(_ID)
    file: str = wire(Param("file", "string", required=True, check=check_recording_file,
                           doc="a file `recording_list` named"))
    offset: int = wire(Param("offset", "integer", check=check_bounded("offset", 0, 2**53),
                             doc="byte offset in the file [0]", default=0))
    max_bytes: int = wire(Param("max_bytes", "integer", check=check_bounded("max_bytes", 1, RECORDING_READ_MAX),
                                doc=f"most bytes answered, 1-{RECORDING_READ_MAX} [the agent's page size]",
                                default=RECORDING_READ_DEFAULT))


@op("recording_grep", "search the recordings' text", r.record(r.GrepResult))
@_params
class RecordingGrepParams(OpParams[r.GrepResult]):
    """``recording_grep``: the pattern, and which sessions and times to search."""

    pattern: str = wire(Param("pattern", "string", required=True, check=check_grep_pattern,
                              doc=f"a Python regular expression of at most {GREP_PATTERN_MAX} characters"))
    id: str | None = wire(Param("id", "string", check=lambda v: validate_uuid(v, "id"),
                                doc="only this session [every session]"))
    since: str | None = wire(Param("since", "string", check=check_rfc3339("since"),
                                   doc="RFC 3339 time: lines at or after it [all]"))
    until: str | None = wire(Param("until", "string", check=check_rfc3339("until"),
                                   doc="RFC 3339 time: lines at or before it [all]"))
    max_matches: int = wire(Param("max_matches", "integer", check=check_bounded("max_matches", 1, GREP_MATCHES_MAX),
                                  doc=f"most matches answered, 1-{GREP_MATCHES_MAX} [the agent's default]",
                                  default=GREP_MATCHES_DEFAULT))

    @classmethod
    def check_together(cls, decoded: dict[str, Any]) -> None:
        """``until`` may not come before ``since``.

        Raises:
            BadRequest: :data:`messages.GREP_BAD_WINDOW`.
        """
        since, until = decoded.get("since"), decoded.get("until")
        if since and until and parse_rfc3339(until) < parse_rfc3339(since):
            raise BadRequest(messages.GREP_BAD_WINDOW.format(since=since, until=until))


@op("operator_challenge", "a fresh challenge for this connection's operator claim", r.record(r.Challenge))
@_params
class OperatorChallengeParams(OpParams[r.Challenge]):
    """``operator_challenge`` (issue 19, ``convocate.common.operator_claim``): no params."""


@op("operator_identify", "prove the operator's identity on this connection", r.record(r.Identified))
@_params
class OperatorIdentifyParams(OpParams[r.Identified]):
    """``operator_identify``: the certificate and its key's signature of the challenge."""

    certificate: str = wire(Param(
        "certificate", "string", required=True,
        check=lambda v: operator_claim.bounded(v, "certificate", operator_claim.MAX_CERTIFICATE_CHARS),
        doc="the operator's OpenSSH certificate, signed by the cluster's operator CA"))
    signature: str = wire(Param(
        "signature", "string", required=True,
        check=lambda v: operator_claim.bounded(v, "signature", operator_claim.MAX_SIGNATURE_CHARS),
        doc="the certificate key's signature of this connection's challenge"))


@op("operator_whoami", "who this connection is taken for", r.record(r.WhoAmI))
@_params
class OperatorWhoamiParams(OpParams[r.WhoAmI]):
    """``operator_whoami``: no params."""


@op("audit_read", "a page of the agent's audit trail", r.record(r.AuditPage))
@_params
class AuditReadParams(OpParams[r.AuditPage]):
    """``audit_read`` (issue 19, ``convocate_agent.audit.read_records``): filters and the page wanted."""

    since: str | None = wire(SINCE)
    until: str | None = wire(Param("until", "string", check=check_rfc3339("until"),
                                   doc="RFC 3339 time: records at or before it [all]"))
    session: str | None = wire(Param("session", "string", check=lambda v: validate_uuid(v, "session"),
                                     doc="only records about this session's UUIDv4 [all]"))
    operator: str | None = wire(Param("operator", "string",
                                      doc="only this verified operator, by name or `SHA256:` fingerprint [all]"))
    after_seq: int = wire(Param("after_seq", "integer",
                                doc="the page after the record of this sequence number [the first]", default=0))
    max: int = wire(Param("max", "integer", doc="most records in the page [the agent's page size]",
                          default=AUDIT_READ_MAX))
    raw: bool = wire(Param("raw", "boolean", doc="the records as the file holds them, for `--verify` [false]",
                           default=False))

    @classmethod
    def check_together(cls, decoded: dict[str, Any]) -> None:
        """``max`` and ``after_seq`` in range, once every field passed its own check (:func:`check_audit_page`)."""
        check_audit_page(decoded)

#: Every op and its parameters, as the agent decodes them; ``None`` marks an op whose params are an open
#: object validated by its handler (``settings-set``).
OPS: dict[str, tuple[Param, ...] | None] = {name: cls.SPEC for name, cls in PARAMS.items()}

#: Ops in the original v2 protocol; the rest are extensions (ext).
ORIGINAL_OPS = frozenset(name for name, cls in PARAMS.items() if cls.ORIGINAL)
