"""Framing and envelope parsing (convocate.common.protocol)."""

import asyncio
import json

import pytest

from convocate.common.errors import BadRequest, NotFound, ProtocolError
from convocate.common.protocol import (
    MAX_LINE_BYTES,
    NO_ID,
    Event,
    LineDecoder,
    LineTooLong,
    Request,
    Response,
    encode_line,
    read_frames,
)


def test_decoder_splits_lines_across_chunks():
    d = LineDecoder()
    assert d.feed(b'{"a":') == []
    assert d.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert d.feed(b":3}\n") == [b'{"c":3}']
    assert d.pending() == b""


def test_decoder_replaces_an_oversized_line_and_keeps_the_next():
    d = LineDecoder(max_line=10)
    out = d.feed(b"x" * 11 + b"\nok\n")
    assert isinstance(out[0], LineTooLong) and out[1:] == [b"ok"]


def test_decoder_discards_an_oversized_line_spread_over_chunks_in_bounded_memory():
    d = LineDecoder(max_line=100)
    out = d.feed(b"y" * 150)
    assert len(out) == 1 and isinstance(out[0], LineTooLong)
    for _ in range(100):
        assert d.feed(b"z" * 1000) == []
    assert d.pending() == b""  # nothing of the oversized line was kept
    assert d.feed(b"tail\nnext\n") == [b"next"]


def test_decoder_accepts_a_line_of_exactly_the_limit():
    d = LineDecoder(max_line=5)
    assert d.feed(b"12345\n") == [b"12345"]


def test_read_frames_yields_an_unterminated_last_line():
    class Reader:
        def __init__(self, chunks):
            self.chunks = list(chunks)

        async def read(self, n=-1):
            return self.chunks.pop(0) if self.chunks else b""

    async def collect():
        return [f async for f in read_frames(Reader([b'{"op":"ping"}\n{"op":', b'"list"}']))]

    assert asyncio.run(collect()) == [b'{"op":"ping"}', b'{"op":"list"}']


def test_encode_line_is_compact_utf8_with_newline():
    assert encode_line({"name": "café", "n": 1}) == '{"name":"café","n":1}\n'.encode()


def test_encode_line_refuses_more_than_the_limit():
    with pytest.raises(ProtocolError):
        encode_line({"x": "a" * MAX_LINE_BYTES})


def test_request_parse_defaults_params_and_keeps_id():
    r = Request.parse(b'{"op":"list","id":null}')
    assert r.op == "list" and r.params == {} and r.has_id and r.id is None
    assert not Request.parse(b'{"op":"ping","params":{}}').has_id


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "must be a JSON object, got array"),
        (b'{"params":{}}', 'missing required field "op"'),
        (b'{"op":5}', 'field "op" must be a string, got integer'),
        (b'{"op":"get","params":[1]}', 'field "params" must be an object'),
        (b'{"op":"ping","extra":1}', 'unknown field "extra"'),
        (b'{"op":"ping","params":{"x":NaN}}', "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[" * 100000, "nests too deeply"),
    ],
)
def test_request_parse_rejects_malformed_requests(line, fragment):
    with pytest.raises(BadRequest) as e:
        Request.parse(line)
    assert e.value.message.startswith("malformed request: ")
    assert fragment in e.value.message


def test_salvage_id_of_a_bad_request():
    assert Request.salvage_id(b'{"op":7,"id":"x"}') == "x"
    assert Request.salvage_id(b"garbage") is NO_ID


def test_response_wire_omits_absent_fields():
    assert Response.success().to_wire() == {"ok": True}
    assert Response.success([], 3).to_wire() == {"ok": True, "result": [], "id": 3}
    assert Response.failure(NotFound('session "x" does not exist')).to_wire() == {
        "ok": False, "error": 'session "x" does not exist', "code": "not_found"}


def test_response_failure_maps_local_codes_to_internal():
    from convocate.common.errors import ConfigError

    assert Response.failure(ConfigError("no image")).to_wire()["code"] == "internal"


def test_response_round_trip_raises_the_agents_error():
    line = encode_line(Response.failure(NotFound("gone")).to_wire()).strip()
    with pytest.raises(NotFound, match="gone"):
        Response.parse(line).raise_for_error()
    assert Response.parse(b'{"ok":true,"result":{"a":1}}').raise_for_error() == {"a": 1}


def test_response_without_code_from_an_original_agent_is_internal():
    from convocate.common.errors import InternalError

    with pytest.raises(InternalError):
        Response.parse(b'{"ok":false,"error":"boom"}').raise_for_error()


def test_event_round_trip():
    e = Event.now("container.started", "abcd1234", "s", {"k": 1})
    back = Event.parse(json.dumps(e.to_wire()).encode())
    assert back == e
    assert "session_id" not in Event("agent.heartbeat", "abcd1234", timestamp="t").to_wire()
