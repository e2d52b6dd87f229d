"""A session container's Docker create body: labels, environment, mounts, limits and hardening.

Pure: nothing here talks to dockerd; :meth:`convocate_agent.runtime.DockerRuntime.start` hands what
:func:`create_options` builds to the docker SDK's ``containers.create`` (Engine API
``POST /containers/create``, its ``Config`` and ``HostConfig`` fields).

Containers are named ``convocate-session-<uuid>`` and labelled with the session UUID, the agent ID,
the session's CPU and memory reservation, and, under a relocated root (tests, the demo), that root,
so every container an installation made can be found with one label query.

Hardening (DESIGN §8, a session is untrusted): a container starts as the session user
(``User=1337:1337``; the image has the user built in and its entrypoint needs no privilege then,
packaging/image/entrypoint) with every capability dropped and none added back
(``CapDrop=["ALL"]``), with ``no-new-privileges`` (setuid and file-capability binaries give
nothing), Docker's default seccomp profile (never ``seccomp=unconfined``), AppArmor's
``docker-default`` where the host has AppArmor (Docker applies it by default; the agent names it so
that a changed daemon default cannot drop it), a read-only root file system with tmpfs on ``/run``
(owned by the session user: the entrypoint's ``/run/convocate``), ``/tmp`` and ``/var/tmp``, the
home as the only writable bind mount, and a pids limit (``PidsLimit``, the agent setting
``pids_limit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import LogConfig, Mount

from convocate.common.constants import (
    CLAUDE_GID,
    CLAUDE_UID,
    CONTAINER_PREFIX,
    LABEL_AGENT,
    LABEL_CPUS,
    LABEL_MEMORY,
    LABEL_ROOT,
    LABEL_SESSION,
)

#: Where the session home is mounted in the container.
CONTAINER_HOME = "/home/claude"
#: Where the host's shared Claude settings (and fallback credentials) are mounted, read-only.
CONTAINER_CLAUDE_SHARED = "/opt/convocate/claude-shared"
#: Where the session's report socket directory is mounted.
CONTAINER_REPORT_DIR = "/run/convocate-agent"

#: Capabilities a session container keeps: none (it starts as the session user, see the module doc).
CAP_ADD: tuple[str, ...] = ()
#: Docker's ``HostConfig.SecurityOpt`` of a session: no privilege gain (AppArmor is added where present).
SECURITY_OPT = ("no-new-privileges:true",)
#: AppArmor profile Docker ships and loads (``docker-default``), named where the host has AppArmor.
APPARMOR_PROFILE = "docker-default"
#: Size of the ``/run`` tmpfs: the entrypoint's status file and nothing else.
RUN_TMPFS_SIZE = "16m"


def container_name(session_id: str) -> str:
    """``convocate-session-<uuid>``."""
    return CONTAINER_PREFIX + session_id


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to start one session container.

    Attributes:
        session_id: The session UUID.
        image: Image tag (from ``current-image``).
        home: Host path of the session home, mounted at ``/home/claude``.
        cpus: CPU limit in cores (Docker ``NanoCpus``).
        memory_mb: Memory limit in MiB (Docker ``Memory``; swap not allowed beyond it).
        port: Port published on the host (same number), 0 for none.
        protocol: ``tcp`` or ``udp``.
        hostname: Container hostname.
        agent_command: Command the supervisor runs.
        environment: Extra Docker environment, never a secret (``docker inspect`` shows it): the
            session's credential and the session env file reach it through ``credential.env`` in
            ``report_dir`` instead (convocate_agent.service, issue 15).
        claude_shared: Host directory with shared Claude settings (and the fallback credentials file,
            used when no cluster credential is configured), mounted read-only, or None.
        uid: UID of the ``claude`` user inside the container.
        gid: GID of the ``claude`` user inside the container.
        cgroup_parent: Docker ``HostConfig.CgroupParent`` (capacity layer 2), or None.
        report_dir: Host directory holding the session's report socket, mounted read-only
            at ``/run/convocate-agent`` (convocate_agent.activity), or None.
        restart_backoff_s: The supervisor's first restart delay (``CONVOCATE_BACKOFF_BASE``).
        pids_limit: Most tasks (processes and threads) in the container (Docker ``PidsLimit``).
        work_dir: The directory Claude Code works in, inside the container (``CONVOCATE_WORK_DIR``).
        skip_permissions: Run the agent command with ``--dangerously-skip-permissions``
            (``CONVOCATE_SKIP_PERMISSIONS`` ``1``/``0``).
    """

    session_id: str
    image: str
    home: Path
    cpus: float
    memory_mb: int
    port: int = 0
    protocol: str = "tcp"
    hostname: str = ""
    agent_command: str = "claude"
    environment: dict[str, str] = field(default_factory=dict)
    claude_shared: Path | None = None
    uid: int = CLAUDE_UID
    gid: int = CLAUDE_GID
    cgroup_parent: str | None = None
    report_dir: Path | None = None
    restart_backoff_s: float = 1.0
    pids_limit: int = 4096
    work_dir: str = CONTAINER_HOME + "/work"
    skip_permissions: bool = False


