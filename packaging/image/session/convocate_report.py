"""convocate-report: tell the convocate agent what happens in this session.

One message per call, over the Unix socket the agent bind-mounts into the
container (/run/convocate-agent/agent.sock): connect, write ONE line of
UTF-8 JSON

    {"source": SOURCE, "event": EVENT, "data": {...}}

read one reply line ({"ok": true} or {"ok": false, "error": "..."}), close.
The agent knows the session by the socket a message arrives on; nothing in
the message says which session it is.

Sources:
    hook        Claude Code hooks: EVENT is the hook's hook_event_name, data
                the hook's stdin JSON reduced to session_id, source, reason,
                prompt, message, notification_type, tool_name and (StopFailure)
                error, error_details and last_assistant_message. A StopFailure
                with error "rate_limit" also gets resets_at (int, epoch seconds)
                and limit_type (e.g. "five_hour") from the last API error line
                of the session's transcript, when it has them.
    mcp         the in-container MCP server (convocate-mcp): progress
                {message}, ask {question}, status {status, message}.
    supervisor  convocate-supervisor: start {attempt, command}, exit
                {status, attempt, seconds}, backoff {delay, failures},
                gave_up {status, failures}.

Strings in data are cut to 2000 characters and a line never exceeds 64 KiB.
A session must never break because the agent is away: when the socket is
missing or the agent does not answer within 2 s, the message is dropped, one
line goes to ~/.convocate/logs/report.log, and the command still exits 0.

Command line (python3 stdlib only, prints nothing on stdout):

    convocate-report hook                       hook JSON on stdin (a Claude Code hook command)
    convocate-report supervisor EVENT KEY=VALUE...
    convocate-report mcp EVENT KEY=VALUE...

Environment: CONVOCATE_AGENT_SOCKET overrides the socket path (tests).
Exit status: 0, also when the message could not be delivered; 2 for a usage
error of the supervisor and mcp forms (the hook form always exits 0).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time

SOCKET_PATH = "/run/convocate-agent/agent.sock"
#: Seconds from connect to the reply line before a message is given up.
TIMEOUT_S = 2.0
#: Longest line sent or read, newline included.
MAX_LINE = 64 * 1024
#: Longest string in data, in characters.
MAX_TEXT = 2000
#: What a hook message keeps of the hook's stdin JSON.
HOOK_KEYS = ("session_id", "source", "reason", "prompt", "message", "notification_type", "tool_name",
             "error", "last_assistant_message")
#: Most bytes of the transcript's end read for a rate limit's reset time (the file can grow to many MiB).
TRANSCRIPT_TAIL = 256 * 1024
#: Longest ``limit_type`` kept, in characters.
LIMIT_TYPE_MAX = 64
#: Events of the sources other than hook, with the type of each data key.
EVENTS: dict[str, dict[str, dict[str, type]]] = {
    "supervisor": {
        "start": {"attempt": int, "command": str},
        "exit": {"status": int, "attempt": int, "seconds": float},
        "backoff": {"delay": float, "failures": int},
        "gave_up": {"status": int, "failures": int},
    },
    "mcp": {
        "progress": {"message": str},
        "ask": {"question": str},
        "status": {"status": str, "message": str},
    },
}
STATUSES = ("working", "idle", "waiting")
LOG_NAME = os.path.join(".convocate", "logs", "report.log")
LOG_TRIM_AT = 4 * 1024 * 1024  # the log is cut to its last half beyond this
USAGE = """\
usage: convocate-report hook < HOOK_JSON
       convocate-report supervisor start|exit|backoff|gave_up KEY=VALUE...
       convocate-report mcp progress|ask|status KEY=VALUE...
