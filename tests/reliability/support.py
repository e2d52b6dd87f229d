"""Shared pieces of the reliability suite: run size, tallies, invariants, and an in-process agent.

The suite runs at one of two sizes, chosen by ``CONVOCATE_RELIABILITY``:
``fast`` (the default, part of every ``./build.sh test``) or ``full``
(``./build.sh test --full``). :func:`scaled` picks a figure for the current
size and :func:`fuzz_settings` builds the hypothesis settings of a fuzzer from
the profile of that size. Every test adds what it tried and what held to
:data:`TALLY`; the suite's ``conftest.py`` prints it at the end of the run, and
writes it as JSON to ``$CONVOCATE_RELIABILITY_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from convocate.common.errors import DockerError
from convocate.common.model import SessionMeta, is_uuid4, new_uuid
from convocate.common.paths import Paths
from convocate.common.timefmt import now_ns
from convocate_agent.admission import HostResources
from convocate_agent.locks import SessionLocks
from convocate_agent.runtime import LABEL_AGENT, LABEL_SESSION, ContainerState
from convocate_agent.service import AgentService
from convocate_agent.settings import Settings
from convocate_agent.store import SessionStore

MODE_ENV = "CONVOCATE_RELIABILITY"
REPORT_ENV = "CONVOCATE_RELIABILITY_REPORT"
FULL = os.environ.get(MODE_ENV, "fast").strip().lower() == "full"
MODE = "full" if FULL else "fast"

#: The error codes an agent may answer with (DESIGN §3). ``internal`` for anything a
#: client sent is itself a finding: the suite asserts it never happens. ``forbidden``: an operator claim
#: that does not hold (issue 19).
STABLE_CODES = frozenset({"bad_request", "not_found", "conflict", "locked", "admission_denied", "docker_error",
                          "internal", "forbidden"})
CLIENT_CODES = STABLE_CODES - {"internal"}

PROFILE = f"convocate-reliability-{MODE}"
settings.register_profile("convocate-reliability-fast", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("convocate-reliability-full", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def scaled(fast: Any, full: Any) -> Any:
    """``full`` in the full run, ``fast`` otherwise."""
    return full if FULL else fast


def fuzz_settings(fast: int, full: int) -> settings:
    """Hypothesis settings of one fuzzer: the size's profile with ``fast`` or ``full`` examples."""
    return settings(settings.get_profile(PROFILE), max_examples=scaled(fast, full))


class Tally:
    """What the suite tried and what held, by area (``fuzz``, ``kill9``, ...) and key.

    Counts add up across tests; ``note`` keeps one figure or text per key
    (a duration, a reconnect delay).
    """

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, area: str, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts.setdefault(area, Counter())[key] += n

    def note(self, area: str, key: str, value: Any) -> None:
        with self._lock:
            self.notes.setdefault(area, {})[key] = value

    def fuzz_cases(self) -> int:
        """Fuzz cases run in all: every in-process example and every request or header sent over SSH."""
        in_process = sum(n for key, n in self.counts.get("fuzz", {}).items() if key != "rpc channel frames")
        return in_process + sum(self.counts.get("fuzz over ssh", {}).values())

    def lines(self) -> list[str]:
        out = [f"fuzz cases in all: {self.fuzz_cases()}"] if "fuzz" in self.counts else []
        for area in sorted(set(self.counts) | set(self.notes)):
            counts = self.counts.get(area, Counter())
            parts = [f"{k}={v}" for k, v in sorted(counts.items())]
            parts += [f"{k}={v}" for k, v in sorted(self.notes.get(area, {}).items())]
            out.append(f"{area}: " + ", ".join(parts))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"mode": MODE, "fuzz_cases": self.fuzz_cases(), "counts": {a: dict(c) for a, c in self.counts.items()},
                "notes": self.notes}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


TALLY = Tally()


