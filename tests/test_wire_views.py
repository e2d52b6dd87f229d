"""The agent's kept session views and the ``list`` line joined from their bytes (issue 17).

Every answer is checked against what the agent would send without the cache: each session's view
built afresh from its record, its container, its lock, its attach count and the credentials, then
encoded whole by ``encode_line``. Each input of a view gets a test that changes it and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from convocate.common.attachheader import AttachHeader
from convocate.common.errors import InternalError, ProtocolError
from convocate.common.framing import MAX_LINE_BYTES, EncodedObject, encode_line
from convocate.common.model import SessionMeta, SessionView
from convocate.common.ops.params import ListParams
from convocate.common.paths import Paths
from convocate.common.protocol import NO_ID, Response
from convocate_agent.admission import HostResources
from convocate_agent.locks import SessionLocks
from convocate_agent.rpc import RpcDispatcher, _render
from convocate_agent.runtime import LABEL_CLAUDE_CODE, ContainerEvent, ContainerState
from convocate_agent.service import AgentService
from convocate_agent.settings import Settings
from convocate_agent.store import SessionStore

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


class MemoryRuntime:
    """Docker as far as reads and an attach need it: the containers it is told about."""

    def __init__(self) -> None:
        self.running: dict[str, ContainerState] = {}

    async def containers(self) -> dict[str, ContainerState]:
        return dict(self.running)

    async def container(self, session_id: str) -> ContainerState | None:
        return self.running.get(session_id)

    async def open_attach(self, session_id: str, **kwargs) -> object:
        return object()

    async def remove(self, session_id: str) -> None:
        self.running.pop(session_id, None)

    def close(self) -> None:
        pass


class Events:
    def publish(self, event) -> None:
        pass


@pytest.fixture
def service(tmp_path):
    paths = Paths(tmp_path)
    paths.session_base.mkdir(parents=True)
    svc = AgentService(paths=paths, agent_id="abcd1234", settings=Settings(),
                       store=SessionStore(paths, os.getuid(), os.getgid()), locks=SessionLocks(paths),
                       runtime=MemoryRuntime(),  # type: ignore[arg-type]
                       host=HostResources(4, 8000), events=Events(), uid=os.getuid(), gid=os.getgid())
    yield svc
    svc.state.close()


async def call(service: AgentService, op: str, params: dict | None = None, request_id=7) -> bytes:
    """The line the agent sends for one request."""
    line = encode_line({"op": op, "params": params or {}, "id": request_id})[:-1]
    return _render(await RpcDispatcher(service).handle_frame(line, "test"))


async def ok(service: AgentService, op: str, params: dict | None = None):
    response = json.loads(await call(service, op, params))
    assert response["ok"], response
    return response["result"]


async def uncached_list_line(service: AgentService, request_id=7) -> bytes:
    """What ``list`` answers when every view is built afresh and the line encoded whole."""
    containers = await service.state.containers()
    locked = service.locks.locked_ids()
    metas = sorted(service.state.metas(), key=lambda m: m.last_accessed, reverse=True)
    views = [service._view(m, containers.get(m.uuid), m.uuid in locked).to_wire() for m in metas]
    return encode_line(Response.success(views, request_id).to_wire())


async def listed(service: AgentService) -> dict[str, dict]:
    """``list``'s answer by session, after checking it byte for byte against the uncached answer."""
    line = await call(service, "list")
    assert line == await uncached_list_line(service)
    return {s["uuid"]: s for s in json.loads(line)["result"]}


async def live(service: AgentService) -> None:
    """Follow the (pretend) event stream, as a served agent does: container state from memory."""
    service.state.stream_connected()
    while not service.state.live:
        await asyncio.sleep(0)


def event(action: str, sid: str, **attributes) -> ContainerEvent:
    return ContainerEvent(action, sid, "c0ffee", time.time_ns(), attributes)


async def two_sessions(service: AgentService) -> tuple[str, str]:
    await live(service)
    a = (await ok(service, "create", {"name": "alpha", "port": -1, "dns_name": "alpha"}))["uuid"]
    b = (await ok(service, "create", {"name": "beta"}))["uuid"]
    await listed(service)  # both views are kept from here on
    return a, b