Sends one event to the convocate agent; see the module docstring."""


# --- the message ----------------------------------------------------------------


def _cut(value: object, limit: int) -> object:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit]
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    return value


def encode(source: str, event: str, data: dict) -> bytes:
    """The wire line for one message, newline included.

    Raises:
        ValueError: the message does not fit in MAX_LINE even with short texts.
    """
    for limit in (MAX_TEXT, 200):
        line = json.dumps({"source": source, "event": event, "data": _cut(data, limit)},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n"
        if len(line) <= MAX_LINE:
            return line
    raise ValueError(f"message of {len(line)} bytes is longer than {MAX_LINE}")


def status_error(status: object) -> str | None:
    """Why STATUS is not a valid mcp status, or None if it is."""
    if status in STATUSES:
        return None
    return f"status must be one of {', '.join(STATUSES)} (got {status!r})"


# --- delivery -------------------------------------------------------------------


def socket_path() -> str:
    return os.environ.get("CONVOCATE_AGENT_SOCKET") or SOCKET_PATH


def _exchange(path: str, line: bytes, timeout: float) -> bytes:
    """Connect, send LINE, return the reply line; raises OSError or TimeoutError."""
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(remaining())
        sock.connect(path)
        sock.settimeout(remaining())
        sock.sendall(line)
        reply = b""
        while b"\n" not in reply:
            sock.settimeout(remaining())
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
            if len(reply) > MAX_LINE:
                break
        return reply.split(b"\n", 1)[0]


def send(source: str, event: str, data: dict, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """Send one message to the agent. Never raises.

    Returns:
        ``(True, "")`` when the agent answered ok, else ``(False, why)``; a
        failure has also been written to report.log.
    """
    path = socket_path()
    try:
        line = encode(source, event, data)
        reply = _exchange(path, line, timeout)
    except FileNotFoundError:
        why = f"no agent socket at {path}"
    except ConnectionRefusedError:
        why = f"nobody listens on {path}"
    except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
        why = f"the agent did not answer within {timeout:g} s"
    except OSError as e:
        why = f"{e.strerror}: {path}" if e.strerror else str(e) or type(e).__name__
    except ValueError as e:
        why = str(e)
    else:
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("ok") is True:
            return True, ""
        if isinstance(answer, dict) and answer.get("ok") is False:
            why = f"the agent refused it: {answer.get('error') or 'no reason given'}"
        elif not reply:
            why = "the agent closed the connection without a reply"
        else:
            why = f"the agent sent an unreadable reply: {reply[:200].decode('utf-8', 'replace')!r}"
    log(f"{source} {event} not delivered: {why}")
    return False, why


# --- report.log -----------------------------------------------------------------


def log_path() -> str:
    home = os.environ.get("HOME")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError):
            home = "/tmp"
    return os.path.join(home, LOG_NAME)


def log(text: str) -> None:
    """Append one line to report.log (best effort, never raises)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    text = " ".join(text.split())[:1000]
    record = f"{stamp} convocate-report[{os.getpid()}]: {text}\n".encode("utf-8", "replace")
    path = log_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, record)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > LOG_TRIM_AT:
            _trim(path)
    except OSError:
        pass


