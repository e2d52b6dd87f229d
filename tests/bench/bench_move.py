"""Move benchmark (issue 18 item 4): ``convocate move`` of a running session, and a drained rolling restart.

Every figure runs against real ``convocate-agent serve`` processes on loopback (tests/harness.py's
:class:`LocalCluster`), sharing this machine's dockerd, with the stand-in session image.

Move figures, two agents A and B in the arrangement of tests/test_move.py's ``pair`` (A's root is the
shell host, its registry holds both). A RUNNING session (0.2 CPUs, 200 MiB) whose home holds
random bytes in a few files (compression cannot cheat), 10 MB and ``CONVOCATE_BENCH_MOVE_MB``
(default 500) MB:

- ``move time``: wall time of :func:`convocate.move.move` (override, kill, export piped through
  this process into the import, SHA-256 per file on the target, restart there, the source's copy to
  its trash). 10 MB: median of 3 moves (A→B, B→A, A→B); the large home: one move.
- ``downtime``: from the first moment the session is not running on the source to the first moment
  it runs on the target, seen by a separate task (its own SSH connections) that asks both agents
  ``get`` every 50 ms; the figure is good to about one poll.
- Baseline of both: ``ssh S 'tar -C HOME -cf - .' | ssh S 'tar -C DST -xf -'`` of the same home,
  from A's session directory to a directory under B's root, through a throwaway OpenSSH sshd on a
  free loopback port (its own host key, pinned with ``StrictHostKeyChecking=yes``, and its own
  authorized_keys, in a temporary directory; started and killed by PID). That is TWO hops, source →
  this process → target, the path a move takes; a copy of a stopped session cannot take less, so
  it is the floor of the downtime too. The row ``tar | ssh, one loopback hop`` is the floor of any
  copy (``tar -C HOME -cf - . | ssh S 'tar -C DST -xf -'``), beside the two hops as its baseline.
  Each ssh runs on a connection opened before the clock starts (``ControlMaster``), as the shell's
  peerings with its agents are; the sshd sets ``SHLVL=1`` (``SetEnv``) so the remote bash does not
  read root's ``~/.bashrc`` (Debian's bash does for commands run by sshd, and this machine's runs
  ``pyenv init``: ~0.3 s a command). The sshd is ``$CONVOCATE_BENCH_SSHD`` (``./build.sh bench``
  unpacks openssh-server's .deb into ``.cache``), else ``/usr/sbin/sshd``; without one the
  baselines are left out. sshd refuses to start without its privilege separation directory
  ``/run/sshd``: made if missing, and removed again.

Rolling figures: three agents, one running session each (0.2 CPUs, 200 MiB). For each agent in
turn: :func:`convocate.fleet.drain` with the mover ``convocate drain`` uses
(:func:`convocate.fleet_cli._mover`), then the agent's process is stopped and started again on its
port (``LocalCluster.stop``/``start(same_port=True)``, in place of a package update), then
:func:`convocate.fleet.undrain`. A separate task lists all three agents every 50 ms. Reported:
sessions lost (UUIDs missing afterwards or held by two agents; must be 0), each session's total
time not running as p50 and max, the moves made, and the wall time of the roll. This is NOT
``convocate-host update --all --drain``, which installs packages on systemd hosts; it is the same
drain and undrain around a restart of the agent's process.

Run: ``.venv/bin/python -m tests.bench.bench_move`` (or ``./build.sh bench --only move``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from convocate import fleet, fleet_cli
from convocate import move as move_mod
from convocate.cluster import Cluster
from convocate.common.errors import ConvocateError
from tests.bench.common import Figure, median, percentile
from tests.harness import LocalCluster, remove_containers

#: Size of the large home in MB (10^6 bytes), from the environment.
MOVE_MB_ENV = "CONVOCATE_BENCH_MOVE_MB"
LARGE_MB_DEFAULT = 500
SMALL_MB = 10
#: Moves of the small home (there and back); the large one moves once.
SMALL_ROUNDS = 3
#: Files the random bytes are split into.
HOME_FILES = 4
CPUS, MEMORY_MB = 0.2, 200
POLL_S = 0.05
#: The sshd of the baselines: ./build.sh bench unpacks one from openssh-server's .deb (nothing installed),
#: with the one library of its own a machine without openssh-server lacks (libwrap0's) in ``SSHD_LIBS``.
SSHD = os.environ.get("CONVOCATE_BENCH_SSHD", "/usr/sbin/sshd")
SSHD_LIBS = os.environ.get("CONVOCATE_BENCH_SSHD_LIBS", "")
PRIVSEP_DIR = Path("/run/sshd")
TWO_HOPS = "ssh 'tar -c' | ssh 'tar -x', two hops (source -> shell -> target)"


# --- agents ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _agents(image: str, count: int) -> Iterator[list[LocalCluster]]:
    """``count`` running agents; the first's root is the shell host, its registry holds them all.

    Everything is removed afterwards (the agents stopped by PID, their containers, the roots), also on
    failure, when the tail of each agent's log is printed first.
    """
    base = Path(tempfile.mkdtemp(prefix="convocate-bench-move-"))
    agents = [LocalCluster(root=base / f"agent{i}", image=image) for i in range(count)]
    ok = False
    try:
        for agent in agents:
            agent.install()
            agent.start()
        for agent in agents[1:]:
            agent.register_with(agents[0])
        yield agents
        ok = True
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                agent.stop()
        for agent in agents:
            if not ok:
                print(f"bench move: {agent.root} agent.log ends:\n{agent.log_text()[-2000:]}", file=sys.stderr)
            with contextlib.suppress(Exception):
                remove_containers(agent.root)
        shutil.rmtree(base, ignore_errors=True)


async def _running(client, session_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the session runs on ``client``'s agent (False when it is not there or cannot be asked)."""
    try:
        return bool((await asyncio.wait_for(client.call("get", {"id": session_id}), 5))["running"])
    except (ConvocateError, TimeoutError):
        return False