def test_an_edit_changes_the_view_of_that_session_only(service):
    async def scenario():
        a, b = await two_sessions(service)
        before = await listed(service)
        await ok(service, "edit", {"id": a, "name": "alpha two", "cpus": 1.5})
        after = await listed(service)
        assert (after[a]["name"], after[a]["cpus"]) == ("alpha two", 1.5)
        assert after[b] == before[b]

    asyncio.run(scenario())


def test_start_stop_and_removal_events_change_running_state_and_claude_code(service):
    async def scenario():
        a, b = await two_sessions(service)
        service.state.on_container_event(event("start", a, **{LABEL_CLAUDE_CODE: "2.1.330"}))
        view = (await listed(service))[a]
        assert (view["running"], view["state"], view["claude_code"]) == (True, "R", "2.1.330")
        service.state.on_container_event(event("die", a))
        view = (await listed(service))[a]
        assert (view["running"], view["state"], view["claude_code"]) == (False, "-", "2.1.330")
        service.state.on_container_event(event("destroy", a))
        view = (await listed(service))[a]
        assert view["running"] is False and "claude_code" not in view

    asyncio.run(scenario())


def test_the_agents_own_stop_changes_the_view(service):
    async def scenario():
        a, _ = await two_sessions(service)
        service.state.note_container(a, ContainerState(a, "c0ffee", True, "running", "img", 0.5, 100))
        assert (await listed(service))[a]["running"] is True
        service.state.stopped(a)
        assert (await listed(service))[a]["running"] is False

    asyncio.run(scenario())


def test_a_lock_taken_and_released_changes_the_view(service):
    async def scenario():
        a, b = await two_sessions(service)
        with service.locks.hold(a, "restart"):
            view = (await listed(service))[a]
            assert (view["state"], view["running"]) == ("L", False)
            assert json.loads(await call(service, "get", {"id": a}))["result"]["state"] == "L"
        assert (await listed(service))[a]["state"] == "-"
        assert json.loads(await call(service, "get", {"id": a}))["result"]["state"] == "-"

    asyncio.run(scenario())


def test_an_attach_and_a_detach_change_the_count(service):
    async def scenario():
        a, _ = await two_sessions(service)
        service.state.on_container_event(event("start", a))
        await listed(service)
        await service.open_attach(AttachHeader(a))
        view = (await listed(service))[a]
        assert (view["attached_count"], view["attached"], view["state"]) == (1, True, "C")
        await service.open_attach(AttachHeader(a))
        assert (await listed(service))[a]["attached_count"] == 2
        service.close_attach(a)  # the count alone changes: no record write
        assert (await listed(service))[a]["attached_count"] == 1
        service.close_attach(a)
        view = (await listed(service))[a]
        assert (view["attached_count"], view["attached"], view["state"]) == (0, False, "R")

    asyncio.run(scenario())


def test_an_activity_report_changes_the_view(service):
    async def scenario():
        a, _ = await two_sessions(service)
        question = "Darf ich „rm -rf /tmp/x“ ausführen? 🚀 \"quoted\" \\ back\tslash"
        service.on_report(a, "hook", "Notification", {"message": question})
        view = (await listed(service))[a]
        assert (view["activity"], view["activity_detail"]) == ("waiting", question)
        service.on_report(a, "hook", "UserPromptSubmit", {"prompt": "go on"})
        assert (await listed(service))[a]["activity"] == "working"

    asyncio.run(scenario())


def test_a_record_written_through_the_store_changes_the_view(service):
    async def scenario():
        a, _ = await two_sessions(service)
        meta = service.state.meta(a)
        await asyncio.to_thread(service.store.save, meta.with_changes(image="convocate:9.9.9"))
        assert (await listed(service))[a]["image"] == "convocate:9.9.9"

    asyncio.run(scenario())


def test_a_credential_replaced_or_removed_changes_stale_and_missing(service):
    async def scenario():
        await live(service)
        first = await ok(service, "credential_set", {"name": "work", "kind": "api_key", "secret": "sk-first"})
        a = (await ok(service, "create", {"name": "keyed", "credential": "work"}))["uuid"]
        service.state.on_container_event(event("start", a))
        await service.state.save(service.state.meta(a).with_changes(credential_fingerprint=first["fingerprint"]))
        view = (await listed(service))[a]
        assert (view["credential_stale"], view["credential_missing"]) == (False, False)
        await ok(service, "credential_set", {"name": "work", "kind": "api_key", "secret": "sk-second"})
        view = (await listed(service))[a]
        assert (view["credential_stale"], view["credential_missing"]) == (True, False)
        await ok(service, "credential_delete", {"name": "work"})
        view = (await listed(service))[a]
        assert (view["credential_stale"], view["credential_missing"]) == (True, True)

    asyncio.run(scenario())


