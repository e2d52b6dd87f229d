"""The convocate error hierarchy and its stable wire codes.

Every error a convocate process reports to a user or a peer is a
:class:`ConvocateError`. Its ``code`` is the stable, machine-readable value
that travels in the RPC response (DESIGN §3); its message is for humans.
Foreign errors (Docker, OSError, asyncssh) are translated once, at the
boundary that met them, with ``raise ... from``.
"""

from __future__ import annotations


class ConvocateError(Exception):
    """Root of every convocate error.

    Attributes:
        code: Stable identifier sent on the wire as ``code``.
        message: Human-readable text, sent as ``error``.
        exit_code: Process exit status a CLI uses when this error ends it.
    """

    code = "internal"
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(ConvocateError):
    """The request or one of its parameters is malformed or breaks a rule."""

    code = "bad_request"
    exit_code = 2


class NotFound(ConvocateError):
    """The named session (or other object) does not exist."""

    code = "not_found"
    exit_code = 3


class Conflict(ConvocateError):
    """The request collides with existing state (a port in use, a running session)."""

    code = "conflict"
    exit_code = 4


class Locked(ConvocateError):
    """Another lifecycle operation holds the session's lock."""

    code = "locked"
    exit_code = 5


class AdmissionDenied(ConvocateError):
    """Admission control refused to start a session (DESIGN §4, capacity layer 1)."""

    code = "admission_denied"
    exit_code = 6


class DockerError(ConvocateError):
    """dockerd refused or failed an operation, or cannot be reached.

    Attributes:
        status: The Engine API's HTTP status of the refusal (404: no such container or image,
            409: a conflict such as a container that is not running), or None when dockerd was
            not reached or no answer says (``convocate_agent.dockererrors`` sets it).
    """

    code = "docker_error"
    exit_code = 7

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InternalError(ConvocateError):
    """A bug or an unexpected condition; the message says what happened."""

    code = "internal"
    exit_code = 70  # EX_SOFTWARE


class ConfigError(ConvocateError):
    """Local configuration (a key, a registry entry, a settings file) is missing or invalid."""

    code = "config"
    exit_code = 78  # EX_CONFIG


class Unreachable(ConvocateError):
    """A peer (an agent, the shell's status listener) cannot be reached."""

    code = "unreachable"
    exit_code = 69  # EX_UNAVAILABLE


class HostKeyMismatch(Unreachable):
    """The peer presented a host key other than the pinned one."""

    code = "host_key_mismatch"


class NoPermission(ConvocateError):
    """This account may not read or write a file the command needs (EACCES/EPERM).

    The message names the path and the account or group that may (sysexits.h: EX_NOPERM).
    """

    code = "no_permission"
    exit_code = 77  # EX_NOPERM


class Forbidden(ConvocateError):
    """The request is well formed but refused: a proof that does not hold (an operator claim, issue 19)."""

    code = "forbidden"
    exit_code = 77  # EX_NOPERM


class UsageError(BadRequest):
    """The command line itself is wrong: an unknown command or option, a missing argument.

    Attributes:
        usage: The one ``usage:`` line (or wrapped lines) of the command that was misused.
    """

    code = "usage"
    exit_code = 2  # argparse's status for a bad command line

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class ProtocolError(ConvocateError):
    """The peer sent something that does not follow the wire protocol."""

    code = "protocol"
    exit_code = 76  # EX_PROTOCOL


_BY_CODE: dict[str, type[ConvocateError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        NotFound,
        Conflict,
        Locked,
        AdmissionDenied,
        DockerError,
        InternalError,
        ConfigError,
        Unreachable,
        HostKeyMismatch,
        ProtocolError,
        NoPermission,
        Forbidden,
    )
}

#: The codes an agent may put in an RPC error response (DESIGN §3), plus (ext) ``config``: the
#: agent's own configuration is missing or invalid (no session image configured, say). Clients that
#: predate it map an unknown code to ``internal``, which is what they received before. (ext, issue 19)
#: ``forbidden``: an operator claim that does not hold (``operator_identify``).
WIRE_CODES = frozenset(
    {"bad_request", "not_found", "conflict", "locked", "admission_denied", "docker_error", "internal", "config",
     "forbidden"}
)


def error_from_code(code: str | None, message: str) -> ConvocateError:
    """Rebuild the error a peer reported.

    Args:
        code: The ``code`` field of an error response; ``None`` for peers that
            predate codes (the original v2 agents), which maps to ``internal``.
        message: The ``error`` field.

    Returns:
        An instance of the class registered for ``code``, or
        :class:`InternalError` for an unknown code.
    """
    cls = _BY_CODE.get(code or "internal", InternalError)
    return cls(message)