async def _wait_running(client, session_id: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await _running(client, session_id):
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id} did not run on {client.agent_id} within {timeout} s")
        await asyncio.sleep(POLL_S)


def _fill(home: Path, megabytes: int) -> None:
    """Write ``megabytes`` MB of random bytes into ``home``, in :data:`HOME_FILES` files."""
    remaining = megabytes * 1_000_000
    per_file = -(-remaining // HOME_FILES)
    for i in range(HOME_FILES):
        size = min(per_file, remaining)
        with open(home / f"bench-{i}.bin", "wb") as f:
            while size:
                chunk = min(size, 8 << 20)
                f.write(os.urandom(chunk))
                size -= chunk
                remaining -= chunk


# --- the throwaway sshd ---------------------------------------------------------------------------


@dataclass
class Sshd:
    """An OpenSSH sshd on a free loopback port, its keys and configuration in ``directory``.

    Attributes:
        directory: Host key, client key, authorized_keys, known_hosts, sshd_config, its log, the control sockets.
        port: Its port on 127.0.0.1.
        process: The sshd started with ``-D -e -f``, stopped by its PID.
        masters: Peer name → the OpenSSH client holding that connection open (``ControlMaster``), stopped by PID.
        made_privsep: Whether :data:`PRIVSEP_DIR` was made for it (and is to be removed).
    """

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = None
    masters: dict[str, subprocess.Popen] = field(default_factory=dict)
    made_privsep: bool = False

    def ssh(self, command: str, peer: str | None = None) -> list[str]:
        """The OpenSSH client command line running ``command`` on it as root (pinned host key, no agent).

        Args:
            command: The remote command.
            peer: Run it over that peer's held connection (:meth:`hold`); None: a connection of its own.
        """
        control = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.directory / f'cm-{peer}'}"] if peer else []
        return [*self._client(), *control, "root@127.0.0.1", command]

    def _client(self) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.directory / "client"),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.directory / 'known_hosts'}"]

    def hold(self, peer: str, timeout: float = 10.0) -> None:
        """Open a connection for ``peer`` and keep it (``ControlMaster=yes``): the shell's SSH peerings with
        its agents are open before a move begins, so the baselines' are too.

        Raises:
            RuntimeError: it did not come up within ``timeout`` seconds.
        """
        path = self.directory / f"cm-{peer}"
        argv = [*self._client(), "-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={path}", "root@127.0.0.1"]
        self.masters[peer] = subprocess.Popen(argv, env=_ssh_env(), stdin=subprocess.DEVNULL,
                                              start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(self.ssh("true", peer), capture_output=True, env=_ssh_env()).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the held OpenSSH connection {peer} did not come up")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_sshd() -> Iterator[Sshd | None]:
    """An sshd for the baselines, or None when OpenSSH's server is not installed."""
    if not os.access(SSHD, os.X_OK):
        print(f"bench move: no {SSHD} (Debian: openssh-server): the tar | ssh baselines are left out",
              file=sys.stderr)
        yield None
        return
    sshd = Sshd(Path(tempfile.mkdtemp(prefix="convocate-bench-sshd-")))
    d = sshd.directory
    try:
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench {name}", "-f", str(d / name)],
                           check=True)
        shutil.copy(d / "client.pub", d / "authorized_keys")
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            sshd.made_privsep = True
        for _attempt in range(3):  # the free port may be taken between the probe and sshd's bind
            sshd.port = _free_port()
            (d / "sshd_config").write_text(
                f"Port {sshd.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
                f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                "PidFile none\nSetEnv SHLVL=1\n")
            host_key = " ".join((d / "host.pub").read_text().split()[:2])
            (d / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {host_key}\n")
            with open(d / "sshd.log", "ab") as log:
                sshd.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                env={**os.environ, "LD_LIBRARY_PATH": SSHD_LIBS} if SSHD_LIBS
                                                else None)
            if _sshd_answers(sshd):
                break
            _stop(sshd.process)
            sshd.process = None
        else:
            raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text(errors='replace')[-1000:]}")
        for peer in ("source", "target"):
            sshd.hold(peer)
        yield sshd
    finally:
        for master in sshd.masters.values():
            _stop(master)
        _stop(sshd.process)
        shutil.rmtree(d, ignore_errors=True)
        if sshd.made_privsep:
            with contextlib.suppress(OSError):
                PRIVSEP_DIR.rmdir()