def test_a_deleted_session_leaves_the_list(service):
    async def scenario():
        a, b = await two_sessions(service)
        await ok(service, "delete", {"id": a})
        assert set(await listed(service)) == {b}

    asyncio.run(scenario())


def test_an_unchanged_session_is_served_from_the_same_kept_view(service):
    async def scenario():
        a, _ = await two_sessions(service)
        first = await service.list(ListParams())
        second = await service.list(ListParams())
        assert all(type(v) is EncodedObject for v in first)
        assert [id(v) for v in first] == [id(v) for v in second]

    asyncio.run(scenario())


# --- the joined line against the whole-line encoding ---------------------------------------------------
def full_view(name: str, detail: str = "") -> EncodedObject:
    meta = SessionMeta(uuid=UUID, name=name, created_at=1_700_000_000_123_456_789, last_accessed=1_700_000_001_000_000_000,
                       port=1001, protocol="udp", dns_name="exämple", cpus=0.25, memory_mb=256, image="convocate:0.1.0",
                       activity="limited", activity_detail=detail, activity_at=1_700_000_002_000_000_000,
                       activity_until=1_700_000_003_000_000_000, credential="work", credential_fingerprint="SHA256:x")
    view = SessionView(meta, running=True, attached_count=2, locked=True, claude_code="2.1.330",
                       credential_stale=True, credential_missing=False)
    return EncodedObject(view.to_wire())


def plain(response: Response) -> bytes:
    """The line of ``response`` with its views as plain dicts: the encoder sees them for the first time."""
    result = [dict(v) for v in response.result] if isinstance(response.result, list) else response.result
    return encode_line(Response(response.ok, result, response.error, response.code, response.id).to_wire())


@pytest.mark.parametrize("request_id", [NO_ID, 7, "req-ü", None, 1.5, "\u2028", ["a", {"b": 1}]])
def test_a_joined_line_is_the_whole_line_byte_for_byte(request_id):
    views = [full_view("Ünïcode 名前 🚀", "a\nb \"c\" \\ \u0000 \u2028 é"), full_view("plain"),
             EncodedObject({"uuid": UUID, "name": "minimal", "running": False})]
    response = Response.success(views, request_id)
    assert _render(response) == plain(response) == encode_line(response.to_wire())


def test_a_lone_surrogate_makes_the_whole_line_ascii_as_before():
    for response in (Response.success([full_view("x", "bad \ud800 half")], 3),
                     Response.success([full_view("x")], "id \udfff")):
        line = _render(response)
        assert line == plain(response) and line.isascii()


def test_results_that_are_not_kept_views_are_encoded_whole():
    for result in ([], [{"a": "é"}], [full_view("x"), {"a": 1}], {"k": [full_view("x")]}, "text", None):
        response = Response.success(result, 4)
        assert _render(response) == encode_line(response.to_wire())


def test_a_joined_line_over_the_limit_is_the_same_error():
    view = full_view("x" * 60, "d" * 800)
    response = Response.success([view] * (MAX_LINE_BYTES // len(view.encoded()) + 1), 9)
    with pytest.raises(ProtocolError) as too_long:
        plain(response)
    expected = encode_line(Response.failure(InternalError(f"result too large: {too_long.value}"), 9).to_wire())
    assert _render(response) == expected


def test_records_written_from_outside_are_listed_and_a_broken_one_is_logged_at_once(service, caplog):
    async def scenario():
        a, b = await two_sessions(service)
        paths = service.paths
        good, bad = "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "6fa459ea-ee8a-4ca4-894e-db77e160355e"
        for sid in (good, bad):
            paths.session_dir(sid).mkdir(parents=True)
        record = service.state.meta(a).with_changes(uuid=good, name="from outside").to_json()
        paths.session_record(good).write_text(json.dumps(record))
        paths.session_record(bad).write_text("{not json")
        with caplog.at_level("WARNING", logger="convocate_agent.service"):
            listed_now = await listed(service)
        assert set(listed_now) == {a, b, good} and listed_now[good]["name"] == "from outside"
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"skipping session {bad}"]

    asyncio.run(scenario())
