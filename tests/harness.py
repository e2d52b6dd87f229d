"""A local convocate cluster under one directory: used by the tests and by ``./build.sh demo``.

:class:`LocalCluster` lays out a relocated root (``CONVOCATE_ROOT``) holding
an agent host and a shell host on this machine, the way ``convocate-host``
provisions real ones: it runs ``convocate-agent install``, mints the shell's
ed25519 key and authorizes it on the agent, registers the agent in the shell's
registry with its pinned host key, and starts ``convocate-agent serve`` on
loopback as a real subprocess. With ``status=True`` it also creates the
shell's status host key, mints the agent's ``agent_to_shell`` key, pins
both ways, records that key in the agent's registry entry, and runs ``convocate status-serve`` before the agent.

``python -m tests.harness demo-up STATE_DIR`` brings the demo cluster up (or
reuses it) and prints the environment for the ``convocate`` CLI;
``demo-down STATE_DIR`` stops the agent and removes the demo's containers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from convocate.common import keys
from convocate.common.fsutil import atomic_write, read_token
from convocate.common.paths import ROOT_ENV, Paths
from convocate.registry import AgentRecord, bind_status_key, register_agent

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def python() -> str:
    """The interpreter that runs the roles: the repo's venv, else the current one."""
    return str(PYTHON) if PYTHON.exists() else sys.executable