def _sshd_answers(sshd: Sshd, timeout: float = 10.0) -> bool:
    assert sshd.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sshd.process.poll() is None:
        if subprocess.run(sshd.ssh("true"), capture_output=True, env=_ssh_env()).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen | None) -> None:
    """Stop a process this benchmark started, by its PID."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ssh_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env


def tar_copy(sshd: Sshd, home: Path, dst: Path, hops: int) -> float:
    """Copy ``home`` into ``dst`` with tar over ssh (``hops``: 1 or 2, see the module); returns ms.

    Each hop runs on a held connection (:meth:`Sshd.hold`), as a move runs on the shell's open peerings.

    ``dst`` is removed afterwards.

    Raises:
        RuntimeError: tar or ssh failed.
    """
    quoted = shlex.quote(str(dst))
    pack = ["tar", "-C", str(home), "-cf", "-", "."]
    if hops == 2:
        pack = sshd.ssh(shlex.join(pack), "source")
    env = _ssh_env()
    started = time.perf_counter()
    sender = subprocess.Popen(pack, stdout=subprocess.PIPE, env=env)
    receiver = subprocess.Popen(sshd.ssh(f"mkdir -p {quoted} && tar -C {quoted} -xf -", "target"), stdin=sender.stdout,
                                env=env)
    assert sender.stdout is not None
    sender.stdout.close()  # the receiver holds it now
    codes = (receiver.wait(), sender.wait())
    elapsed = (time.perf_counter() - started) * 1000
    shutil.rmtree(dst, ignore_errors=True)
    if codes != (0, 0):
        raise RuntimeError(f"tar | ssh ({hops} hops) failed: exit statuses {codes}")
    return elapsed


# --- a move, timed --------------------------------------------------------------------------------


@dataclass
class Outage:
    """When a session stopped on one agent and ran again on another (``time.perf_counter`` seconds)."""

    down_at: float | None = None
    up_at: float | None = None

    @property
    def ms(self) -> float:
        assert self.down_at is not None and self.up_at is not None
        return (self.up_at - self.down_at) * 1000


async def _watch_move(watch: Cluster, session_id: str, source: str, target: str, outage: Outage) -> None:
    """Ask both agents ``get`` every :data:`POLL_S` until the session runs on ``target`` after leaving ``source``."""
    src, dst = watch.client(source), watch.client(target)
    while True:
        tick = time.perf_counter()
        on_src, on_dst = await asyncio.gather(_running(src, session_id), _running(dst, session_id))
        now = time.perf_counter()
        if outage.down_at is None and not on_src:
            outage.down_at = now
        if outage.down_at is not None and on_dst:
            outage.up_at = now
            return
        await asyncio.sleep(max(0.0, POLL_S - (now - tick)))


async def timed_move(cluster: Cluster, watch: Cluster, session_id: str, source: str,
                     target: str) -> tuple[float, float]:
    """Move a running session with :func:`convocate.move.move`; returns (move time, downtime) in ms.

    Raises:
        TimeoutError: the session was not seen running on ``target`` within 60 s of the move's end.
    """
    outage = Outage()
    watcher = asyncio.create_task(_watch_move(watch, session_id, source, target, outage))
    await asyncio.sleep(2 * POLL_S)  # the watcher has seen it running at least once
    try:
        started = time.perf_counter()
        await move_mod.move(cluster, session_id, target, state_dir=cluster.paths.shell_state_dir,
                            progress_out=io.StringIO())
        elapsed = (time.perf_counter() - started) * 1000
        await asyncio.wait_for(watcher, 60)
    finally:
        watcher.cancel()
    return elapsed, outage.ms


async def _move_case(a: LocalCluster, b: LocalCluster, sshd: Sshd | None, megabytes: int,
                     rounds: int) -> list[Figure]:
    cluster, watch = Cluster(a.paths), Cluster(a.paths)
    try:
        made = await cluster.client(a.agent_id).call("create", {"name": f"bench-move-{megabytes}", "cpus": CPUS,
                                                                "memory_mb": MEMORY_MB, "start": True})
        sid = made["uuid"]
        await _wait_running(cluster.client(a.agent_id), sid)
        await asyncio.to_thread(_fill, a.paths.session_dir(sid), megabytes)
        moves, downs, ones, twos = [], [], [], []
        here, there = a, b
        for _ in range(rounds):
            if sshd is not None:
                home, dst = here.paths.session_dir(sid), there.root / "bench-tar-copy"
                twos.append(await asyncio.to_thread(tar_copy, sshd, home, dst, 2))
                ones.append(await asyncio.to_thread(tar_copy, sshd, home, dst, 1))
            took, down = await timed_move(cluster, watch, sid, here.agent_id, there.agent_id)
            moves.append(took)
            downs.append(down)
            here, there = there, here
        with contextlib.suppress(ConvocateError):
            await cluster.client(here.agent_id).call("kill", {"id": sid})
            await cluster.client(here.agent_id).call("delete", {"id": sid})
    finally:
        await cluster.close()
        await watch.close()
    label = f"{megabytes} MB home" + (f", median of {rounds}" if rounds > 1 else "")
    floor = median(twos) if twos else None
    figures = [Figure(f"move of a running session, {label}", "ms", median(moves), floor, TWO_HOPS),
               Figure(f"downtime of that move (not running -> running), {label}", "ms", median(downs), floor,
                      TWO_HOPS)]
    if ones:
        figures.append(Figure(f"tar | ssh, one loopback hop (the floor), {label}", "ms", median(ones), floor,
                              TWO_HOPS))
    return figures


def run_moves(image: str, large_mb: int) -> list[Figure]:
    """The move figures (two agents, one sshd)."""
    with _agents(image, 2) as (a, b), throwaway_sshd() as sshd:
        small = asyncio.run(_move_case(a, b, sshd, SMALL_MB, SMALL_ROUNDS))
        large = asyncio.run(_move_case(a, b, sshd, large_mb, 1))
    return small + large


# --- the rolling restart --------------------------------------------------------------------------


@dataclass
class Downtime:
    """Per session: since when it has not been running (None: it runs), and the sum so far (seconds)."""

    down_since: dict[str, float | None]
    total: dict[str, float]

    @classmethod
    def of(cls, session_ids: list[str]) -> Downtime:
        return cls({sid: None for sid in session_ids}, {sid: 0.0 for sid in session_ids})

    def note(self, now: float, running: set[str], unknown: set[str]) -> None:
        """One poll at ``now``: ``running`` ran somewhere; the state of those in ``unknown`` is kept."""
        for sid, since in self.down_since.items():
            if sid in unknown:
                continue
            if sid in running and since is not None:
                self.total[sid] += now - since
                self.down_since[sid] = None
            elif sid not in running and since is None:
                self.down_since[sid] = now

    def all_up(self) -> bool:
        return all(since is None for since in self.down_since.values())


async def _where(cluster: Cluster) -> dict[str, list[str]]:
    """Session UUID → the agents holding it (every agent must answer)."""
    held: dict[str, list[str]] = {}
    for agent_id, client in cluster.clients.items():
        for wire in await client.call("list"):
            held.setdefault(wire["uuid"], []).append(agent_id)
    return held


async def _watch_roll(watch: Cluster, downtime: Downtime, stop: asyncio.Event) -> None:
    """List every agent each :data:`POLL_S` and note who runs; an agent that does not answer (it restarts)
    leaves the sessions no other agent reports in their previous state."""
    clients = list(watch.clients.values())
    while True:
        tick = time.perf_counter()
        answers = await asyncio.gather(*(asyncio.wait_for(c.call("list"), 2) for c in clients),
                                       return_exceptions=True)
        now = time.perf_counter()
        running, seen, failed = set(), set(), False
        for answer in answers:
            if isinstance(answer, BaseException):
                failed = True
                continue
            for wire in answer:
                seen.add(wire["uuid"])
                if wire.get("running"):
                    running.add(wire["uuid"])
        downtime.note(now, running, set(downtime.down_since) - seen if failed else set())
        if stop.is_set() and downtime.all_up():
            return
        await asyncio.sleep(max(0.0, POLL_S - (now - tick)))


async def _roll(agents: list[LocalCluster]) -> list[Figure]:
    shell = agents[0]
    cluster, watch = Cluster(shell.paths), Cluster(shell.paths)
    watcher = None
    try:
        sids = []
        for i, agent in enumerate(agents):
            made = await cluster.client(agent.agent_id).call("create", {"name": f"bench-roll-{i}", "cpus": CPUS,
                                                                        "memory_mb": MEMORY_MB, "start": True})
            sids.append(made["uuid"])
        for agent, sid in zip(agents, sids, strict=True):
            await _wait_running(cluster.client(agent.agent_id), sid)
        before = await _where(cluster)
        downtime, stop = Downtime.of(sids), asyncio.Event()
        watcher = asyncio.create_task(_watch_roll(watch, downtime, stop))
        await asyncio.sleep(2 * POLL_S)
        mover, moves = fleet_cli._mover(cluster), 0
        started = time.perf_counter()
        for agent in agents:
            report = await fleet.drain(cluster.clients, agent.agent_id, mover)
            if report.stayed:
                raise RuntimeError(f"drain of {agent.agent_id} left sessions: {report.stayed}")
            moves += len(report.moved)
            await asyncio.to_thread(agent.stop)
            await asyncio.to_thread(agent.start, same_port=True)
            await fleet.undrain(cluster.client(agent.agent_id))
        wall = time.perf_counter() - started
        stop.set()
        await asyncio.wait_for(watcher, 60)
        after = await _where(cluster)
        lost = len(set(before) - set(after)) + sum(1 for held in after.values() if len(held) > 1)
        if lost:
            print(f"bench move: sessions lost or doubled in the roll: before {before}, after {after}", file=sys.stderr)
        for sid, held in after.items():
            with contextlib.suppress(ConvocateError):
                for agent_id in held:
                    await cluster.client(agent_id).call("kill", {"id": sid})
                    await cluster.client(agent_id).call("delete", {"id": sid})
    finally:
        if watcher is not None:
            watcher.cancel()
        await cluster.close()
        await watch.close()
    downs = [s * 1000 for s in downtime.total.values()]
    label = f"rolling drain/restart/undrain, {len(agents)} agents"
    return [Figure(f"{label}: sessions lost (missing or on two agents)", "sessions", lost),
            Figure(f"{label}: downtime per session p50 ({len(downs)} sessions)", "ms", percentile(downs, 0.5)),
            Figure(f"{label}: downtime per session max", "ms", max(downs)),
            Figure(f"{label}: moves made", "moves", moves),
            Figure(f"{label}: wall time of the roll", "s", wall)]


def run_roll(image: str) -> list[Figure]:
    """The rolling restart figures (three agents)."""
    with _agents(image, 3) as agents:
        return asyncio.run(_roll(agents))


def run(image: str = "convocate:0.1.0-standin") -> list[Figure]:
    """The move and rolling restart figures with their baselines (for tests/bench/run.py)."""
    large_mb = int(os.environ.get(MOVE_MB_ENV, LARGE_MB_DEFAULT))
    return run_moves(image, large_mb) + run_roll(image)


if __name__ == "__main__":
    from tests.bench.run import table
    print(table(run(os.environ.get("CONVOCATE_TEST_IMAGE", "convocate:0.1.0-standin"))))
    sys.exit(0)
