"""Property-based fuzzing of what a client can send the agent: never a crash, always an error with a code.

Two levels. In-process, fast and many: the line framing, the request,
response and event envelopes, the attach header, the params of every op, the
settings update, ``session.json`` as read from disk, and the two subsystem
handlers driving a real :class:`~convocate_agent.service.AgentService` (real
store, locks and admission; a fake Docker that is up or down). Over real SSH
against a real ``convocate-agent serve``, fewer: every fuzzed request gets one
response with ``ok: false`` and the code the in-process decoder predicts, the
agent still answers ``ping``, and nothing under its root changed.

Inputs: arbitrary bytes; JSON of any shape; requests for every op with wrong
types, unknown and missing fields, huge numbers, unicode (lone surrogates
too), path-traversal IDs, NUL bytes; and a fixed list of hostile lines (huge
integer literals, deep nesting, NaN, an ``id`` too large to echo, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from convocate.common.attachheader import HEADER_MAX, parse_header
from convocate.common.errors import BadRequest, ConvocateError, ProtocolError
from convocate.common.framing import MAX_LINE_BYTES, LineDecoder, LineTooLong, bounded_text, read_frames
from convocate.common.model import SessionMeta, new_uuid
from convocate.common.ops import OPS, decode_params
from convocate.common.paths import Paths
from convocate.common.protocol import ATTACH_SUBSYSTEM, RPC_SUBSYSTEM, Event, Request, Response
from convocate.common.timefmt import parse_rfc3339
from convocate_agent.attach import serve_attach_channel
from convocate_agent.rpc import RpcDispatcher, serve_rpc_channel
from convocate_agent.settings import Settings
from convocate_agent.store import SessionStore
from tests.conftest import connect, rpc_ok
from tests.reliability.support import (
    CLIENT_CODES,
    TALLY,
    FakeProcess,
    FakeRuntime,
    assert_sound_root,
    fuzz_settings,
    make_service,
    seed_sessions,
    session_dirs,
)
from tests.test_agent_bad_input import snapshot

pytestmark = pytest.mark.reliability

SEEDS = ("@seed0@", "@seed1@")  # stand-ins for the UUIDs of sessions that exist, filled in by each test

# --- strategies ----------------------------------------------------------------------------
NASTY_STRINGS = st.sampled_from([
    "", " ", ".", "..", "../../etc/passwd", "/etc/shadow", "..\\..\\x", "%2e%2e%2f", "a/b", "\x00", "x\x00y",
    "\n", "\r\n", "\t", "\u202e", "\ufeff", "\ud800", "\udfff", "\U0001f600", "é", "ß" * 70, "A" * 65, "a" * 300,
    "7F9DF71A-DCAF-4E56-BB1D-6E1FE44E9A91", "{7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91}",
    "7f9df71adcaf4e56bb1d6e1fe44e9a91", "7f9df71a-dcaf-1e56-bb1d-6e1fe44e9a91", "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91/..",
    "tcp ", "TCP", "icmp", "-bad", "a..b", "a." * 130, "x" * 64 + ".com", "1970-01-01T00:00:00Z",
    "2026-13-01T00:00:00Z", "9999-12-31T23:59:60.999999999+23:59", "now", "never", "unused", *SEEDS,
])
HUGE_NUMBERS = st.sampled_from([2**31, -2**31 - 1, 2**53 + 1, 2**63, -2**63, 2**64, 10**300, -10**300, 1e308,
                                -1e308, 5e-324, 0.0, -0.0, 1.5, 0.009, 1024.0000001, 65536, -2, 100_001])
TEXT = st.text(max_size=30) | st.text(st.characters(codec="utf-8"), max_size=30) | st.text(
    st.characters(categories=["Cs", "Cc", "Zs", "Mn"]), max_size=10)
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_NUMBERS | st.floats(allow_nan=False, allow_infinity=False) \
    | TEXT | NASTY_STRINGS
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                        max_leaves=12)

UUIDS = st.uuids(version=4).map(str) | st.sampled_from(SEEDS)
LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?", fullmatch=True)
#: What create and edit accept as a session's DNS name: one RFC 1123 label (the shell host adds the domain), or none.
VALID_DNS = LABEL | st.just("")
VALID_NAME = st.from_regex(r"[A-Za-z0-9_.\-]([A-Za-z0-9 _.\-]{0,62}[A-Za-z0-9_.\-])?", fullmatch=True)
TIMESTAMPS = st.builds(lambda y, mo, d, h, mi, s, f, z: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{f}{z}",
                       st.integers(1970, 2100), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
                       st.integers(0, 59), st.integers(0, 59), st.sampled_from(["", ".5", ".123456789"]),
                       st.sampled_from(["Z", "+01:00", "-07:30"]))
SEND_TEXT = st.text(max_size=200).filter(lambda s: "\x00" not in s)

#: A valid value of each op parameter (DESIGN §3 rules).
def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


VALID: dict[str, st.SearchStrategy[Any]] = {
    "id": UUIDS, "source_id": UUIDS, "name": VALID_NAME, "port": st.integers(-1, 65535),
    "protocol": st.sampled_from(["tcp", "udp", ""]), "dns_name": VALID_DNS,
    "cpus": st.floats(0.01, 1024) | st.integers(1, 1024), "memory_mb": st.integers(16, 16 * 1024 * 1024),
    "start": st.booleans(), "lines": st.integers(0, 100_000), "text": SEND_TEXT, "enter": st.booleans(),
    "since": TIMESTAMPS,
    "trash_id": st.builds(lambda u, n: f"{u}.{n}", UUIDS, st.integers(0, 10**19)),
    "credential": st.just("") | st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True),
    "kind": st.sampled_from(["api_key", "oauth_token"]),
    "secret": st.from_regex(r"[\x21-\x7e]{1,200}", fullmatch=True),
    # operator_identify (issue 19): within the bounds, garbage inside (the real checks: test_operator_identity)
    "certificate": st.text(max_size=200) | st.just("ssh-ed25519-cert-v01@openssh.com AAAA"),
    "signature": st.from_regex(r"[A-Za-z0-9+/]{0,200}={0,2}", fullmatch=True),
    # audit_read (issue 19)
    "until": TIMESTAMPS, "session": UUIDS, "operator": st.text(max_size=40), "after_seq": st.integers(0, 10**6),
    "max": st.integers(1, 1000), "raw": st.booleans(),
    # recording_list, recording_read, recording_grep (issue 19)
    "file": st.from_regex(r"20[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3])[0-5][0-9]{3}"
                          r"\.[0-9]{6}Z\.cast", fullmatch=True),
    "offset": st.integers(0, 2**53), "max_bytes": st.integers(1, 256 * 1024),
    "pattern": st.from_regex(r"[A-Za-z0-9 .*+?|]{1,40}", fullmatch=True).filter(_compiles),
    "max_matches": st.integers(1, 10_000),
    # override's moving_to (issue 18): an agent ID, or "" to clear
    "moving_to": st.just("") | st.from_regex(r"[a-z0-9]{8}", fullmatch=True),
}
#: Fields whose rule depends on the op: a credential's ``name`` is not a session's.
VALID_BY_OP: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    op: {"name": st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True)}
    for op in ("credential_set", "credential_delete")
}
VALID_SETTINGS: dict[str, st.SearchStrategy[Any]] = {
    "default_cpus": st.floats(0.01, 1024), "default_memory_mb": st.integers(16, 16 * 1024 * 1024),
    "agent_command": st.text(max_size=40).filter(lambda s: s.strip() and not any(c in s for c in "\n\r\x00")),
    "heartbeat_interval_s": st.integers(1, 3600), "trash_retention_days": st.integers(0, 3650),
    "image_prune": st.sampled_from(["unused", "never"]), "restart_backoff_s": st.floats(0.01, 60),
    "pids_limit": st.integers(64, 4_194_304),
    "work_dir": st.builds(lambda parts: "/".join(["/home/claude", *parts]),
                          st.lists(st.from_regex(r"[A-Za-z0-9_ .-]{1,20}", fullmatch=True)
                                   .filter(lambda p: p not in (".", "..")), max_size=4)),
    "skip_permissions": st.booleans(),
    "limit_retry_s": st.integers(1, 86_400), "resume_after_limit": st.booleans(),
    "resume_message": st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and s.isprintable()),
    "recording": st.booleans(), "recording_max_mb": st.integers(1, 1024 * 1024),
    "recording_retention_days": st.integers(0, 3650), "record_input": st.booleans(), "draining": st.booleans(),
}
FIELD_NAMES = sorted({p.name for spec in OPS.values() if spec for p in spec} | set(VALID_SETTINGS))


def fuzz_value(name: str) -> st.SearchStrategy[Any]:
    """A value for field ``name``: often valid, often anything at all."""
    valid = VALID[name] if name in VALID else VALID_SETTINGS[name] if name in VALID_SETTINGS else ANY_JSON
    return st.one_of(valid, valid, ANY_JSON, NASTY_STRINGS, HUGE_NUMBERS)


def fields_of(op: str) -> list[str]:
    spec = OPS.get(op, ())
    return sorted(VALID_SETTINGS) if spec is None else [p.name for p in spec]


def fuzz_params(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Params for ``op``: any subset of its fields with fuzzed values, sometimes with fields it does not have."""
    known = st.fixed_dictionaries({}, optional={f: fuzz_value(f) for f in fields_of(op)})
    extra = st.dictionaries(st.sampled_from(FIELD_NAMES) | TEXT, ANY_JSON, max_size=2)
    return st.one_of(known, known, st.builds(lambda a, b: {**b, **a}, known, extra))


