"""A local convocate cluster under one directory: used by the tests and by ``./build.sh demo``.

:class:`LocalCluster` lays out a relocated root (``CONVOCATE_ROOT``) holding
an agent host and a shell host on this machine: it runs ``convocate-agent
install``, mints the shell's ed25519 key, authorizes it on the agent,
registers the agent in the shell's registry with its pinned host key, and
starts ``convocate-agent serve`` on loopback as a real subprocess.

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
from convocate.registry import AgentRecord, register_agent

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
    """

    root: Path
    image: str
    listen: str = "127.0.0.1:0"
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.root = self.root.absolute()
        self.paths = Paths(self.root)
        self.log_path = self.log_path or self.root / "agent.log"
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

    def register(self) -> AgentRecord:
        """Register the running agent in the shell's registry, pinning its host key."""
        host_key_line = keys.public_key_line(keys.load_private_key(self.paths.agent_host_key))
        return register_agent(self.paths, self.agent_id, "127.0.0.1", self.port, host_key_line,
                              keys.load_private_key(self.shell_key_path))

    def start(self, timeout: float = 30.0) -> int:
        """Start ``convocate-agent serve`` and wait until it listens; returns the port."""
        assert self.log_path is not None
        log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [python(), "-m", "convocate_agent", "serve", "--listen", self.listen, "--log-level", "info"],
            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            m = _LISTENING.search(text)
            if m:
                self.port = int(m.group(2))
                self.register()
                return self.port
            if self.process.poll() is not None:
                raise RuntimeError(f"convocate-agent exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"convocate-agent did not start listening within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop the agent we started (by its PID only); returns its exit status."""
        if self.process is None:
            return None
        proc, self.process = self.process, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_text(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def remove_containers(root: Path) -> int:
    """Force-remove every container labelled with this relocated root; returns how many."""
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"convocate.root={root.absolute()}"})
        for c in found:
            with contextlib.suppress(docker.errors.APIError):  # gone, or removal already in progress
                c.remove(force=True)
        return len(found)
    finally:
        client.close()


# --- the demo -----------------------------------------------------------------------
def _demo_cluster(state: Path, image: str, port: int) -> LocalCluster:
    return LocalCluster(root=state / "root", image=image, listen=f"127.0.0.1:{port}",
                        log_path=state / "agent.log")


def demo_up(state: Path, image: str, port: int) -> None:
    """Bring the demo's agent up (or find it running) and register it."""
    cluster = _demo_cluster(state, image, port)
    cluster.install()
    pid_file = state / "agent.pid"
    pid = read_token(pid_file)
    if pid.isdigit() and _alive(int(pid)):
        cluster.port = port
        cluster.register()
        print(f"demo agent {cluster.agent_id} already running (pid {pid}) on 127.0.0.1:{port}", file=sys.stderr)
        return
    cluster.start()
    assert cluster.process is not None
    atomic_write(pid_file, f"{cluster.process.pid}\n".encode())
    print(f"demo agent {cluster.agent_id} started (pid {cluster.process.pid}) on 127.0.0.1:{cluster.port}; "
          f"log: {cluster.log_path}", file=sys.stderr)


def demo_down(state: Path) -> None:
    """Stop the demo's agent and remove its session containers (homes are kept)."""
    pid_file = state / "agent.pid"
    pid = read_token(pid_file)
    if pid.isdigit() and _alive(int(pid)):
        os.kill(int(pid), signal.SIGTERM)
        for _ in range(200):
            if not _alive(int(pid)):
                break
            time.sleep(0.05)
        print(f"demo agent (pid {pid}) stopped", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    removed = remove_containers(state / "root")
    print(f"removed {removed} demo session container(s); session homes stay under {state / 'root'}", file=sys.stderr)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running convocate-agent (not a reused PID of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"convocate_agent" in cmdline and b"serve" in cmdline


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
