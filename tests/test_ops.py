"""Strict parameter decoding for every op (convocate.common.ops)."""

import pytest

from convocate.common.errors import BadRequest
from convocate.common.ops import OPS, decode_params

SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"


def test_every_op_of_the_design_is_declared():
    assert set(OPS) == {"ping", "list", "get", "create", "edit", "clone", "delete", "kill", "background", "override",
                        "restart", "settings-get", "settings-set", "capture", "send", "capacity", "logs", "trash",
                        "restore", "credential_set", "credential_list", "credential_delete",
                        "recording_list", "recording_read", "recording_grep",
                        "operator_challenge", "operator_identify", "operator_whoami", "audit_read"}


def test_create_normalises_values():
    out = decode_params("create", {"name": "n", "dns_name": "A-B", "protocol": "", "port": -1, "start": True})
    assert out == {"name": "n", "dns_name": "a-b", "protocol": "tcp", "port": -1, "start": True}


@pytest.mark.parametrize("op, params, fragment", [
    ("nope", {}, 'unknown op: "nope"'),
    ("ping", {"x": 1}, 'decode params: unknown field "x"'),
    ("get", {}, 'decode params: missing required field "id"'),
    ("get", {"id": 5}, 'decode params: field "id" must be a string, got integer'),
    ("get", {"id": "../etc"}, "is not a UUIDv4"),
    ("create", {"name": "x", "port": "80"}, 'field "port" must be an integer, got string'),
    ("create", {"name": "x", "port": 70000}, "out of range"),
    ("create", {"name": "x", "start": 1}, 'field "start" must be a boolean'),
    ("create", {"name": "x", "cpus": 0}, 'field "cpus"'),
    ("create", {"name": "x", "memory_mb": 1}, 'field "memory_mb"'),
    ("create", {"name": "x", "dns_name": "bad_name"}, "not a valid DNS name"),
    ("create", {"name": "x", "dns_name": "api.anthropic.com"}, "is one label"),
    ("edit", {"id": SID, "dns_name": "x\n6.6.6.6 evil.example.org"}, "not a valid DNS name"),
    ("clone", {"source_id": SID}, 'missing required field "name"'),
    ("send", {"id": SID, "text": "a\x00b"}, "NUL"),
    ("send", {"id": SID, "text": "a" * 70000}, "longer than"),
    ("capture", {"id": SID, "lines": -1}, 'field "lines"'),
    ("edit", {"id": SID, "name": True}, 'field "name" must be a string, got boolean'),
    ("credential_set", {"name": "Default", "kind": "api_key", "secret": "k"}, "a credential name is"),
    ("credential_set", {"name": "../x", "kind": "api_key", "secret": "k"}, "a credential name is"),
    ("credential_set", {"name": "a", "kind": "password", "secret": "k"}, 'field "kind"'),
    ("credential_set", {"name": "a", "kind": "api_key"}, 'missing required field "secret"'),
    ("credential_set", {"name": "a", "kind": "api_key", "secret": 5}, 'field "secret" must be a string'),
    ("credential_delete", {}, 'missing required field "name"'),
    ("audit_read", {"session": "x"}, 'field "session"'),
    ("audit_read", {"since": "yesterday"}, "not an RFC 3339 timestamp"),
    ("audit_read", {"max": "5"}, 'field "max" must be an integer'),
    ("create", {"name": "x", "credential": "Bad Name"}, 'field "credential"'),
    ("edit", {"id": SID, "credential": "a" * 33}, 'field "credential"'),
])
def test_bad_params_name_the_field(op, params, fragment):
    with pytest.raises(BadRequest) as e:
        decode_params(op, params)
    assert fragment in e.value.message
    assert e.value.code == "bad_request"


def test_settings_set_passes_an_open_object_through():
    assert decode_params("settings-set", {"default_cpus": 1}) == {"default_cpus": 1}


@pytest.mark.parametrize("secret", ["sk-ant-with space", "line\nbreak", "", "x" * 4097, "caf\u00e9"])
def test_a_bad_secret_is_refused_without_being_quoted(secret):
    with pytest.raises(BadRequest) as refused:
        decode_params("credential_set", {"name": "default", "kind": "api_key", "secret": secret})
    assert refused.value.message.startswith('decode params: field "secret"')
    assert not secret or secret not in refused.value.message


def test_credential_params_decode():
    assert decode_params("credential_set", {"name": "team-b", "kind": "oauth_token", "secret": "sk-ant-oat01-x"}) == {
        "name": "team-b", "kind": "oauth_token", "secret": "sk-ant-oat01-x"}
    assert decode_params("create", {"name": "n", "credential": ""}) == {"name": "n", "credential": ""}
    assert decode_params("edit", {"id": SID, "credential": "team-b"}) == {"id": SID, "credential": "team-b"}