def valid_params(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Params ``op`` accepts: its required fields and any of its optional ones, each valid."""
    spec = OPS[op]
    if spec is None:
        return st.fixed_dictionaries({}, optional=VALID_SETTINGS)
    valid = {**VALID, **VALID_BY_OP.get(op, {})}
    params = st.fixed_dictionaries({p.name: valid[p.name] for p in spec if p.required},
                                   optional={p.name: valid[p.name] for p in spec if not p.required})
    return params.map(_window_in_order) if op == "recording_grep" else params


def _window_in_order(params: dict[str, Any]) -> dict[str, Any]:
    """``recording_grep``'s ``until`` may not come before its ``since`` (RecordingGrepParams.check_together)."""
    since, until = params.get("since"), params.get("until")
    if since and until and parse_rfc3339(until) < parse_rfc3339(since):
        return {**params, "since": until, "until": since}
    return params


OP_NAMES = st.sampled_from(sorted(OPS))
ENVELOPE_ID = st.one_of(st.integers(), TEXT, st.none(), st.lists(st.integers(), max_size=3))


@st.composite
def request_objects(draw: st.DrawFn, valid_share: float = 0.3) -> Any:
    """A request object: a real op with valid or fuzzed params, or a broken envelope."""
    kind = draw(st.sampled_from(["valid", "valid", "fuzzed", "fuzzed", "envelope"]))
    if kind == "envelope":
        return draw(st.one_of(
            ANY_JSON,
            st.fixed_dictionaries({}, optional={"op": ANY_JSON | OP_NAMES, "params": ANY_JSON, "id": ENVELOPE_ID}),
            st.builds(lambda op, extra: {"op": op, **extra}, OP_NAMES,
                      st.dictionaries(TEXT.filter(lambda k: k not in ("op", "params", "id")), ANY_JSON, min_size=1,
                                      max_size=2)),
            st.builds(lambda op: {"op": op}, TEXT),
        ))
    op = draw(OP_NAMES)
    params = draw(valid_params(op) if kind == "valid" else fuzz_params(op))
    obj: dict[str, Any] = {"op": op, "params": params}
    if draw(st.booleans()):
        obj["id"] = draw(ENVELOPE_ID)
    return obj


def render(obj: Any, ascii_only: bool) -> bytes:
    """A request line as a client might write it: escaped ASCII, or raw UTF-8 (lone surrogates as CESU-8)."""
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


RAW_LINES = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """One line without its newline: a rendered request object, raw bytes, or a hostile line."""
    kind = draw(st.sampled_from(["object", "object", "object", "object", "raw", "hostile"]))
    if kind == "raw":
        return draw(RAW_LINES)
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE))[0]
    return render(draw(request_objects()), draw(st.booleans()))


