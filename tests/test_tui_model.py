"""The TUI's model (convocate.tui.model) and its New/Edit form values (convocate.tui.fields), pure."""

import pytest

from convocate.common import messages
from convocate.common.model import SessionMeta, SessionView
from convocate.common.ops import decode_params
from convocate.common.protocol import Event
from convocate.tui.fields import FieldError, SessionFields, session_params
from convocate.tui.model import REACHABLE, UNREACHABLE, ClusterModel

S1 = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"
S2 = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"


def view(sid, name, accessed, running=False):
    return SessionView(SessionMeta(sid, name, 1, accessed, cpus=0.5, memory_mb=512), running=running)


def test_rows_sort_by_last_access_across_agents_and_unreachable_agents_are_one_row():
    model = ClusterModel({"agent001": "a:222", "agent002": "b:222"})
    model.set_reach("agent001", REACHABLE)
    model.set_reach("agent002", REACHABLE)
    model.replace_sessions("agent001", [view(S1, "old", 10)])
    model.replace_sessions("agent002", [view(S2, "new", 20, running=True)])
    assert [r.session.meta.name for r in model.rows()] == ["new", "old"]
    assert model.rows()[0].render(1).split()[:4] == ["1", "R", "new", "agent002"]
    model.set_reach("agent002", UNREACHABLE, "agent agent002 (b:222): Connection refused")
    rows = model.rows()
    assert rows[0].session is None and rows[0].text == "unreachable: (b:222): Connection refused"
    assert [r.session.meta.name for r in rows[1:]] == ["old"]


def test_events_update_sessions_and_attach_counts():
    model = ClusterModel({"agent001": ""})
    model.set_reach("agent001", REACHABLE)
    created = view(S1, "made", 5, running=True).to_wire()
    assert model.apply(Event.now("container.created", "agent001", S1, created).to_wire()) is False
    model.apply(Event.now("session.attached", "agent001", S1, {"attached_count": 2}).to_wire())
    assert model.find("agent001", S1).state == "C"
    model.apply(Event.now("container.deleted", "agent001", S1).to_wire())
    assert model.find("agent001", S1) is None
    assert model.apply(Event.now("agent.started", "agent001", data={"capacity": {}}).to_wire()) is True


def test_capacity_summary_sums_reachable_agents():
    model = ClusterModel({"agent001": "", "agent002": ""})
    cap = {"reserved": {"cpus": 1.5, "memory_mb": 2048}, "limits": {"cpus": 3.6, "memory_mb": 9216}}
    model.set_reach("agent001", REACHABLE)
    model.set_reach("agent002", REACHABLE)
    model.set_capacity("agent001", cap)
    model.set_capacity("agent002", cap)
    assert model.capacity_summary() == "cpu 3/7.2  mem 4.0/18.0 GiB"


def test_a_draining_agent_has_a_row_saying_so_above_its_sessions():
    model = ClusterModel({"agent001": "a:222"})
    model.set_reach("agent001", REACHABLE)
    model.replace_sessions("agent001", [view(S1, "leaving", 10, running=True)])
    model.set_capacity("agent001", {"reserved": {}, "limits": {}, "draining": False})
    assert [r.session.meta.name for r in model.rows()] == ["leaving"]
    model.set_capacity("agent001", {"reserved": {}, "limits": {}, "draining": True})
    rows = model.rows()
    assert rows[0].session is None and rows[0].text == "draining: takes no new session (convocate undrain ends it)"
    assert [r.session.meta.name for r in rows[1:]] == ["leaving"]


# --- the New/Edit form's values (convocate.tui.fields) -------------------------------------------

