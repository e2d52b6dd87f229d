"""Placement ranking (convocate.placement): pure logic, no agents."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convocate.common.capacity import HostResources, Reservation, check_admission
from convocate.common.errors import AdmissionDenied
from convocate.placement import AgentLoad, choose, format_ranking, not_judged, rank


def load(agent_id: str, cpus: float = 4, memory_mb: int = 8192, reserved: tuple[float, int] = (0, 0),
         sessions: int = 0, **kw) -> AgentLoad:
    return AgentLoad(agent_id, HostResources(cpus, memory_mb), Reservation(*reserved), sessions=sessions, **kw)


def test_the_agent_with_the_most_headroom_wins():
    ranking = rank([load("small", cpus=2, memory_mb=4096), load("big", cpus=16, memory_mb=65536),
                    load("mid", cpus=8, memory_mb=16384)], cpus=1, memory_mb=1024)
    assert [c.agent_id for c in ranking] == ["big", "mid", "small"]
    assert all(c.admits for c in ranking)
    assert ranking[0].reason.startswith("cpu reservations")  # 1 of 14.4 cores is the tighter share


def test_an_agent_the_admission_rule_refuses_is_listed_with_the_agents_own_words():
    ranking = rank([load("full", cpus=2, reserved=(1.5, 0)), load("free", cpus=2)], cpus=0.5, memory_mb=100)
    assert [c.agent_id for c in ranking] == ["free", "full"]
    full = ranking[1]
    assert not full.admits and "cpus" in full.reason and "1.8 cores" in full.reason  # 90% of 2
    with pytest.raises(AdmissionDenied) as e:
        check_admission(HostResources(2, 8192), Reservation(1.5, 0), Reservation(0.5, 100))
    assert full.reason == str(e.value)


def test_a_tie_in_whole_percent_goes_to_the_agent_with_fewer_sessions_then_to_the_id():
    ranking = rank([load("b", sessions=5), load("c", sessions=2), load("a", sessions=2),
                    load("d", reserved=(0.001, 0), sessions=0)], cpus=1, memory_mb=512)
    # d's 0.001 reserved cores cost it nothing in whole percent: it ties and has the fewest sessions
    assert [c.agent_id for c in ranking] == ["d", "a", "c", "b"]


def test_live_load_and_free_memory_count_beside_the_reservations():
    busy = load("busy", load1=3.8, memory_available_mb=7000)
    idle = load("idle", load1=0.1, memory_available_mb=7000)
    assert [c.agent_id for c in rank([busy, idle], cpus=0.5, memory_mb=512)] == ["idle", "busy"]
    short = load("short", load1=0.1, memory_available_mb=600)
    choice = choose(short, 0.5, 512)
    assert choice.admits and choice.reason.startswith("live memory")
    assert choice.headroom == pytest.approx((600 - 512) / 8192)


def test_each_agents_defaults_fill_what_the_operator_left_out():
    lean = load("lean", cpus=2, default_cpus=0.25, default_memory_mb=256)
    fat = load("fat", cpus=2, default_cpus=2.0, default_memory_mb=256)
    ranking = rank([fat, lean])
    assert ranking[0].agent_id == "lean" and ranking[0].request == Reservation(0.25, 256)
    assert not ranking[1].admits  # 2 cores asked of 1.8 allowed
    assert rank([fat, lean], cpus=0.1)[0].request == Reservation(0.1, 256)


def test_a_draining_or_unreachable_agent_is_never_chosen():
    ranking = rank([load("drained", cpus=64, draining=True), load("tiny", cpus=1)], cpus=0.1, memory_mb=64,
                   extra=[not_judged("gone", "connection refused")])
    assert [c.agent_id for c in ranking] == ["tiny", "drained", "gone"]
    assert ranking[1].reason == "draining" and not ranking[1].admits
    assert ranking[2].reason == "not judged: connection refused" and not ranking[2].admits
    lines = format_ranking(ranking)
    assert lines[0].startswith("1.") and "tiny" in lines[0]
    assert lines[1].startswith("-") and "draining" in lines[1]


def test_from_wire_reads_an_agents_capacity():
    capacity = {"host": {"cpus": 8.0, "memory_mb": 16000},
                "limits": {"cpus": 7.2, "memory_mb": 14400, "fraction": 0.9},
                "reserved": {"cpus": 1.5, "memory_mb": 2048, "sessions": 3},
                "usage": {"load1": 0.7, "load5": 0.5, "load15": 0.4, "memory_used_mb": 4000,
                          "memory_available_mb": 12000, "sessions_memory_mb": 1500, "outside_memory_mb": 2500},
                "draining": True, "defaults": {"cpus": 1.0, "memory_mb": 2048}}
    got = AgentLoad.from_wire("a1", capacity)
    assert got == AgentLoad("a1", HostResources(8.0, 16000), Reservation(1.5, 2048), outside_memory_mb=2500,
                            load1=0.7, memory_available_mb=12000, sessions=3, default_cpus=1.0,
                            default_memory_mb=2048, draining=True)
    # an agent from before the fleet: no draining, no defaults, no live usage
    bare = AgentLoad.from_wire("a2", {"host": {"cpus": 2, "memory_mb": 4096}, "reserved": {"cpus": 0, "memory_mb": 0}})
    assert bare.load1 is None and bare.memory_available_mb is None and not bare.draining
    assert (bare.default_cpus, bare.default_memory_mb, bare.sessions) == (0.5, 1024, 0)
    with pytest.raises(ValueError, match=r"agent a3: capacity field host\.cpus is 'many', not a number"):
        AgentLoad.from_wire("a3", {"host": {"cpus": "many", "memory_mb": 1}, "reserved": {}})


LOADS = st.builds(
    lambda i, cpus, mem, rc, rm, out, sessions: load(f"a{i}", cpus=cpus, memory_mb=mem,
                                                     reserved=(rc * cpus, int(rm * mem)), sessions=sessions,
                                                     outside_memory_mb=out),
    st.integers(0, 99), st.sampled_from([1.0, 2.0, 4.0, 16.0]), st.integers(512, 65536),
    st.floats(0, 1.2), st.floats(0, 1.2), st.integers(0, 4096), st.integers(0, 50))


@given(st.lists(LOADS, min_size=1, max_size=8, unique_by=lambda x: x.agent_id),
       st.floats(0.01, 8), st.integers(16, 16384))
def test_placement_admits_exactly_what_the_agents_rule_admits_and_puts_the_best_first(loads, cpus, memory_mb):
    ranking = rank(loads, cpus=cpus, memory_mb=memory_mb)
    assert sorted(c.agent_id for c in ranking) == sorted(x.agent_id for x in loads)
    for load_, choice in ((x, next(c for c in ranking if c.agent_id == x.agent_id)) for x in loads):
        try:
            check_admission(load_.host, load_.reserved, Reservation(cpus, memory_mb), load_.outside_memory_mb)
            admitted = True
        except AdmissionDenied:
            admitted = False
        assert choice.admits == admitted
    admitting = [c for c in ranking if c.admits]
    assert ranking[:len(admitting)] == admitting  # every admitting agent before every refusing one
    if admitting:
        best = max(math.floor(c.headroom * 100 + 1e-9) for c in admitting)
        assert math.floor(admitting[0].headroom * 100 + 1e-9) == best