def fill_seeds(line: bytes, seeds: list[str]) -> bytes:
    """Replace the :data:`SEEDS` stand-ins (ASCII, so verbatim in any rendering) by real session UUIDs."""
    for stand_in, sid in zip(SEEDS, seeds, strict=True):
        line = line.replace(stand_in.encode(), sid.encode())
    return line


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (the pieces a reader may hand out)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


_NOWHERE = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"
#: Lines chosen to hurt, with the code the agent must answer each with.
HOSTILE: list[tuple[bytes, str]] = [
    (b'{"op":"ping","id":' + b"1" * 5000 + b"}", "bad_request"),  # beyond Python's int-string limit
    (b'{"op":"get","params":{"id":' + b"9" * 4400 + b"}}", "bad_request"),
    (b'{"op":"\\ud800"}', "bad_request"),  # a lone surrogate in the op, echoed in the error
    (b'{"op":"get","params":{"id":"\\udfff"}}', "bad_request"),
    (b'{"op":"list","params":{"\\ud83d":1}}', "bad_request"),
    (b'{"op":"nope","id":"\\ud83d"}', "bad_request"),  # ... and in the id, echoed in the response
    (b"[" * 100_000 + b"]" * 100_000, "bad_request"),
    (b'{"op":"ping","params":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001, "bad_request"),
    (b'{"op":"create","params":{"name":"x","cpus":NaN}}', "bad_request"),
    (b'{"op":"create","params":{"name":"x","cpus":-Infinity}}', "bad_request"),
    (b'{"op":"create","params":{"name":"x","cpus":1e999}}', "bad_request"),
    (b'{"op":"create","params":{"name":"x","memory_mb":1e2}}', "bad_request"),
    (b'{"op":"settings-set","params":{"default_cpus":1e999}}', "bad_request"),
    (b'{"op":"settings-set","params":{"heartbeat_interval_s":' + b"7" * 4000 + b"}}", "bad_request"),
    (b'\xef\xbb\xbf{"op":"ping"}', "bad_request"),
    (b'{"op":"ping","id":"' + b"x" * (MAX_LINE_BYTES - 40) + b'"}', "bad_request"),  # its echo cannot fit a line
    (b'{"op":"get","params":{"id":"' + b"x" * (MAX_LINE_BYTES - 40) + b'"}}', "bad_request"),  # nor its error
    (b'{"op":"' + b"o" * (MAX_LINE_BYTES - 20) + b'"}', "bad_request"),
    (b'{"op":"get","params":{"id":"../../../etc/passwd"}}', "bad_request"),
    (b'{"op":"get","params":{"id":"\\u0000"}}', "bad_request"),
    (b'{"op":"send","params":{"id":"' + _NOWHERE.encode() + b'","text":"a\\u0000b"}}', "bad_request"),
    (b'{"op":"send","params":{"id":"@seed0@","text":"' + b"y" * 70_000 + b'"}}', "bad_request"),
    (b'{"op":"capture","params":{"id":"@seed0@","lines":100001}}', "bad_request"),
    (b'{"op":"logs","params":{"id":"@seed0@","since":"2026-02-30T25:00:00Z"}}', "bad_request"),
    (b'{"op":"restore","params":{"trash_id":"@seed0@.' + b"9" * 21 + b'"}}', "bad_request"),
    (b'{"op":"edit","params":{"id":"@seed0@","port":65536}}', "bad_request"),
    (b'{"op":"edit","params":{"id":"@seed0@","name":" x"}}', "bad_request"),
    (b'{"op":"clone","params":{"source_id":"@seed1@","name":"' + b"n" * 65 + b'"}}', "bad_request"),
    (b'{"op":"get","params":{"id":"' + _NOWHERE.encode() + b'"}}', "not_found"),
    (b'{"op":"capture","params":{"id":"@seed1@"}}', "conflict"),
    (b"\x00" * 100, "bad_request"),
    (b'{"op":"ping"', "bad_request"),
    (b"", "bad_request"),
]


def expected_error(line: bytes, seeds: list[str]) -> tuple[str, str | None] | None:
    """The error the agent must answer ``line`` with, when the decoder alone can tell.

    Returns:
        ``(code, message)``, message None when only the code is certain; None for
        a request that is valid and could succeed (or change something): the
        fuzzers over SSH skip those.
    """
    try:
        request = Request.parse(line)
        params = decode_params(request.op, request.params)
        if request.op == "settings-set":
            Settings().updated(params)
    except BadRequest as e:
        return "bad_request", bounded_text(e.message)
    if request.op == "restore":
        return "not_found", None  # no trash entry exists on the fuzzed agents
    ids = [params[k] for k in ("id", "source_id") if k in params]
    if not ids:
        return None
    if any(i in seeds for i in ids):
        return ("conflict", None) if request.op in ("capture", "send", "background") else None
    return "not_found", None


def expected_attach_error(stream: bytes, seeds: list[str]) -> tuple[str, str | None] | None:
    """The refusal an attach channel carrying ``stream`` must end with; None when it ends silently (no header).

    A header without its newline is still a header when the stream ends after it (the agent answers it).
    """
    newline = stream.find(b"\n")
    first = stream if newline < 0 else stream[:newline]
    if len(first) > HEADER_MAX:
        return "bad_request", f"bad attach header: line exceeds {HEADER_MAX} bytes"
    if newline < 0 and not first.strip():
        return None
    try:
        request = parse_header(first)
    except BadRequest as e:
        return "bad_request", bounded_text(e.message)
    return ("conflict", None) if request.session_id in seeds else ("not_found", None)


def certain_error(frame: bytes, seeds: list[str]) -> tuple[str, str | None] | None:
    """:func:`expected_error` where earlier frames of the same channel cannot change it.

    They may have deleted, started or restored a seed; a malformed frame, or one
    naming an ID that never existed, is answered the same whatever they did.
    """
    want = expected_error(frame, seeds)
    if want is None or want[0] == "bad_request" or not any(sid.encode() in frame for sid in seeds):
        return want
    return None


def check_response(line: bytes, request: bytes, expected: tuple[str, str | None] | None) -> dict[str, Any]:
    """Parse one response line and check it against what the request deserved."""
    response = Response.parse(line)  # raises ProtocolError if it is not a response
    if not response.ok:
        assert response.code in CLIENT_CODES, (request[:200], response)
    if expected is not None:
        code, message = expected
        assert not response.ok and response.code == code, (request[:200], response, expected)
        if message is not None:
            assert response.error == message, (request[:200], response.error[:300], message[:300])
    return json.loads(line)


# --- pure parsers ----------------------------------------------------------------------------
@fuzz_settings(150, 1500)
@given(lines=st.lists(st.binary(max_size=150).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       terminated=st.booleans(), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_line_framing_stays_in_step_under_any_chunking(lines, terminated, cuts):
    TALLY.add("fuzz", "framing")
    limit = 64
    stream = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    decoder = LineDecoder(limit)
    got: list[bytes | str] = []
    for chunk in chunked(stream, cuts):
        got += ["TOO LONG" if isinstance(x, LineTooLong) else x for x in decoder.feed(chunk)]
    complete = lines if terminated else lines[:-1]
    want: list[bytes | str] = ["TOO LONG" if len(x) > limit else x for x in complete]
    tail = b"" if terminated or not lines else lines[-1]
    if len(tail) > limit:
        want.append("TOO LONG")
        assert decoder.discarding and decoder.pending() == b""
    else:
        assert decoder.pending() == tail
    assert got == want

    class Reader:
        def __init__(self):
            self.chunks = chunked(stream, cuts)

        async def read(self, n=-1):
            return self.chunks.pop(0) if self.chunks else b""

    async def frames():
        return [x async for x in read_frames(Reader(), LineDecoder(limit))]

    framed = ["TOO LONG" if isinstance(x, LineTooLong) else x for x in asyncio.run(frames())]
    assert framed == want + ([tail] if tail.strip() and len(tail) <= limit else [])


@fuzz_settings(250, 2500)
@given(line=request_lines())
def test_a_request_line_parses_or_is_malformed_never_worse(line):
    TALLY.add("fuzz", "request envelope")
    Request.salvage_id(line)  # never raises
    try:
        request = Request.parse(line)
    except BadRequest as e:
        assert e.code == "bad_request" and e.message.startswith("malformed request: "), e.message
        return
    assert isinstance(request.op, str) and isinstance(request.params, dict)
    assert Request.parse(render(request.to_wire(), True)) == request


@fuzz_settings(100, 1000)
@given(obj=st.one_of(ANY_JSON, st.fixed_dictionaries({}, optional={"ok": ANY_JSON, "error": ANY_JSON,
                                                                   "code": ANY_JSON, "result": ANY_JSON,
                                                                   "id": ANY_JSON, "type": ANY_JSON,
                                                                   "agent_id": ANY_JSON, "session_id": ANY_JSON,
                                                                   "timestamp": ANY_JSON, "data": ANY_JSON})),
       raw=RAW_LINES, use_raw=st.booleans())
def test_what_a_client_reads_from_an_agent_parses_or_is_refused(obj, raw, use_raw):
    """The shell side of the same lines: responses and events from a peer that misbehaves."""
    TALLY.add("fuzz", "response and event")
    line = raw if use_raw else render(obj, True)
    try:
        response = Response.parse(line)
    except ProtocolError as e:
        assert e.message.startswith("malformed response: ")
    else:
        assert isinstance(response.ok, bool)
        if not response.ok:
            with contextlib.suppress(ConvocateError):
                response.raise_for_error()
    try:
        event = Event.parse(line)
    except BadRequest as e:
        assert e.message.startswith("malformed event: ")
    else:
        assert isinstance(event.type, str) and isinstance(event.agent_id, str)


HEADER_OBJECTS = st.one_of(
    st.fixed_dictionaries({"id": UUIDS}, optional={"cols": st.integers(0, 10_000), "rows": st.integers(0, 10_000),
                                                   "read_only": st.booleans(), "term": TEXT}),
    st.fixed_dictionaries({}, optional={"id": UUIDS | ANY_JSON | NASTY_STRINGS, "cols": ANY_JSON | HUGE_NUMBERS,
                                        "rows": ANY_JSON | HUGE_NUMBERS, "read_only": ANY_JSON,
                                        "term": ANY_JSON | NASTY_STRINGS}),
    st.builds(lambda h, extra: {**extra, **h}, st.fixed_dictionaries({"id": UUIDS}),
              st.dictionaries(TEXT, ANY_JSON, min_size=1, max_size=2)),
    ANY_JSON,
)


@st.composite
def attach_streams(draw: st.DrawFn) -> bytes:
    """What an attach client sends: a header line (or not), maybe terminal bytes after it."""
    kind = draw(st.sampled_from(["object", "object", "object", "raw", "long", "unterminated", "nothing"]))
    if kind == "nothing":  # no header at all, or only blanks: the channel closes silently
        return draw(st.sampled_from([b"", b" ", b"\t", b"  \t "]))
    if kind == "raw":
        header = draw(RAW_LINES)
    elif kind == "long":
        header = b'{"id":"' + b"7" * draw(st.integers(HEADER_MAX - 12, HEADER_MAX + 50)) + b'"}'
    else:
        header = render(draw(HEADER_OBJECTS), draw(st.booleans()))
    if kind == "unterminated":
        return header
    return header + b"\n" + draw(st.binary(max_size=40))


@fuzz_settings(150, 1500)
@given(stream=attach_streams())
def test_an_attach_header_parses_or_names_its_fault(stream):
    TALLY.add("fuzz", "attach header")
    line = stream.split(b"\n", 1)[0]
    try:
        request = parse_header(line)
    except BadRequest as e:
        assert e.code == "bad_request" and e.message.startswith("bad attach header: "), e.message
        return
    assert 1 <= request.cols <= 10_000 and 1 <= request.rows <= 10_000
    assert isinstance(request.read_only, bool) and isinstance(request.term, str) and request.term


@fuzz_settings(300, 3000)
@given(known_op=st.integers(0, 9), data=st.data())
def test_the_params_of_every_op_decode_or_name_the_field(known_op, data):
    TALLY.add("fuzz", "op params")
    op = data.draw(OP_NAMES if known_op else TEXT)  # nine in ten a real op
    params = data.draw(fuzz_params(op))
    try:
        decoded = decode_params(op, params)
    except BadRequest as e:
        assert e.message.startswith("decode params: ") or e.message == f'unknown op: "{op}"', e.message
        TALLY.add("fuzz params refused", op if op in OPS else "(unknown op)")
        return
    TALLY.add("fuzz params accepted", op)
    spec = OPS[op]
    if spec is not None:
        assert set(decoded) <= {p.name for p in spec}
        assert {p.name for p in spec if p.required} <= set(decoded)
    assert decode_params(op, decoded) == decoded  # normalising twice changes nothing


@fuzz_settings(60, 600)
@given(op=OP_NAMES, data=st.data())
def test_valid_params_of_every_op_are_accepted(op, data):
    """The other half: the fuzzers are not only ever refused."""
    TALLY.add("fuzz", "valid params")
    params = json.loads(fill_seeds(json.dumps(data.draw(valid_params(op))).encode(), [new_uuid(), new_uuid()]))
    decoded = decode_params(op, params)
    if op == "settings-set":
        updated = Settings().updated(decoded)
        assert Settings().updated(updated.to_json()) == updated


@fuzz_settings(100, 1000)
@given(changes=st.fixed_dictionaries({}, optional={k: fuzz_value(k) for k in VALID_SETTINGS})
       | st.dictionaries(st.sampled_from(sorted(VALID_SETTINGS)) | TEXT, ANY_JSON, max_size=3))
def test_a_settings_update_is_checked_field_by_field(changes):
    TALLY.add("fuzz", "settings-set")
    try:
        updated = Settings().updated(changes)
    except BadRequest as e:
        assert e.message.startswith("decode params: "), e.message
        return
    assert Settings().updated(updated.to_json()) == updated
    json.dumps(updated.to_json(), allow_nan=False)  # what is persisted is strict JSON


def _meta_json(sid: str) -> dict[str, Any]:
    return {"uuid": sid, "name": "disk", "created_at": "2026-01-01T00:00:00Z", "last_accessed": "2026-01-02T00:00:00Z",
            "port": 1234, "protocol": "tcp", "dns_name": "disk", "cpus": 0.5, "memory_mb": 512, "image": "i",
            "activity": "idle", "activity_at": "2026-01-02T00:00:00Z"}


def test_a_session_file_from_disk_loads_or_is_reported_broken():
    """A session record is input too (an old agent's ``session.json`` migrated, a full disk, a hand edit): never an
    unexpected exception, whether read as a record or migrated from a home."""
    with tempfile.TemporaryDirectory(prefix="cvrel-store-") as tmp:
        paths = Paths(Path(tmp))
        paths.session_base.mkdir(parents=True)
        paths.session_records_dir.mkdir(parents=True)
        store = SessionStore(paths, 0, 0)

        @fuzz_settings(150, 1500)
        @given(kind=st.sampled_from(["field", "field", "field", "object", "raw"]),
               field=st.sampled_from(sorted(_meta_json(new_uuid()))), value=fuzz_value("x"),
               obj=ANY_JSON, raw=st.binary(max_size=200), nan=st.booleans())
        @example(kind="field", field="activity", value="", obj=None, raw=b"", nan=True)  # NaN cpus
        @example(kind="field", field="cpus", value=10**400, obj=None, raw=b"", nan=False)  # beyond float
        @example(kind="field", field="activity_at", value=[1], obj=None, raw=b"", nan=False)
        def load(kind, field, value, obj, raw, nan):
            TALLY.add("fuzz", "session.json")
            sid = new_uuid()
            home = paths.session_dir(sid)
            home.mkdir()
            if kind == "field":
                meta = _meta_json(sid)
                meta[field] = value
                data = json.dumps(meta).encode()
                if nan:
                    data = data.replace(b'"cpus": 0.5', b'"cpus": NaN')
            elif kind == "object":
                data = json.dumps(obj).encode()
            else:
                data = raw
            (home / "session.json").write_bytes(data)
            migrated = store.migrate_legacy()
            assert (sid in migrated.migrated) != (sid in {u for u, _ in migrated.refused})
            if sid in migrated.migrated:
                assert not (home / "session.json").exists()
            else:
                paths.session_record(sid).write_bytes(data)
            try:
                meta = store.load(sid)
            except ConvocateError as e:
                assert e.code == "config", e
            else:
                assert isinstance(meta, SessionMeta)
                json.dumps(meta.to_json(), allow_nan=False)  # what the agent writes back and sends is strict JSON
            good, broken = store.load_all()
            assert sid in {m.uuid for m in good} | {b.uuid for b in broken}
            (home / "session.json").unlink(missing_ok=True)
            paths.session_record(sid).unlink()
            home.rmdir()

        load()


# --- the subsystem handlers in-process -------------------------------------------------------
def _count_frames(stream: bytes) -> list[bytes]:
    """The request lines of a channel's input, as the agent frames them (tail only if not blank)."""
    lines = stream.split(b"\n")
    tail = lines.pop()
    return lines + ([tail] if tail.strip() else [])


def _salvaged_id(line: bytes) -> Any:
    """The ``id`` of a request line as a client reads it back from a response.

    Raw UTF-8 surrogates (``\\xed\\xa0\\x80\\xed\\xb0\\x80``) decode to two lone surrogates, which the
    agent echoes as the JSON escapes ``\\ud800\\udc00``: a JSON reader joins those into one character
    (RFC 8259 §7), so the id is compared as it survives that round trip.
    """
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    found = obj.get("id", None) if isinstance(obj, dict) else None
    return None if found is None else json.loads(json.dumps(found))


async def _run_rpc_channel(root: Path, runtime: FakeRuntime, lines: list[Any], cuts: list[int]) -> None:
    """Drive one RPC channel in-process and check every answer and the root afterwards."""
    service = make_service(root, runtime)
    seeds = seed_sessions(service)
    stream = b"".join(fill_seeds(x, seeds) + b"\n" for x in lines)
    process = FakeProcess(chunked(stream, cuts))
    try:
        await serve_rpc_channel(process, RpcDispatcher(service), "fuzz")  # type: ignore[arg-type]
    finally:
        service.reports.close_all()
    frames = _count_frames(stream)
    out = bytes(process.stdout.data)
    assert out.endswith(b"\n") or not frames
    responses = out.splitlines()
    assert process.exits == 1 and len(responses) == len(frames), (len(responses), len(frames))
    expect = set(seeds)
    for frame, line in zip(frames, responses, strict=True):
        answer = check_response(line, frame, certain_error(frame, seeds))
        code = "ok" if answer["ok"] else answer["code"]
        TALLY.add(f"fuzz rpc channel outcomes (docker {'up' if runtime.up else 'down'})", code)
        if len(line) < MAX_LINE_BYTES // 2 and _salvaged_id(frame) is not None and "id" in answer:
            assert answer["id"] == _salvaged_id(frame)
        if answer["ok"] and isinstance(answer.get("result"), dict):
            op = Request.parse(frame).op
            result = answer["result"]
            if op in ("create", "clone"):
                expect.add(result["uuid"])
            elif op == "delete":
                expect.discard(result["uuid"])
            elif op == "restore":
                expect.add(result["session"]["uuid"])
    sessions = assert_sound_root(service.paths)
    assert set(sessions) == expect  # nothing made by a request that failed, nothing lost by one
    assert set(runtime.states) <= expect  # no container without its session


@pytest.mark.parametrize("docker_up", [True, False], ids=["docker-up", "docker-down"])
def test_an_rpc_channel_answers_every_frame_once_and_keeps_the_store_sound(docker_up):
    with tempfile.TemporaryDirectory(prefix="cvrel-rpc-") as tmp:
        counter = iter(range(10**9))

        @fuzz_settings(100, 1000)
        @given(lines=st.lists(request_lines(), min_size=1, max_size=5),
               cuts=st.lists(st.integers(0, 4000), max_size=8))
        def channel(lines, cuts):
            TALLY.add("fuzz", "rpc channel")
            TALLY.add("fuzz", "rpc channel frames", len(lines))
            root = Path(tmp) / str(next(counter))
            asyncio.run(_run_rpc_channel(root, FakeRuntime(up=docker_up), lines, cuts))

        channel()


def test_every_hostile_line_gets_its_code_in_process(tmp_path):
    async def scenario():
        service = make_service(tmp_path, FakeRuntime())
        seeds = seed_sessions(service)
        lines = [fill_seeds(line, seeds) for line, _ in HOSTILE]
        process = FakeProcess([b"".join(x + b"\n" for x in lines)])
        await serve_rpc_channel(process, RpcDispatcher(service), "fuzz")  # type: ignore[arg-type]
        service.reports.close_all()
        responses = bytes(process.stdout.data).splitlines()
        assert len(responses) == len(HOSTILE)
        for (line, code), response in zip(HOSTILE, responses, strict=True):
            assert len(response) <= MAX_LINE_BYTES
            check_response(response, line, (code, None))
        TALLY.add("fuzz", "hostile lines in-process", len(HOSTILE))

    asyncio.run(scenario())


def test_an_attach_channel_refuses_every_bad_header_with_its_code():
    with tempfile.TemporaryDirectory(prefix="cvrel-attach-") as tmp:
        service = make_service(Path(tmp), FakeRuntime())
        seeds = seed_sessions(service)

        @fuzz_settings(150, 1500)
        @given(stream=attach_streams(), cuts=st.lists(st.integers(0, 5000), max_size=6))
        def attach(stream, cuts):
            TALLY.add("fuzz", "attach channel")
            stream = fill_seeds(stream, seeds)
            process = FakeProcess(chunked(stream, cuts))
            asyncio.run(serve_attach_channel(process, service, "fuzz"))  # type: ignore[arg-type]
            expected = expected_attach_error(stream, seeds)
            out = bytes(process.stdout.data)
            assert process.exits == 1
            if expected is None:
                assert out == b"" and process.exit_status == 0
                TALLY.add("fuzz attach outcomes", "closed silently (no header)")
                return
            lines = out.splitlines()
            assert len(lines) == 1 and process.exit_status == 1, out[:300]
            check_response(lines[0], stream, expected)
            TALLY.add("fuzz attach outcomes", expected[0])

        attach()
        assert assert_sound_root(service.paths).keys() == set(seeds)


# --- over SSH, against a real agent ------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_target(cluster):
    """The module's agent with two stopped sessions to aim at; yields (cluster, loop, connection, seed UUIDs)."""
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    conn = loop.run_until_complete(stack.enter_async_context(connect(cluster)))
    seeds = [loop.run_until_complete(rpc_ok(conn, "create", params))["uuid"]
             for params in ({"name": "fuzz seed 0"}, {"name": "fuzz seed 1", "port": -1, "dns_name": "fuzzseed1"})]
    yield cluster, loop, conn, seeds
    for sid in seeds:
        loop.run_until_complete(rpc_ok(conn, "delete", {"id": sid}))
    loop.run_until_complete(stack.aclose())
    loop.close()


async def _exchange(conn, subsystem: str, data: bytes, timeout: float = 60) -> tuple[bytes, int | None]:
    """Write ``data`` on a new channel, close our side, return everything the agent wrote and the exit status."""
    process = await conn.create_process(subsystem=subsystem, encoding=None)
    process.stdin.write(data)
    process.stdin.write_eof()
    out = await asyncio.wait_for(process.stdout.read(), timeout)
    await asyncio.wait_for(process.wait_closed(), timeout)
    return out, process.exit_status


@pytest.mark.docker
def test_fuzzed_requests_over_ssh_get_their_code_and_change_nothing(fuzz_target):
    cluster, loop, conn, seeds = fuzz_target
    before = snapshot(cluster.root)
    rng = random.Random()

    @fuzz_settings(60, 700)
    @given(lines=st.lists(request_lines(), min_size=1, max_size=3))
    def over_ssh(lines):
        lines = [fill_seeds(x, seeds) for x in lines]
        expected = [expected_error(x, seeds) for x in lines]
        assume(all(e is not None for e in expected))
        TALLY.add("fuzz over ssh", "rpc requests", len(lines))
        out, status = loop.run_until_complete(_exchange(conn, RPC_SUBSYSTEM, b"".join(x + b"\n" for x in lines)))
        responses = out.splitlines()
        assert status == 0 and len(responses) == len(lines), out[:500]
        for line, want, response in zip(lines, expected, responses, strict=True):
            check_response(response, line, want)
            TALLY.add("fuzz over ssh rpc codes", want[0])
        if rng.random() < 0.1:
            assert loop.run_until_complete(rpc_ok(conn, "ping"))["agent_id"] == cluster.agent_id

    over_ssh()
    out, status = loop.run_until_complete(_exchange(
        conn, RPC_SUBSYSTEM, b"".join(fill_seeds(x, seeds) + b"\n" for x, _ in HOSTILE)))
    responses = out.splitlines()
    assert status == 0 and len(responses) == len(HOSTILE)
    for (line, code), response in zip(HOSTILE, responses, strict=True):
        check_response(response, line, (code, None))
    TALLY.add("fuzz over ssh", "hostile lines", len(HOSTILE))
    assert cluster.process.poll() is None
    assert loop.run_until_complete(rpc_ok(conn, "ping"))["agent_id"] == cluster.agent_id
    listed = loop.run_until_complete(rpc_ok(conn, "list"))
    assert sorted(s["uuid"] for s in listed) == sorted(seeds)
    assert snapshot(cluster.root) == before
    assert " internal: " not in cluster.log_text() and "Traceback" not in cluster.log_text()


@pytest.mark.docker
def test_fuzzed_attach_headers_over_ssh_are_refused_with_their_code(fuzz_target):
    cluster, loop, conn, seeds = fuzz_target
    before = snapshot(cluster.root)

    @fuzz_settings(30, 300)
    @given(stream=attach_streams())
    def over_ssh(stream):
        stream = fill_seeds(stream, seeds)
        expected = expected_attach_error(stream, seeds)
        TALLY.add("fuzz over ssh", "attach headers")
        out, status = loop.run_until_complete(_exchange(conn, ATTACH_SUBSYSTEM, stream))
        if expected is None:
            assert out == b"" and status == 0
            TALLY.add("fuzz over ssh attach codes", "closed silently (no header line)")
            return
        lines = out.splitlines()
        assert len(lines) == 1 and status == 1, out[:300]
        check_response(lines[0], stream, expected)
        TALLY.add("fuzz over ssh attach codes", expected[0])

    over_ssh()
    assert cluster.process.poll() is None
    assert loop.run_until_complete(rpc_ok(conn, "ping"))["agent_id"] == cluster.agent_id
    assert snapshot(cluster.root) == before
    assert session_dirs(cluster.paths) == set(seeds)


def test_the_fuzzers_cover_every_op(tmp_path):
    """Every op the agent serves is in the fuzzers' reach (a new op cannot slip past them)."""
    dispatcher = RpcDispatcher(make_service(tmp_path, FakeRuntime()))
    assert set(dispatcher.handlers) | set(dispatcher.caller_handlers) == set(OPS)
    for op in OPS:
        assert fields_of(op) == ([p.name for p in OPS[op]] if OPS[op] is not None else sorted(VALID_SETTINGS))
        for name in fields_of(op):
            assert name in VALID or name in VALID_SETTINGS, (op, name)
    assert set(VALID_SETTINGS) == set(Settings().to_json())
    TALLY.note("fuzz", "ops covered", len(OPS))

