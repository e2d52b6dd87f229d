"""convocate.fleet's decisions with canned agent answers (the e2e runs are in tests/test_fleet_e2e.py)."""

from __future__ import annotations

import json

import pytest

from convocate.common.errors import AdmissionDenied, Conflict, Unreachable
from convocate.common.ops.params import CreateParams
from convocate.fleet import create_placed, drain, ranking, ranking_json

UUIDS = ["7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91", "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"]


def session(uuid: str, name: str, running: bool = False, cpus: float = 0.0, memory_mb: int = 0) -> dict:
    """A session metadata object as an agent answers it."""
    return {"uuid": uuid, "name": name, "created_at": "2026-12-01T10:00:00Z", "last_accessed": "2026-12-01T10:00:00Z",
            "running": running, "cpus": cpus, "memory_mb": memory_mb}


class Canned:
    """An agent client answering capacity/settings-get/list from figures, recording every call."""

    def __init__(self, agent_id: str, cpus: float, reserved: float = 0.0, create_error: Exception | None = None,
                 sessions: list[dict] | None = None, error: Exception | None = None) -> None:
        self.agent_id, self.cpus, self.reserved = agent_id, cpus, reserved
        self.create_error, self.error = create_error, error
        self.sessions = sessions or []
        self.calls: list[tuple[str, dict]] = []

    async def call(self, op: str, params: dict | None = None):
        self.calls.append((op, params or {}))
        if self.error is not None:
            raise self.error
        if op == "capacity":
            return {"host": {"cpus": self.cpus, "memory_mb": 8192}, "reserved": {"cpus": self.reserved, "memory_mb": 0},
                    "usage": {"load1": 0.0, "memory_available_mb": 8000, "outside_memory_mb": 0},
                    "defaults": {"cpus": 0.5, "memory_mb": 512}}
        if op == "list":
            return self.sessions
        if op == "create":
            if self.create_error is not None:
                raise self.create_error
            return session(UUIDS[0], params["name"])
        if op == "settings-set":
            return params
        raise AssertionError(op)

    async def request(self, params):
        return params.read_result(await self.call(params.OP, params.to_wire()), self.agent_id)


async def test_the_session_goes_to_the_best_agent_and_to_the_next_when_it_refuses_late():
    small, big = Canned("small", 2), Canned("big", 8, create_error=AdmissionDenied("agent big is draining"))
    skipped = []
    client, result = await create_placed({"small": small, "big": big}, CreateParams(name="s1", cpus=1.0),
                                         on_skip=lambda agent, e: skipped.append((agent, str(e))))
    assert client is small and result.meta.name == "s1"
    assert skipped == [("big", "agent big is draining")]
    assert ("create", {"name": "s1", "cpus": 1.0}) in big.calls


async def test_no_agent_admitting_names_every_agents_reason():
    full = Canned("full", 2, reserved=1.8)
    gone = Canned("gone", 4, error=Unreachable("agent gone (127.0.0.1:1): Connection refused"))
    with pytest.raises(AdmissionDenied) as e:
        await create_placed({"full": full, "gone": gone}, CreateParams(name="s1", cpus=0.5))
    text = str(e.value)
    assert text.startswith("admission denied: no agent takes the session (full: admission denied: cpus asked 0.5")
    assert "gone: not judged: agent gone (127.0.0.1:1): Connection refused" in text
    assert not any(op == "create" for op, _ in full.calls)


async def test_another_refusal_ends_the_attempt_as_it_is():
    a = Canned("a", 4, create_error=Conflict('port 2000/tcp is used by session "x"'))
    b = Canned("b", 2)
    with pytest.raises(Conflict):
        await create_placed({"a": a, "b": b}, CreateParams(name="s1", port=2000))
    assert not any(op == "create" for op, _ in b.calls)


async def test_drain_marks_the_agent_and_moves_running_sessions_first_to_the_best_other_agent():
    sessions = [session(UUIDS[0], "idle-one", running=False, cpus=0.5, memory_mb=256),
                session(UUIDS[1], "busy-one", running=True, cpus=3.0, memory_mb=256)]
    source = Canned("src", 4, sessions=sessions)
    small, big = Canned("small", 2), Canned("big", 8)
    moves, lines = [], []

    async def mover(uuid: str, agent: str) -> None:
        moves.append((uuid, agent))

    report = await drain({"src": source, "small": small, "big": big}, "src", mover, lines.append)
    assert source.calls[0] == ("settings-set", {"draining": True})
    assert moves == [(UUIDS[1], "big"), (UUIDS[0], "big")]
    assert report.moved == [("busy-one", "big"), ("idle-one", "big")] and report.stayed == []
    assert lines[0] == "agent src is draining: it takes no new session" and lines[1] == "moved busy-one to big"


async def test_a_session_no_other_agent_admits_stays_with_the_reason():
    sessions = [session(UUIDS[0], "huge", running=True, cpus=6.0, memory_mb=256)]
    report = await drain({"src": Canned("src", 8, sessions=sessions), "small": Canned("small", 2)}, "src",
                         mover=lambda *_: pytest.fail("nothing may move"))
    assert report.moved == []
    assert report.stayed[0][0] == "huge" and "small: admission denied: cpus asked 6 cores" in report.stayed[0][1]


async def test_place_json_lists_every_agent_best_first():
    choices = await ranking([Canned("small", 2), Canned("big", 8)], 1.0, None)
    assert [(c["agent_id"], c["admits"], c["cpus"], c["memory_mb"]) for c in json.loads(ranking_json(choices))] == [
        ("big", True, 1.0, 512), ("small", True, 1.0, 512)]