# --- invariants of an agent's root --------------------------------------------------------
def tree(path: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``path``: relative path → (kind, size, permission bits); symlinks are not followed."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = "l" if os.path.islink(full) else "d" if name in dirnames else "f"
            out[os.path.relpath(full, path)] = (kind, st.st_size if kind == "f" else 0, st.st_mode & 0o7777)
    return out


def session_dirs(paths: Paths) -> set[str]:
    """UUIDs of the directories under the session base (whether or not the agent has a record of them)."""
    try:
        return {e.name for e in os.scandir(paths.session_base) if is_uuid4(e.name) and e.is_dir()}
    except FileNotFoundError:
        return set()


def lock_files(paths: Paths) -> list[str]:
    """Names of the ``<uuid>.lock`` files in the lock directory (and beside the homes, where none belongs)."""
    try:
        return sorted(n for d in (paths.session_locks_dir, paths.session_base) if d.is_dir()
                      for n in os.listdir(d) if n.endswith(".lock"))
    except FileNotFoundError:
        return []


def trash_ids(paths: Paths, session_id: str | None = None) -> list[str]:
    """Trash entry names, optionally only those of ``session_id``."""
    try:
        names = os.listdir(paths.trash_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if session_id is None or n.startswith(session_id + "."))


def assert_sound_root(paths: Paths, *, staging_empty: bool = True, locks_gone: bool = True) -> dict[str, SessionMeta]:
    """Check what a crash or a fuzzed request must never leave behind under an agent's root.

    Args:
        paths: The agent's layout.
        staging_empty: Require ``.staging`` to be empty (true after an agent start or a finished op).
        locks_gone: Require that no lock file is left (true when no op is running).

    Returns:
        Every session, by UUID.

    Raises:
        AssertionError: a session directory without a valid record, a record without a home, a
            half-built home, or a left-over lock.
    """
    store = SessionStore(paths, os.getuid(), os.getgid())
    sessions = {}
    for sid in session_dirs(paths):
        assert paths.session_record(sid).is_file(), f"session dir {sid} has no record"
        sessions[sid] = store.load(sid)  # raises on an invalid record
    records = ({n[:-5] for n in os.listdir(paths.session_records_dir) if n.endswith(".json")}
               if paths.session_records_dir.is_dir() else set())
    assert records <= set(sessions), f"records without a home: {sorted(records - set(sessions))}"
    if staging_empty:
        left = sorted(os.listdir(paths.staging_dir)) if paths.staging_dir.is_dir() else []
        assert left == [], f"half-built homes left in {paths.staging_dir}: {left}"
    if locks_gone:
        assert lock_files(paths) == [], f"lock files left: {lock_files(paths)}"
    return sessions


def labelled_containers(client: Any, agent_id: str) -> dict[str, Any]:
    """Session UUID → container of every container labelled for ``agent_id`` (running or not)."""
    found = client.containers.list(all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"})
    return {c.labels[LABEL_SESSION]: c for c in found if LABEL_SESSION in c.labels}


_RECOVERED = re.compile(r"recovered: (.*)")


def recovery_report(log_text: str) -> dict[str, int]:
    """The counts of the last ``recovered: k=v, ...`` line of an agent log."""
    found = _RECOVERED.findall(log_text)
    if not found:
        return {}
    return {k: int(v) for k, v in (item.split("=") for item in found[-1].split(", "))}


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- an agent in-process, with a fake Docker ------------------------------------------------
class FakeRuntime:
    """The part of :class:`~convocate_agent.runtime.DockerRuntime` the agent's ops use, without dockerd.

    Containers live in a dict: ``start`` makes one running, ``stop`` stops it,
    ``remove`` forgets it. With ``up=False`` every call fails the way an
    unreachable dockerd does (:class:`DockerError`).

    Args:
        up: Whether the fake dockerd answers.
    """

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.states: dict[str, ContainerState] = {}

    def _check(self, what: str) -> None:
        if not self.up:
            raise DockerError(f"{what}: cannot reach dockerd: fake dockerd is down")

    async def containers(self) -> dict[str, ContainerState]:
        self._check("list containers")
        return dict(self.states)

    async def container(self, session_id: str) -> ContainerState | None:
        self._check("list containers")
        return self.states.get(session_id)

    async def start(self, spec: Any) -> ContainerState:
        self._check("create container")
        state = ContainerState(spec.session_id, "fake", True, "running", spec.image, spec.cpus, spec.memory_mb)
        self.states[spec.session_id] = state
        return state

    async def wait_ready(self, session_id: str, timeout: float = 15.0) -> float:
        self._check("exec")
        return 0.0

    async def stop(self, session_id: str, timeout: int = 10) -> bool:
        self._check("stop")
        state = self.states.get(session_id)
        if state is None or not state.running:
            return False
        self.states[session_id] = ContainerState(session_id, "fake", False, "exited", state.image, state.cpus,
                                                 state.memory_mb)
        return True

    async def remove(self, session_id: str) -> bool:
        self._check("remove container")
        return self.states.pop(session_id, None) is not None

    async def exec(self, session_id: str, cmd: list[str], **kw: Any) -> tuple[int, bytes]:
        self._check("exec")
        return (0, b"") if session_id in self.states and self.states[session_id].running else (-1, b"not running")

    async def tmux(self, session_id: str, *args: str) -> bytes:
        code, out = await self.exec(session_id, ["tmux", *args])
        if code != 0:
            raise DockerError(f"tmux {args[0]} in session {session_id} failed ({code})")
        return out

    async def detach_all(self, session_id: str) -> int:
        await self.tmux(session_id, "list-clients")
        return 0

    async def open_attach(self, session_id: str, **kw: Any) -> Any:
        raise DockerError("attach: the fake runtime has no terminals")

    async def resize_exec(self, exec_id: str, cols: int, rows: int) -> None:
        self._check("resize")

    async def detach_exec_clients(self, session_id: str, exec_ids: Any) -> int:
        return 0

    async def stale_attach_execs(self, session_id: str) -> list[str]:
        return []

    def close(self) -> None:
        pass


class ListSink:
    """Keeps the events an in-process agent publishes."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: Any) -> None:
        self.events.append(event)


def make_service(root: Path, runtime: FakeRuntime) -> AgentService:
    """A real :class:`AgentService` over a real store under ``root``, with ``runtime`` for Docker.

    The layout has a current image and a settings file location; the host has
    2 CPUs and 4 GiB, so admission control refuses now and then.
    """
    paths = Paths(root)
    paths.session_base.mkdir(parents=True, exist_ok=True)
    paths.agent_etc.mkdir(parents=True, exist_ok=True)
    paths.agent_state_dir.mkdir(parents=True, exist_ok=True)
    paths.current_image_file.write_text("convocate:fake\n")
    uid, gid = os.getuid(), os.getgid()
    return AgentService(paths=paths, agent_id="fuzz0001", settings=Settings(), store=SessionStore(paths, uid, gid),
                        locks=SessionLocks(paths), runtime=runtime,  # type: ignore[arg-type]
                        host=HostResources(2.0, 4096), events=ListSink(), uid=uid, gid=gid)


def seed_sessions(service: AgentService, count: int = 2) -> list[str]:
    """Write ``count`` stopped sessions straight into the store (no op, no event); returns their UUIDs."""
    made = []
    for i in range(count):
        now = now_ns()
        meta = SessionMeta(uuid=new_uuid(), name=f"seed {i}", created_at=now, last_accessed=now,
                           port=2000 + i if i else 0, dns_name=f"seed{i}", cpus=0.5, memory_mb=256)
        service.store.create(meta)
        made.append(meta.uuid)
    return made


class FakeReader:
    """A channel's stdin that hands out the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def read(self, n: int = -1) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


class FakeWriter:
    """A channel's stdout that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


class FakeProcess:
    """The part of ``asyncssh.SSHServerProcess`` the subsystem handlers use: stdin, stdout, exit.

    Args:
        chunks: What the client sends, in the pieces it arrives in.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        self.stdin = FakeReader(chunks)
        self.stdout = FakeWriter()
        self.exit_status: int | None = None
        self.exits = 0

    def exit(self, status: int) -> None:
        self.exit_status = status
        self.exits += 1
