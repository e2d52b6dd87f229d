"""The TUI's model (convocate.tui.model), pure."""

from convocate.common.model import SessionMeta, SessionView
from convocate.common.protocol import Event
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