def test_the_op_reference_in_docs_is_the_one_the_definitions_render():
    from pathlib import Path

    from convocate.common.ops import OP_DOCS, reference_markdown

    assert list(OP_DOCS) == list(OPS)
    assert all(p.doc for spec in OPS.values() if spec for p in spec), "a parameter without its doc"
    current = (Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text(encoding="utf-8")
    assert current == reference_markdown(), "docs/ops.md is stale: python -m convocate.common.ops > docs/ops.md"


# --- the typed face: one params class and one result type per op (issue 16) --------------------------------
def test_every_op_has_its_params_class_and_the_class_decodes_what_it_sends():
    from convocate.common.ops import PARAMS
    from convocate.common.ops.params import CreateParams, EditParams, SettingsSetParams

    assert list(PARAMS) == list(OPS)
    assert all(cls.OP == name for name, cls in PARAMS.items())
    sent = CreateParams(name="n", dns_name="A-B", protocol="", start=True).to_wire()
    assert sent == {"name": "n", "protocol": "", "dns_name": "A-B", "start": True}  # absent fields stay absent
    assert CreateParams.decode(sent) == CreateParams(name="n", protocol="tcp", dns_name="a-b", start=True)
    assert EditParams(id=SID).to_wire() == {"id": SID}
    assert SettingsSetParams(values={"draining": True}).to_wire() == {"draining": True}
    with pytest.raises(BadRequest, match='decode params: unknown field "x"'):
        EditParams.decode({"id": SID, "x": 1})


def test_a_credential_secret_stays_out_of_the_params_repr():
    from convocate.common.ops.params import CredentialSetParams

    params = CredentialSetParams(name="default", kind="api_key", secret="sk-ant-secret-value")
    assert "sk-ant-secret-value" not in repr(params)
    assert params.to_wire()["secret"] == "sk-ant-secret-value"


def test_results_read_into_their_types_and_a_wrong_shape_is_a_protocol_error():
    from convocate.common.errors import ProtocolError
    from convocate.common.ops.params import DeleteParams, ListParams, PingParams, SendParams

    ping = PingParams().read_result({"agent_id": "a1b2c3d4", "version": "0.0.5", "server_time": "t"}, "a1b2c3d4")
    assert (ping.protocol, ping.capabilities) == (1, [])  # the Go original's ping: protocol 1
    deleted = DeleteParams(id=SID).read_result({"uuid": SID, "trash": "x", "newer_field": 1}, "a1")
    assert deleted.trash == "x" and deleted.received["newer_field"] == 1  # an unknown field is kept, not read
    views = ListParams().read_result([{"uuid": SID, "name": "n", "created_at": "2026-12-01T10:00:00Z"}], "a1")
    assert views[0].meta.name == "n" and views[0].agent_id == "a1"
    with pytest.raises(ProtocolError, match='send answered a result of another shape: Sent: field "sent" must be int'):
        SendParams(id=SID, text="x").read_result({"uuid": SID, "sent": "1", "enter": False}, "a1")
    with pytest.raises(ProtocolError, match='missing field "uuid"'):
        DeleteParams(id=SID).read_result({}, "a1")


def test_a_grep_window_ending_before_it_starts_is_refused_when_decoded():
    with pytest.raises(BadRequest) as e:
        decode_params("recording_grep", {"pattern": "x", "since": "2026-12-02T00:00:00Z",
                                         "until": "2026-12-01T00:00:00.5Z"})
    assert e.value.message == ('decode params: field "until": 2026-12-01T00:00:00.5Z is before "since" '
                               '2026-12-02T00:00:00Z')
    assert decode_params("recording_grep", {"pattern": "x", "since": "2026-12-01T00:00:00Z",
                                            "until": "2026-12-01T00:00:00Z"})["until"] == "2026-12-01T00:00:00Z"


@pytest.mark.parametrize("op, field", [("audit_read", "until"), ("audit_read", "since"), ("logs", "since"),
                                       ("recording_grep", "until")])
def test_a_bad_time_names_its_own_field(op, field):
    params = {"id": SID} if op == "logs" else {"pattern": "x"} if op == "recording_grep" else {}
    with pytest.raises(BadRequest) as e:
        decode_params(op, {**params, field: "yesterday"})
    assert e.value.message.startswith(f'decode params: field "{field}"'), e.value.message