def _trim(path: str) -> None:
    """Keep the last half of the log (whole lines); a concurrent line may be lost."""
    with open(path, "rb") as f:
        f.seek(-(LOG_TRIM_AT // 2), os.SEEK_END)
        tail = f.read()
    tail = tail.split(b"\n", 1)[-1]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(tail)
    os.replace(tmp, path)


# --- command line -----------------------------------------------------------------


def read_tail(path: object, limit: int = TRANSCRIPT_TAIL) -> bytes:
    """The last ``limit`` bytes of a regular file, opened without following a symlink; b"" otherwise.

    The transcript is the session's own file, named by the hook input: it is
    opened with ``O_NOFOLLOW`` (a link as its last component is refused) and
    ``O_NONBLOCK`` (a FIFO cannot hang the hook), and read only if it is a
    regular file. Never raises.
    """
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        start = max(0, st.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return data.split(b"\n", 1)[-1] if start > 0 else data  # the first line may be cut


def rate_limit_info(tail: bytes) -> dict:
    """``resets_at`` and ``limit_type`` of the last API error in a transcript's tail (``{}`` if none).

    Claude Code 2.1.330 writes each API error as a JSONL line with
    ``"type": "assistant"`` and ``"isApiErrorMessage": true``; after a 429
    that carried the ``anthropic-ratelimit-unified-*`` headers it holds
    ``"apiErrorParams": {"rate_limit_info": {"resetsAt": <epoch s>,
    "rateLimitType": "five_hour", ...}}``. Only the last such line counts (an
    older one is an older limit). Lines that are not JSON objects are skipped;
    a ``resetsAt`` that is not an integer is left out (the agent checks its range).
    """
    for line in reversed(tail.splitlines()):
        if b"isApiErrorMessage" not in line:
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(entry, dict) or entry.get("type") != "assistant" or entry.get("isApiErrorMessage") is not True:
            continue
        params = entry.get("apiErrorParams")
        info = params.get("rate_limit_info") if isinstance(params, dict) else None
        out: dict = {}
        if isinstance(info, dict):
            resets = info.get("resetsAt")
            if isinstance(resets, int) and not isinstance(resets, bool):
                out["resets_at"] = resets
            kind = info.get("rateLimitType")
            if isinstance(kind, str) and kind:
                out["limit_type"] = kind[:LIMIT_TYPE_MAX]
        return out
    return {}


def hook_message(raw: bytes) -> tuple[str, dict] | None:
    """``(event, data)`` for a hook's stdin JSON, or None if it has no event name."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    event = payload.get("hook_event_name")
    if not isinstance(event, str) or not event:
        return None
    data = {k: payload[k] for k in HOOK_KEYS if isinstance(payload.get(k), (str, int, float, bool))}
    if event == "StopFailure":
        details = payload.get("error_details")
        if isinstance(details, str):
            data["error_details"] = details
        elif details is not None:
            try:
                data["error_details"] = json.dumps(details, ensure_ascii=False)[:MAX_TEXT]
            except (TypeError, ValueError, RecursionError):
                pass
        if data.get("error") == "rate_limit":
            data.update(rate_limit_info(read_tail(payload.get("transcript_path"))))
    return event, data


def _convert(value: str, kind: type) -> object:
    if kind is int:
        try:
            return int(value)
        except ValueError:
            return value
    if kind is float:
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            return value
        return round(number, 3) if number == number and abs(number) != float("inf") else value
    return value


def parse_fields(source: str, event: str, args: list[str]) -> dict:
    """data for ``SOURCE EVENT KEY=VALUE...``.

    Raises:
        ValueError: unknown event, a word without ``=``, or a bad mcp status.
    """
    events = EVENTS[source]
    if event not in events:
        raise ValueError(f"unknown {source} event {event!r} (one of {', '.join(events)})")
    types = events[event]
    data: dict = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {arg!r}")
        data[key] = _convert(value, types.get(key, str))
    if source == "mcp" and event == "status":
        why = status_error(data.get("status"))
        if why:
            raise ValueError(why)
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 0 if args else 2
    source = args[0]
    if source == "hook":
        # Claude Code waits for this command: whatever happens, print nothing
        # on stdout and exit 0 so it never blocks or alters Claude's work.
        try:
            raw = sys.stdin.buffer.read()
            message = hook_message(raw)
            if message is None:
                log(f"hook input without a hook_event_name ignored ({len(raw)} bytes)")
            else:
                send("hook", *message)
        except Exception as e:  # noqa: BLE001 - a hook must never fail
            log(f"hook report failed: {type(e).__name__}: {e}")
        return 0
    if source not in EVENTS or len(args) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        data = parse_fields(source, args[1], args[2:])
    except ValueError as e:
        print(f"convocate-report: {e}", file=sys.stderr)
        return 2
    send(source, args[1], data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
