"""Framing and envelope parsing (convocate.common.protocol)."""

import asyncio
import json

import pytest

from convocate.common.errors import BadRequest, NotFound, ProtocolError
from convocate.common.framing import (
    MAX_LINE_BYTES,
    LineDecoder,
    LineTooLong,
    decode_object,
    encode_line,
    read_frame_batches,
    read_frames,
)
from convocate.common.protocol import NO_ID, Event, Request, Response


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


class Reader:
    """A byte stream that hands out the given chunks, recording the sizes asked for."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.asked = []

    async def read(self, n=-1):
        self.asked.append(n)
        return self.chunks.pop(0) if self.chunks else b""


def test_read_frames_yields_an_unterminated_last_line():
    async def collect():
        return [f async for f in read_frames(Reader([b'{"op":"ping"}\n{"op":', b'"list"}']))]

    assert asyncio.run(collect()) == [b'{"op":"ping"}', b'{"op":"list"}']


def test_read_frame_batches_splits_a_large_read_into_batches_and_keeps_lines_whole():
    lines = [f'{{"n":{i}}}'.encode() for i in range(1000)]
    stream = b"\n".join(lines) + b"\n" + b'{"tail":1}'
    reader = Reader([stream[:7000], stream[7000:]])

    async def collect():
        return [b async for b in read_frame_batches(reader, read_size=1 << 20, batch_bytes=1024)]

    batches = asyncio.run(collect())
    assert [f for b in batches for f in b] == lines + [b'{"tail":1}']
    assert len(batches) > 10 and all(b for b in batches)  # about one batch per KiB, none empty
    assert set(reader.asked) == {1 << 20}


def test_read_frame_batches_replaces_an_oversized_line_that_spans_batches():
    reader = Reader([b"a\n" + b"x" * 5000 + b"\nb\n"])

    async def collect():
        return [f async for b in read_frame_batches(reader, LineDecoder(max_line=100), batch_bytes=512) for f in b]

    out = asyncio.run(collect())
    assert out[0] == b"a" and isinstance(out[1], LineTooLong) and out[2:] == [b"b"]


def test_encode_line_is_compact_utf8_with_newline():
    assert encode_line({"name": "café", "n": 1}) == '{"name":"café","n":1}\n'.encode()


def test_decode_object_refuses_a_byte_order_mark_and_non_json_constants():
    with pytest.raises(BadRequest, match="BOM"):
        decode_object('\ufeff{"op":"ping"}'.encode())
    with pytest.raises(BadRequest, match="NaN is not a JSON value"):
        decode_object(b'{"x":NaN}')


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
    from convocate.common.errors import NoPermission, UsageError

    assert Response.failure(NoPermission("cannot read")).to_wire()["code"] == "internal"
    assert Response.failure(UsageError("bad option")).to_wire()["code"] == "internal"


def test_a_config_error_travels_as_config_and_older_clients_read_it_as_internal():
    from convocate.common.errors import ConfigError, InternalError, error_from_code

    wire = Response.failure(ConfigError("no image")).to_wire()
    assert wire["code"] == "config"
    with pytest.raises(ConfigError, match="no image") as raised:
        Response.parse(encode_line(wire).strip()).raise_for_error()
    assert raised.value.exit_code == 78
    assert type(error_from_code("some_future_code", "x")) is InternalError  # what an older client does with it


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


def test_read_frames_holds_a_flooding_ssh_peer_to_the_channel_window(tmp_path):
    """A reader that awaits other work between reads keeps a fast writer to about a window ahead.

    asyncssh (2.24) reopens a paused channel's whole window whenever the reader takes a little;
    read_frames takes all the channel holds per read (READ_CHUNK > the window), which keeps the
    peer's lead bounded instead of letting it grow by a window per read (~625 MB here with
    64 KiB reads).
    """
    import asyncssh

    from convocate.common import keys
    from convocate.common.sshserver import SubsystemListener

    host_key, client_key = keys.generate_key(), keys.generate_key()
    auth = tmp_path / "authorized_keys"
    auth.write_text(keys.public_key_line(client_key) + "\n")
    sent = 0

    async def flood(process) -> None:
        nonlocal sent
        block = (b"x" * 1023 + b"\n") * 64
        try:
            while True:
                process.stdout.write(block)
                sent += len(block)
                await process.stdout.drain()
        except (OSError, asyncssh.Error):
            pass

    async def scenario() -> int:
        listener = SubsystemListener(listen="127.0.0.1:0", default_port=0, host_key=host_key, authorized_keys=auth,
                                     subsystems=frozenset({"flood"}), handler=lambda p, c: flood(p),
                                     server_version="flood")
        (_, port), = await listener.start()
        lead = 0
        try:
            async with asyncssh.connect("127.0.0.1", port, username="u", client_keys=[client_key],
                                        known_hosts=([host_key.convert_to_public()], [], []), agent_path=None,
                                        config=None) as conn:
                process = await conn.create_process(subsystem="flood", encoding=None)
                received = 0
                async for frame in read_frames(process.stdout):
                    received += len(frame) + 1
                    lead = max(lead, sent - received)
                    if received % (64 << 10) == 0:
                        await asyncio.sleep(0.002)  # a consumer slower than the writer
                    if received >= 48 << 20:
                        break
        finally:
            await listener.stop_accepting()
            await listener.close_connections()
        return lead

    assert asyncio.run(scenario()) < 16 << 20  # a window or two, not what the writer could send