@pytest.mark.parametrize(("fields", "field", "says"), [
    (SessionFields(name=""), "name", "name must be 1-64 characters"),
    (SessionFields(name="a/b"), "name", "name must be 1-64 characters"),
    (SessionFields(name="x" * 65), "name", "name must be 1-64 characters"),
    (SessionFields(name="ok", protocol="sctp"), "protocol", 'must be "tcp" or "udp"'),
    (SessionFields(name="ok", port="70000"), "port", messages.FORM_PORT_RULE),
    (SessionFields(name="ok", port="-1"), "port", messages.FORM_PORT_RULE),
    (SessionFields(name="ok", port="²"), "port", messages.FORM_PORT_RULE),
    (SessionFields(name="ok", dns_name="bad_name"), "dns_name", "must be a-z, 0-9 and '-'"),
    (SessionFields(name="ok", dns_name="a..b"), "dns_name", "empty label"),
    (SessionFields(name="ok", cpus="web"), "cpus", "'web' is not a number of cores (0.01..1024)"),
    (SessionFields(name="ok", cpus="nan"), "cpus", "is not a number of cores"),
    (SessionFields(name="ok", cpus="0"), "cpus", "out of range (0.01..1024.0 cores)"),
    (SessionFields(name="ok", cpus="2000"), "cpus", "out of range (0.01..1024.0 cores)"),
    (SessionFields(name="ok", memory_mb="1.5"), "memory_mb", "is not a whole number of MiB (16..16777216)"),
    (SessionFields(name="ok", memory_mb="8"), "memory_mb", "out of range (16..16777216 MiB)"),
    # Several wrong: the first in form order is named, so the cursor goes back to it.
    (SessionFields(name="", port="70000", cpus="web"), "name", "name must be"),
    (SessionFields(name="ok", port="70000", cpus="web"), "port", messages.FORM_PORT_RULE),
])
def test_a_bad_value_names_its_field_and_the_rule_it_breaks(fields, field, says):
    for op, session_id in (("create", None), ("edit", S1)):
        with pytest.raises(FieldError) as raised:
            session_params(fields, op, session_id)
        assert raised.value.field == field and says in str(raised.value)
        assert str(raised.value).startswith(f'field "{field}"')


def test_the_form_notation_becomes_what_the_agent_decodes():
    typed = SessionFields(name=" web app ", protocol="UDP", port="0", dns_name="App-Example", cpus="1.5",
                          memory_mb="300")
    create = session_params(typed, "create")
    assert create == {"name": "web app", "protocol": "udp", "port": -1, "dns_name": "app-example", "cpus": 1.5,
                      "memory_mb": 300}
    assert decode_params("create", create) == create  # exactly what the agent's decoding gives back
    # Blank: no port on create (left out), none on edit (0); CPUs and memory left out (default / unchanged).
    assert session_params(SessionFields(name="b"), "create") == {"name": "b", "protocol": "tcp", "dns_name": ""}
    assert session_params(SessionFields(name="b", protocol=""), "edit", S1) == {
        "id": S1, "name": "b", "port": 0, "dns_name": ""}


def test_an_unchanged_edit_form_sends_the_session_as_it_is():
    meta = SessionMeta(S1, "kept", 1, 2, port=8080, protocol="udp", dns_name="kept-example", cpus=0.25,
                       memory_mb=512)
    assert session_params(SessionFields.of(meta), "edit", S1) == {
        "id": S1, "name": "kept", "protocol": "udp", "port": 8080, "dns_name": "kept-example", "cpus": 0.25,
        "memory_mb": 512}


def test_a_session_on_an_old_credential_is_marked_and_its_detail_says_why():
    model = ClusterModel({"agent001": "a:222"})
    model.set_reach("agent001", REACHABLE)
    model.replace_sessions("agent001", [view(S1, "fresh", 10, running=True)])
    (row,) = model.rows()
    assert messages.CREDENTIAL_STALE_MARK not in row.render(1) and row.detail == ""
    stale = view(S1, "fresh", 10, running=True)
    stale = SessionView(stale.meta.with_changes(credential="team-b", credential_fingerprint="sha256:00112233445566aa"),
                        running=True, credential_stale=True)
    model.apply(Event.now("container.edited", "agent001", S1, stale.to_wire()).to_wire())
    (row,) = model.rows()
    assert row.render(1).endswith("  " + messages.CREDENTIAL_STALE_MARK)
    assert row.detail == messages.CREDENTIAL_STALE_DETAIL.format(name="team-b", running="sha256:00112233445566aa")
    missing = SessionView(stale.meta, running=False, credential_missing=True)
    model.apply(Event.now("container.stopped", "agent001", S1, missing.to_wire()).to_wire())
    (row,) = model.rows()
    assert row.detail == messages.CREDENTIAL_MISSING_DETAIL.format(name="team-b", agent="agent001")
