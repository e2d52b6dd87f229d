"""The agent's settings: defaults for new sessions and the agent's own cadences.

Persisted in ``/var/lib/convocate-agent/settings.json`` (atomically), read at start
and changed through the ``settings-get``/``settings-set`` ops. A missing file
means all defaults; an invalid file stops the agent with a message naming the
field, rather than running with half of it.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.framing import json_type
from convocate.common.fsutil import atomic_write
from convocate.common.ops import CPUS_MAX, CPUS_MIN, MEMORY_MAX_MB, MEMORY_MIN_MB

IMAGE_PRUNE_POLICIES = ("unused", "never")
AGENT_COMMAND_MAX = 1024
#: Bounds of ``pids_limit``: enough for tmux, Claude Code and a build; at most Linux's PID_MAX_LIMIT.
PIDS_LIMIT_MIN = 64
PIDS_LIMIT_MAX = 4_194_304
#: The session user's home inside the container; ``work_dir`` must be it or below it.
SESSION_HOME = "/home/claude"
#: Longest ``work_dir``, in bytes of UTF-8 (one file name's limit, NAME_MAX; the whole path stays well
#: below PATH_MAX).
WORK_DIR_MAX_BYTES = 255
#: Bounds of ``limit_retry_s`` (issue 15): from a second to a day.
LIMIT_RETRY_MIN_S, LIMIT_RETRY_MAX_S = 1, 86_400
RESUME_MESSAGE_MAX = 1000
#: Bounds of ``recording_max_mb`` (issue 19): per session, in MiB.
RECORDING_MAX_MB_MIN, RECORDING_MAX_MB_MAX = 1, 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Agent settings.

    Attributes:
        default_cpus: CPU limit and reservation of a new session, in cores.
        default_memory_mb: Memory limit and reservation of a new session, in MiB.
        agent_command: Command the session supervisor runs in tmux; after a
            crash it is resumed with ``-c``.
        heartbeat_interval_s: Seconds between ``agent.heartbeat`` events.
        trash_retention_days: Days a deleted session's home stays in the trash.
        image_prune: ``unused`` removes ``convocate:*`` tags no container uses
            (except the current one) daily; ``never`` keeps them.
        restart_backoff_s: First delay before the session supervisor restarts a
            crashed agent command, in seconds; it doubles with each failure in a row.
        pids_limit: Most processes and threads one session container may have at once
            (Docker ``HostConfig.PidsLimit``, the pids controller's ``pids.max``); applies
            from a session's next (re)start.
        work_dir: The directory, inside the container, Claude Code works in (the tmux pane's cwd;
            ``CONVOCATE_WORK_DIR``). A project directory rather than the home: Claude Code's
            trust of the home folder lasts one run only, so a restart would ask again. The
            entrypoint creates it and marks it trusted in ``~/.claude.json``; applies from a
            session's next (re)start.
        skip_permissions: Run Claude Code with ``--dangerously-skip-permissions`` (and its
            acceptance, ``bypassPermissionsModeAccepted``, in ``~/.claude.json``;
            ``CONVOCATE_SKIP_PERMISSIONS``); applies from a session's next (re)start.
        limit_retry_s: Seconds a ``limited`` session whose reset time is unknown (or not believable) stays
            limited before the agent counts the limit as over (issue 15).
        resume_after_limit: When a ``limited`` session's limit resets (plus a few seconds), type
            ``resume_message`` into it, as the ``send`` op does (text, then Enter).
        resume_message: What ``resume_after_limit`` types (one line).
        recording: Record every session's terminal output as asciicast v2 on this agent (issue 19);
            applies from a session's next (re)start.
        recording_max_mb: Most MiB of recordings one session keeps; past it the oldest recordings of
            that session are dropped first (the current one is cut off, never the agent's disk).
        recording_retention_days: Days a finished recording is kept (0: until the size bound drops it).
        record_input: Also record what attached operators type, as ``"i"`` events (off by default: it
            records passwords typed into a session too).
        draining: The agent admits no new session (``create``, ``clone``, ``restore`` are refused with
            ``admission_denied``) while its sessions are moved away (``convocate drain``, issue 18); its
            own sessions still start, stop and restart.
    """

    default_cpus: float = 0.5
    default_memory_mb: int = 1024
    agent_command: str = "claude"
    heartbeat_interval_s: int = 30
    trash_retention_days: int = 7
    image_prune: str = "unused"
    restart_backoff_s: float = 1.0
    pids_limit: int = 4096
    work_dir: str = SESSION_HOME + "/work"
    skip_permissions: bool = False
    # --- usage limits (issue 15) ---
    limit_retry_s: int = 300
    resume_after_limit: bool = False
    resume_message: str = "continue"
    # --- recordings (issue 19) ---
    recording: bool = True
    recording_max_mb: int = 100
    recording_retention_days: int = 30
    record_input: bool = False
    # --- the fleet (issue 18) ---
    draining: bool = False

    def to_json(self) -> dict[str, Any]:
        """The settings object on the wire and on disk."""
        return asdict(self)

    def updated(self, changes: dict[str, Any]) -> Settings:
        """Apply a partial update, checking every field.

        Args:
            changes: Field → new value; unknown fields are refused.

        Returns:
            The new settings (``self`` is unchanged).

        Raises:
            BadRequest: ``decode params: ...`` naming the offending field.
        """
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise BadRequest(messages.DECODE_PARAMS.format(detail=messages.UNKNOWN_FIELD.format(field=key)))
        checked = {key: _check(key, value) for key, value in changes.items()}
        return replace(self, **checked)