def tmpfs_mounts(uid: int, gid: int, memory_mb: int) -> dict[str, str]:
    """Docker's ``HostConfig.Tmpfs`` of a session: the writable places of its read-only root.

    ``/run`` belongs to the session user (the entrypoint makes ``/run/convocate`` there) and is
    ``noexec``; ``/tmp`` and ``/var/tmp`` are world-writable and sticky like on any host, and keep
    ``exec`` because build tools run what they put there. Every tmpfs page counts against the
    container's memory limit; the sizes only stop one of them from taking all of it.

    Args:
        uid: The session user's UID.
        gid: The session user's GID.
        memory_mb: The container's memory limit, in MiB.
    """
    half = max(16, memory_mb // 2)
    return {
        "/run": f"rw,nosuid,nodev,noexec,size={RUN_TMPFS_SIZE},mode=0755,uid={uid},gid={gid}",
        "/tmp": f"rw,nosuid,nodev,exec,size={half}m,mode=1777",
        "/var/tmp": f"rw,nosuid,nodev,exec,size={half}m,mode=1777",
    }


def apparmor_enabled(path: Path = Path("/sys/module/apparmor/parameters/enabled")) -> bool:
    """Whether the host kernel has AppArmor on (where Docker applies ``docker-default``)."""
    try:
        return path.read_text().strip().upper().startswith("Y")
    except OSError:
        return False


def session_labels(spec: SessionSpec, agent_id: str, root: Path | None) -> dict[str, str]:
    """A session container's labels (``Config.Labels``).

    Args:
        spec: The session to start.
        agent_id: This agent's ID.
        root: The installation's relocated root, or None for a normal installation.
    """
    labels = {
        LABEL_SESSION: spec.session_id,
        LABEL_AGENT: agent_id,
        LABEL_CPUS: f"{spec.cpus:g}",
        LABEL_MEMORY: str(spec.memory_mb),
    }
    if root is not None:
        labels[LABEL_ROOT] = str(root)
    return labels


def session_environment(spec: SessionSpec) -> dict[str, str]:
    """A session container's environment (``Config.Env``): ``spec.environment`` and what the entrypoint reads."""
    env = dict(spec.environment)
    env.update(
        CLAUDE_UID=str(spec.uid),
        CLAUDE_GID=str(spec.gid),
        CONVOCATE_SESSION_ID=spec.session_id,
        CONVOCATE_AGENT_COMMAND=spec.agent_command,
        CONVOCATE_BACKOFF_BASE=f"{spec.restart_backoff_s:g}",
        CONVOCATE_WORK_DIR=spec.work_dir,
        CONVOCATE_SKIP_PERMISSIONS="1" if spec.skip_permissions else "0",
    )
    return env


def session_mounts(spec: SessionSpec, docker_path: Callable[[Path], str]) -> list[Mount]:
    """A session container's bind mounts (``HostConfig.Mounts``): the home, and read-only the report dir and shared settings.

    Args:
        spec: The session to start.
        docker_path: A host path as dockerd's host sees it.
    """
    mounts = [Mount(target=CONTAINER_HOME, source=docker_path(spec.home), type="bind")]
    if spec.report_dir is not None:
        mounts.append(Mount(target=CONTAINER_REPORT_DIR, source=docker_path(spec.report_dir), type="bind",
                            read_only=True))
    if spec.claude_shared is not None:
        mounts.append(Mount(target=CONTAINER_CLAUDE_SHARED, source=docker_path(spec.claude_shared),
                            type="bind", read_only=True))
    return mounts


def create_options(spec: SessionSpec, agent_id: str, root: Path | None, docker_path: Callable[[Path], str],
                   log_config: LogConfig | None) -> dict[str, Any]:
    """The keyword arguments of the docker SDK's ``containers.create`` for a session (the image aside).

    Args:
        spec: The session to start.
        agent_id: This agent's ID, put in the labels.
        root: The installation's relocated root (recorded in a label), or None.
        docker_path: A host path as dockerd's host sees it (bind-mount sources).
        log_config: Docker's ``HostConfig.LogConfig``, or None for the daemon's default driver.

    Returns:
        ``name``, ``labels``, ``environment``, ``mounts``, the limits (``nano_cpus``, ``mem_limit``
        and ``memswap_limit`` in bytes, ``pids_limit``), the hardening of the module doc, and
        ``ports``, ``cgroup_parent`` and ``log_config`` where they apply.
    """
    memory = spec.memory_mb * 1024 * 1024
    security_opt = list(SECURITY_OPT)
    if apparmor_enabled():
        security_opt.append(f"apparmor={APPARMOR_PROFILE}")
    kwargs: dict[str, Any] = dict(
        name=container_name(spec.session_id),
        hostname=spec.hostname or None,
        labels=session_labels(spec, agent_id, root),
        environment=session_environment(spec),
        mounts=session_mounts(spec, docker_path),
        init=True,
        detach=True,
        nano_cpus=int(spec.cpus * 1e9),
        mem_limit=memory,
        memswap_limit=memory,
        stop_signal="SIGTERM",
        user=f"{spec.uid}:{spec.gid}",
        cap_drop=["ALL"],
        cap_add=list(CAP_ADD) or None,
        security_opt=security_opt,
        read_only=True,
        tmpfs=tmpfs_mounts(spec.uid, spec.gid, spec.memory_mb),
        pids_limit=spec.pids_limit,
        privileged=False,
    )
    if spec.port:
        kwargs["ports"] = {f"{spec.port}/{spec.protocol}": spec.port}
    if spec.cgroup_parent:
        kwargs["cgroup_parent"] = spec.cgroup_parent
    if log_config is not None:
        kwargs["log_config"] = log_config
    return kwargs
