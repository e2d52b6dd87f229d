"""AgentService logic with a fake Docker runtime (pure logic only; the real one is tested in test_agent_rpc)."""

from __future__ import annotations

import asyncio
import os

import pytest

from convocate.common.errors import Conflict, Locked
from convocate.common.ops.params import CreateParams, DeleteParams, EditParams, ListParams
from convocate.common.paths import Paths
from convocate_agent.admission import HostResources
from convocate_agent.locks import SessionLocks
from convocate_agent.runtime import ContainerState
from convocate_agent.service import AgentService
from convocate_agent.settings import Settings
from convocate_agent.store import SessionStore


class CountingRuntime:
    """Records Docker queries; every session it is told about is running."""

    def __init__(self) -> None:
        self.running: dict[str, ContainerState] = {}
        self.calls: list[str] = []

    async def containers(self) -> dict[str, ContainerState]:
        self.calls.append("containers")
        return dict(self.running)

    async def container(self, session_id: str) -> ContainerState | None:
        self.calls.append("container")
        return self.running.get(session_id)


class Events:
    def __init__(self) -> None:
        self.events = []

    def publish(self, event) -> None:
        self.events.append(event)


@pytest.fixture
def service(tmp_path):
    paths = Paths(tmp_path)
    paths.session_base.mkdir(parents=True)
    runtime = CountingRuntime()
    svc = AgentService(paths=paths, agent_id="abcd1234", settings=Settings(), store=SessionStore(paths, os.getuid(),
                       os.getgid()), locks=SessionLocks(paths), runtime=runtime,  # type: ignore[arg-type]
                       host=HostResources(4, 8000), events=Events(), uid=os.getuid(), gid=os.getgid())
    return svc


def test_list_makes_one_docker_query_for_all_sessions(service):
    async def scenario():
        made = [await service.create(CreateParams(name=f"s{i}")) for i in range(20)]
        for m in made[:5]:
            service.runtime.running[m["uuid"]] = ContainerState(m["uuid"], "id", True, "running", "img", 0.5, 100)
        service.runtime.calls.clear()
        listed = await service.list(ListParams())
        return made, listed

    made, listed = asyncio.run(scenario())
    assert service.runtime.calls == ["containers"]
    assert len(listed) == 20 and sum(s["running"] for s in listed) == 5
    assert [s["last_accessed"] for s in listed] == sorted((s["last_accessed"] for s in listed), reverse=True)


def test_create_publishes_container_created(service):
    made = asyncio.run(service.create(CreateParams(name="evented")))
    [event] = service.events.events
    assert event.type == "container.created" and event.session_id == made["uuid"] and event.data["name"] == "evented"


def test_delete_refuses_a_locked_session(service):
    async def scenario():
        made = await service.create(CreateParams(name="busy"))
        with service.locks.hold(made["uuid"], "restart"):
            await service.delete(DeleteParams(id=made["uuid"]))

    with pytest.raises(Locked, match=r"locked by pid \d+ \(restart\)"):
        asyncio.run(scenario())


def test_auto_ports_skip_those_in_use(service):
    async def scenario():
        a = await service.create(CreateParams(name="a", port=-1))
        b = await service.create(CreateParams(name="b", port=-1))
        c = await service.create(CreateParams(name="c", port=-1, protocol="udp"))
        return a, b, c

    a, b, c = asyncio.run(scenario())
    assert a["port"] >= 1001 and b["port"] > a["port"] and c["port"] >= 1001


def test_edit_to_a_port_of_another_session_is_a_conflict(service):
    async def scenario():
        a = await service.create(CreateParams(name="a", port=-1))
        b = await service.create(CreateParams(name="b"))
        await service.edit(EditParams(id=b["uuid"], port=a["port"]))

    with pytest.raises(Conflict, match="is already used by session"):
        asyncio.run(scenario())


def test_session_environment_from_the_credential_or_the_file(service, tmp_path, monkeypatch):
    service.paths.agent_etc.mkdir(parents=True)
    service.paths.session_env_file.write_text("# secrets\nANTHROPIC_API_KEY=from-file\nexport OTHER='x y'\n")
    assert service._session_environment() == {"ANTHROPIC_API_KEY": "from-file", "OTHER": "x y"}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "session.env").write_text("ANTHROPIC_API_KEY=from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert service._session_environment() == {"ANTHROPIC_API_KEY": "from-credential"}


def test_an_unreadable_session_environment_starts_sessions_without_it(service, monkeypatch, caplog):
    # What systemd 252 does in a container when it cannot hand a credential over: a directory the
    # service user may not even list (observed: drwx------ root root, empty).
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/convocate-agent.service")
    monkeypatch.setattr(Path, "is_file", refuse)
    with caplog.at_level("WARNING"):
        assert service._session_environment() == {}
    assert "sessions start without it" in caplog.text and "Permission denied" in caplog.text


@pytest.mark.parametrize("module", ["ops_lifecycle", "ops_names", "ops_attach", "ops_activity", "ops_admin"])
def test_each_op_group_declares_exactly_the_shared_parts_it_uses(module):
    # The class-level annotations of an op group (a mixin of AgentService) are its list of what it
    # takes from the core and the other groups: every self.<name> it reads is either its own method or
    # annotated, and nothing annotated goes unused.
    import ast
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"convocate_agent.{module}"))
    [group] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name.endswith(("Ops", "Checks"))]
    own = {n.name for n in group.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    declared = {n.target.id for n in group.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    used = {n.attr for n in ast.walk(group)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"}
    assert used - own == declared, (sorted(used - own - declared), sorted(declared - used))
    assert issubclass(AgentService, getattr(importlib.import_module(f"convocate_agent.{module}"), group.name))