@dataclass
class LocalCluster:
    """One agent and one shell host laid out under ``root``.

    Attributes:
        root: The relocated root (``CONVOCATE_ROOT``).
        image: Session image tag written to ``current-image``.
        listen: Address for the agent's SSH listener; port 0 picks a free one.
        log_path: Where the agent's log goes.
        command_prefix: Put before the daemons' command lines (e.g. ``ip netns exec NS``,
            to run them in a network namespace); it must exec them, keeping the PID.
    """

    root: Path
    image: str
    listen: str = "127.0.0.1:0"
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    port: int = 0
    status: bool = False
    status_listen: str = "127.0.0.1:0"
    status_port: int = 0
    status_process: subprocess.Popen | None = None
    status_args: list[str] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)
    command_prefix: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.absolute()
        self.paths = Paths(self.root)
        self.log_path = self.log_path or self.root / "agent.log"
        self.status_log_path = self.log_path.with_name("status.log")
        self.shell_key_path = self.root / "operator" / "shell_to_agent_ed25519_key"

    @property
    def env(self) -> dict[str, str]:
        """Environment for running any role against this cluster."""
        env = dict(os.environ)
        env[ROOT_ENV] = str(self.root)
        env.pop("SSH_AUTH_SOCK", None)
        env.update(self.extra_env)
        return env

    @property
    def agent_id(self) -> str:
        return read_token(self.paths.agent_id_file)

    def run_role(self, module: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run ``python -m MODULE ARGS`` with this cluster's environment."""
        return subprocess.run([python(), "-m", module, *args], env=self.env, check=check, text=True,
                              capture_output=True, cwd=REPO, **kwargs)

    def install(self) -> None:
        """Install the agent, mint and authorize the shell's key, write the current image (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_role("convocate_agent", "install")
        self.shell_key_path.parent.mkdir(parents=True, exist_ok=True)
        shell_key, _ = keys.ensure_private_key(self.shell_key_path, comment="convocate shell (local cluster)")
        line = keys.public_key_line(shell_key, "convocate shell (local cluster)") + "\n"
        auth = self.paths.agent_authorized_keys
        if not auth.exists() or line not in auth.read_text():
            atomic_write(auth, line.encode(), mode=0o644)
        atomic_write(self.paths.current_image_file, f"{self.image}\n".encode())
        if self.status:
            self.install_status()

    def install_status(self) -> None:
        """The shell's status host key, and the agent's status key pinned both ways (idempotent)."""
        paths = self.paths
        paths.shell_etc.mkdir(parents=True, exist_ok=True)
        status_key, _ = keys.ensure_private_key(paths.status_host_key, comment="convocate status (local cluster)")
        agent_key, _ = keys.ensure_private_key(paths.agent_to_shell_key, comment=f"convocate-agent {self.agent_id}")
        line = keys.public_key_line(agent_key, f"convocate-agent {self.agent_id}") + "\n"
        auth = paths.status_authorized_keys
        if not auth.exists() or line not in auth.read_text():
            atomic_write(auth, line.encode(), mode=0o644)
        bind_status_key(paths, self.agent_id, line)  # the shell's registry: whose key this is
        atomic_write(paths.shell_known_host, (keys.public_key_line(status_key) + "\n").encode())
        atomic_write(paths.shell_host_file, b"127.0.0.1\n")

    def register(self) -> AgentRecord:
        """Register the running agent in the shell's registry, pinning its host key."""
        host_key_line = keys.public_key_line(keys.load_private_key(self.paths.agent_host_key))
        return register_agent(self.paths, self.agent_id, "127.0.0.1", self.port, host_key_line,
                              keys.load_private_key(self.shell_key_path))

    def register_with(self, shell: LocalCluster) -> AgentRecord:
        """Make this running agent one more agent of ``shell``'s shell host (a cluster of several agents).

        ``shell``'s key is authorized on this agent, and this agent is registered, its host key pinned, in
        ``shell``'s registry; the ``convocate`` CLI run with ``shell.env`` then sees both.
        """
        shell_key, _ = keys.ensure_private_key(shell.shell_key_path, comment="convocate shell (local cluster)")
        line = keys.public_key_line(shell_key, "convocate shell (local cluster)") + "\n"
        auth = self.paths.agent_authorized_keys
        if line not in auth.read_text():
            atomic_write(auth, (auth.read_text() + line).encode(), mode=0o644)
        host_key_line = keys.public_key_line(keys.load_private_key(self.paths.agent_host_key))
        return register_agent(shell.paths, self.agent_id, "127.0.0.1", self.port, host_key_line, shell_key)

    def _spawn(self, args: list[str], log_path: Path, timeout: float) -> tuple[subprocess.Popen, int]:
        """Start a role subprocess and wait for its "listening on HOST:PORT" log line."""
        with open(log_path, "ab") as log:
            offset = log.tell()
            proc = subprocess.Popen([*self.command_prefix, python(), "-m", *args], env=self.env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log_path.read_bytes()[offset:].decode("utf-8", "replace")
            m = _LISTENING.search(text)
            if m:
                return proc, int(m.group(2))
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{text}")
            time.sleep(0.05)
        _terminate(proc, signal.SIGTERM, 10)
        raise RuntimeError(f"{args[0]} did not start listening within {timeout} s")

    def start(self, timeout: float = 30.0, same_port: bool = False) -> int:
        """Start status-serve (if enabled and not running), then ``convocate-agent serve``; returns the agent's port.

        Args:
            same_port: Listen on the port of the previous run (a restart the shell's registry already knows).
        """
        assert self.log_path is not None
        if self.status and self.status_process is None:
            self.start_status(timeout)
        listen = f"127.0.0.1:{self.port}" if same_port and self.port else self.listen
        args = ["convocate_agent", "serve", "--listen", listen, "--log-level", "info", *self.agent_args]
        if self.status:
            args += ["--shell-port", str(self.status_port)]
        self.process, self.port = self._spawn(args, self.log_path, timeout)
        self.register()
        return self.port

    def start_status(self, timeout: float = 30.0, same_port: bool = False) -> int:
        """Start ``convocate status-serve``; returns its port."""
        listen = f"127.0.0.1:{self.status_port}" if same_port and self.status_port else self.status_listen
        args = ["convocate", "status-serve", "--listen", listen, "--log-level", "info", *self.status_args]
        self.status_process, self.status_port = self._spawn(args, self.status_log_path, timeout)
        return self.status_port

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop the agent we started (by its PID only); returns its exit status."""
        proc, self.process = self.process, None
        return _terminate(proc, sig, timeout)

    def stop_status(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop the status-serve we started (by its PID only); returns its exit status."""
        proc, self.status_process = self.status_process, None
        return _terminate(proc, sig, timeout)

    def stop_all(self) -> None:
        self.stop()
        self.stop_status()

    def log_text(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status_log_text(self) -> str:
        return self.status_log_path.read_text(errors="replace") if self.status_log_path.exists() else ""


def _terminate(proc: subprocess.Popen | None, sig: int, timeout: float) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def remove_containers(root: Path) -> int:
    """Force-remove every container labelled with this relocated root, then its agent's cgroup parent.

    The agent removes its parent when it stops, but not while its containers are still in it; a
    cluster torn down (agent first, then containers) would leave the parent in every hierarchy.

    Returns:
        How many containers were removed.
    """
    import docker

    from convocate_agent import cgroups

    client = docker.from_env()
    try:
        # sparse: no inspect per container, which fails on one removed between the list and the inspect
        found = client.containers.list(all=True, sparse=True, filters={"label": f"convocate.root={root.absolute()}"})
        for c in found:
            with contextlib.suppress(docker.errors.APIError):  # gone, or removal already in progress
                c.remove(force=True)
        agent_id = read_token(Paths(root.absolute()).agent_id_file)
        if agent_id:
            with contextlib.suppress(docker.errors.DockerException):
                cgroups.detect(client.info(), f"convocate-sessions-{agent_id}").cleanup()
        return len(found)
    finally:
        client.close()


# --- the demo -----------------------------------------------------------------------
DEMO_ROLES = {"agent": b"convocate_agent", "status": b"status-serve"}


def _demo_cluster(state: Path, image: str, port: int) -> LocalCluster:
    return LocalCluster(root=state / "root", image=image, listen=f"127.0.0.1:{port}", log_path=state / "agent.log",
                        status=True, status_listen=f"127.0.0.1:{port + 1}")


def demo_up(state: Path, image: str, port: int) -> None:
    """Bring the demo's status-serve and agent up (or find them running), and register the agent."""
    cluster = _demo_cluster(state, image, port)
    cluster.install()
    pids = {role: read_token(state / f"{role}.pid") for role in DEMO_ROLES}
    running = {role: pid.isdigit() and _alive(int(pid), DEMO_ROLES[role]) for role, pid in pids.items()}
    if not running["status"]:
        cluster.start_status(same_port=False)
        assert cluster.status_process is not None
        atomic_write(state / "status.pid", f"{cluster.status_process.pid}\n".encode())
        print(f"demo status-serve started on 127.0.0.1:{cluster.status_port}; log: {cluster.status_log_path}",
              file=sys.stderr)
    else:
        cluster.status_port = port + 1
        cluster.status_process = None
    if running["agent"]:
        cluster.port = port
        cluster.register()
        print(f"demo agent {cluster.agent_id} already running (pid {pids['agent']}) on 127.0.0.1:{port}",
              file=sys.stderr)
        return
    cluster.status = False  # status-serve is up; start only the agent, pointed at it
    cluster.agent_args = ["--shell-port", str(port + 1)]
    cluster.start()
    assert cluster.process is not None
    atomic_write(state / "agent.pid", f"{cluster.process.pid}\n".encode())
    print(f"demo agent {cluster.agent_id} started (pid {cluster.process.pid}) on 127.0.0.1:{cluster.port}; "
          f"log: {cluster.log_path}", file=sys.stderr)


def demo_down(state: Path) -> None:
    """Stop the demo's agent and status-serve, and remove its session containers (homes are kept)."""
    for role, marker in DEMO_ROLES.items():
        pid_file = state / f"{role}.pid"
        pid = read_token(pid_file)
        if pid.isdigit() and _alive(int(pid), marker):
            os.kill(int(pid), signal.SIGTERM)
            for _ in range(400):
                if not _alive(int(pid), marker):
                    break
                time.sleep(0.05)
            print(f"demo {role} (pid {pid}) stopped", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    removed = remove_containers(state / "root")
    print(f"removed {removed} demo session container(s); session homes stay under {state / 'root'}", file=sys.stderr)


def _alive(pid: int, marker: bytes) -> bool:
    """Whether ``pid`` runs a convocate role whose command line holds ``marker`` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker in cmdline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("demo-up")
    up.add_argument("state", type=Path)
    up.add_argument("--image", required=True)
    up.add_argument("--port", type=int, default=2222)
    down = sub.add_parser("demo-down")
    down.add_argument("state", type=Path)
    args = parser.parse_args(argv)
    if args.command == "demo-up":
        demo_up(args.state.absolute(), args.image, args.port)
    else:
        demo_down(args.state.absolute())
    return 0


if __name__ == "__main__":
    sys.exit(main())
