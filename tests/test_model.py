"""Session metadata validation and states (convocate.common.model, timefmt)."""

import pytest

from convocate.common.errors import BadRequest
from convocate.common.model import (
    SessionMeta,
    SessionView,
    derive_state,
    new_uuid,
    normalize_dns_name,
    validate_dns_name,
    validate_name,
    validate_port,
    validate_protocol,
    validate_uuid,
)
from convocate.common.timefmt import format_rfc3339, parse_rfc3339


def test_new_uuid_is_a_valid_uuid4():
    assert validate_uuid(new_uuid())


@pytest.mark.parametrize("value", [
    "../../etc/passwd", "", "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a9", "7F9DF71A-DCAF-4E56-BB1D-6E1FE44E9A91",
    "7f9df71a-dcaf-1e56-bb1d-6e1fe44e9a91", "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91/..", 42, None,
    "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91\x00",
])
def test_validate_uuid_refuses_anything_but_canonical_uuid4(value):
    with pytest.raises(BadRequest):
        validate_uuid(value)


@pytest.mark.parametrize("name", ["a", "my session", "x_y-z.1", "A" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A" * 65, "semi;colon", "../x", "tab\there", " lead", "trail ", "é"])
def test_invalid_names(name):
    with pytest.raises(BadRequest, match="name must be"):
        validate_name(name)


def test_ports():
    assert [validate_port(p) for p in (0, -1, 1, 65535)] == [0, -1, 1, 65535]
    for bad in (-2, 65536, True, "80", 1.5):
        with pytest.raises(BadRequest):
            validate_port(bad)


def test_protocols():
    assert validate_protocol("") == "tcp" and validate_protocol("udp") == "udp"
    with pytest.raises(BadRequest):
        validate_protocol("sctp")


def test_dns_names_are_lowercased_and_checked():
    assert normalize_dns_name("Web-1.Example") == "web-1.example"
    assert normalize_dns_name("") == ""
    for bad, why in [("-a", "label"), ("a..b", "empty label"), ("a" * 64, "longer than 63"),
                     (".".join(["a" * 60] * 5), "longer than 253"), ("under_score", "label"), ("end.", "empty label")]:
        with pytest.raises(BadRequest, match=why):
            normalize_dns_name(bad)


def test_a_session_dns_name_is_one_label_or_inside_the_cluster_domain():
    assert validate_dns_name("Web-1") == "web-1"
    assert validate_dns_name("") == ""
    assert validate_dns_name("Web.Convocate.Internal", "convocate.internal") == "web.convocate.internal"
    assert validate_dns_name("a.b.convocate.internal", "convocate.internal") == "a.b.convocate.internal"
    for bad, domain, why in [("api.anthropic.com", None, "is one label"),
                             ("web.convocate.internal", None, "is one label"),
                             ("api.anthropic.com", "convocate.internal", "inside the cluster's domain"),
                             ("convocate.internal", "convocate.internal", "inside the cluster's domain"),
                             ("evilconvocate.internal", "convocate.internal", "inside the cluster's domain"),
                             ("x\n6.6.6.6 evil.example.org", "convocate.internal", "label"),
                             (["web"], "convocate.internal", "must be a string")]:
        with pytest.raises(BadRequest, match=why):
            validate_dns_name(bad, domain)


def test_rfc3339_round_trip_keeps_nanoseconds():
    ns = 1_790_000_000_123_456_789
    text = format_rfc3339(ns)
    assert text.endswith(".123456789Z") and parse_rfc3339(text) == ns
    assert format_rfc3339(1_790_000_000_000_000_000).endswith(":20Z")
    assert parse_rfc3339("2026-01-01T01:00:00+01:00") == parse_rfc3339("2026-01-01T00:00:00Z")
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")


def test_meta_from_original_agent_json_without_extensions():
    sid = new_uuid()
    meta = SessionMeta.from_json({"uuid": sid, "name": "old", "created_at": "2025-01-02T03:04:05.5Z",
                                  "last_accessed": "2025-01-02T03:04:06Z", "port": 8080, "protocol": "tcp",
                                  "dns_name": "Old"}, expected_uuid=sid)
    assert meta.port == 8080 and meta.dns_name == "old" and meta.cpus == 0.0 and meta.image == ""
    assert SessionMeta.from_json(meta.to_json()) == meta


def test_meta_refuses_a_file_naming_another_uuid():
    meta = SessionMeta(new_uuid(), "x", 1, 1)
    with pytest.raises(BadRequest, match="does not match"):
        SessionMeta.from_json(meta.to_json(), expected_uuid=new_uuid())


@pytest.mark.parametrize("running, attached, locked, state", [
    (False, 0, False, "-"), (False, 0, True, "L"), (True, 0, False, "R"), (True, 2, False, "C"), (True, 0, True, "R"),
])
def test_derive_state(running, attached, locked, state):
    assert derive_state(running=running, attached_count=attached, locked=locked) == state


def test_view_wire_omits_unset_port_and_dns_and_round_trips():
    meta = SessionMeta(new_uuid(), "x", 10, 20, cpus=0.5, memory_mb=512)
    wire = SessionView(meta, running=True, attached_count=1).to_wire()
    assert "port" not in wire and "dns_name" not in wire
    assert wire["state"] == "C" and wire["attached"] is True and wire["running"] is True
    back = SessionView.from_wire(wire, "agent123")
    assert back.meta == meta and back.state == "C" and back.agent_id == "agent123"