def _bad(detail: str) -> BadRequest:
    return BadRequest(messages.DECODE_PARAMS.format(detail=detail))


def _wrong_type(key: str, expected: str, value: Any) -> BadRequest:
    return _bad(messages.WRONG_TYPE.format(field=key, expected=expected, got=json_type(value)))


def _int_in(key: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, "an integer", value)
    if not (low <= value <= high):
        raise _bad(messages.BAD_RANGE.format(field=key, value=value, low=low, high=high, unit=unit))
    return value


def _check(key: str, value: Any) -> Any:
    if key == "default_cpus":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(key, "a number", value)
        if not (CPUS_MIN <= value <= CPUS_MAX):
            raise _bad(messages.BAD_RANGE.format(field=key, value=value, low=CPUS_MIN, high=CPUS_MAX, unit=" cores"))
        return float(value)
    if key == "restart_backoff_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(key, "a number", value)
        if not (0.01 <= value <= 60):
            raise _bad(messages.BAD_RANGE.format(field=key, value=value, low=0.01, high=60, unit=" s"))
        return float(value)
    if key == "default_memory_mb":
        return _int_in(key, value, MEMORY_MIN_MB, MEMORY_MAX_MB, " MiB")
    if key == "pids_limit":
        return _int_in(key, value, PIDS_LIMIT_MIN, PIDS_LIMIT_MAX, " tasks")
    if key == "heartbeat_interval_s":
        return _int_in(key, value, 1, 3600, " s")
    if key == "trash_retention_days":
        return _int_in(key, value, 0, 3650, " days")
    if key == "agent_command":
        if not isinstance(value, str):
            raise _wrong_type(key, "a string", value)
        if not value.strip():
            raise _bad(messages.BAD_TEXT.format(field=key, reason="must not be empty"))
        if len(value) > AGENT_COMMAND_MAX or any(c in value for c in "\n\r\x00"):
            raise _bad(messages.BAD_TEXT.format(field=key, reason=f"must be one line of at most {AGENT_COMMAND_MAX} characters"))
        return value
    if key == "work_dir":
        return _check_work_dir(key, value)
    if key == "skip_permissions":
        if not isinstance(value, bool):
            raise _wrong_type(key, "a boolean", value)
        return value
    if key == "limit_retry_s":
        return _int_in(key, value, LIMIT_RETRY_MIN_S, LIMIT_RETRY_MAX_S, " s")
    if key in ("resume_after_limit", "recording", "record_input", "draining"):
        if not isinstance(value, bool):
            raise _wrong_type(key, "a boolean", value)
        return value
    if key == "recording_max_mb":
        return _int_in(key, value, RECORDING_MAX_MB_MIN, RECORDING_MAX_MB_MAX, " MiB")
    if key == "recording_retention_days":
        return _int_in(key, value, 0, 3650, " days")
    if key == "resume_message":
        if not isinstance(value, str):
            raise _wrong_type(key, "a string", value)
        if not value.strip():
            raise _bad(messages.BAD_TEXT.format(field=key, reason="must not be empty"))
        if len(value) > RESUME_MESSAGE_MAX or not value.isprintable():
            raise _bad(messages.BAD_TEXT.format(
                field=key, reason=f"must be one line of at most {RESUME_MESSAGE_MAX} printable characters"))
        return value
    if key == "image_prune":
        if value not in IMAGE_PRUNE_POLICIES:
            raise _bad(messages.BAD_TEXT.format(field=key, reason=f"must be one of {', '.join(IMAGE_PRUNE_POLICIES)}"))
        return value
    raise _bad(messages.UNKNOWN_FIELD.format(field=key))  # pragma: no cover - guarded by updated()


def _check_work_dir(key: str, value: Any) -> str:
    """A ``work_dir``: an absolute, normalised path equal to or below ``/home/claude``.

    The rules: absolute; already normalised (``posixpath.normpath`` leaves it as it is, so no
    ``.`` or ``..`` component, no ``//``, no trailing ``/``); ``/home/claude`` or below it; no
    NUL or other control character (it travels in an environment variable and lands in logs);
    at most ``WORK_DIR_MAX_BYTES`` bytes of UTF-8.
    """
    if not isinstance(value, str):
        raise _wrong_type(key, "a string", value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(messages.BAD_TEXT.format(field=key, reason="must not contain NUL or other control characters"))
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise _bad(messages.BAD_TEXT.format(field=key, reason="must be valid UTF-8")) from None
    if size > WORK_DIR_MAX_BYTES:
        raise _bad(messages.BAD_TEXT.format(field=key, reason=f"must be at most {WORK_DIR_MAX_BYTES} bytes"))
    if not value.startswith("/") or posixpath.normpath(value) != value or "/../" in value + "/":
        raise _bad(messages.BAD_TEXT.format(field=key, reason="must be an absolute, normalised path (no . or ..)"))
    if value != SESSION_HOME and not value.startswith(SESSION_HOME + "/"):
        raise _bad(messages.BAD_TEXT.format(field=key, reason=f"must be {SESSION_HOME} or a directory below it"))
    return value


def load_settings(path: Path) -> Settings:
    """Read the settings file; defaults when it does not exist.

    Raises:
        ConfigError: the file is unreadable, not JSON, or has an invalid field.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read settings: {e}") from e
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path}: settings are not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: settings must be a JSON object")
    try:
        return Settings().updated(obj)
    except BadRequest as e:
        raise ConfigError(f"{path}: {e.message.removeprefix('decode params: ')}") from e


def save_settings(path: Path, settings: Settings) -> None:
    """Write the settings file atomically (mode 0644)."""
    atomic_write(path, (json.dumps(settings.to_json(), indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
