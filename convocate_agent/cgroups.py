"""Capacity layer 2: the cgroup parent every session container is enrolled in (DESIGN §4).

With Docker's ``systemd`` cgroup driver (Debian 12 and Ubuntu 24.04 hosts:
cgroup v2) the parent is the slice ``convocate-sessions.slice``, whose
``CPUQuota=`` and ``MemoryMax=`` the package's install step writes
(systemd.resource-control(5)). With the ``cgroupfs`` driver Docker creates
the parent directory but sets no limits on it (MACHINE-NOTES), so the agent
writes them itself at start: on cgroup v1 ``cpu.cfs_period_us`` /
``cpu.cfs_quota_us`` and ``memory.limit_in_bytes``, on cgroup v2 ``cpu.max``
and ``memory.max`` (kernel Documentation/admin-guide/cgroup-v1/ and
cgroup-v2.rst). Either way the parent caps all sessions together at 90% of
the host's CPUs and memory, whatever each session's own limits say.

Tasks: each session has its own pids limit (the agent setting ``pids_limit``),
and the parent caps all sessions together at half of the host's tasks, so a
fork bomb in sessions cannot take the host's last PIDs: the slice's
``TasksMax=50%`` (of the smaller of ``kernel.pid_max`` and
``kernel.threads-max``, systemd.resource-control(5)), or with cgroupfs the same
number in the parent's ``pids.max`` (kernel Documentation/admin-guide/cgroup-v1/pids.rst).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SLICE = "convocate-sessions.slice"
CGROUPFS_PARENT = "convocate-sessions"
#: CFS period used for the parent's quota, in microseconds (the kernel default).
CFS_PERIOD_US = 100_000
#: Share of the host's tasks all sessions may hold together (the slice's ``TasksMax=50%``).
TASKS_SHARE = 0.5


def sessions_tasks_max(proc_sys: Path = Path("/proc/sys/kernel")) -> int | None:
    """Tasks all sessions may have together: :data:`TASKS_SHARE` of ``min(pid_max, threads-max)``.

    The same base systemd uses for a percentage in ``TasksMax=``. None when unreadable.
    """
    try:
        limits = [int((proc_sys / name).read_text().strip()) for name in ("pid_max", "threads-max")]
    except (OSError, ValueError):
        return None
    return max(1, int(min(limits) * TASKS_SHARE))


@dataclass(frozen=True)
class CgroupParent:
    """Where session containers go and how their common limits are set.

    Attributes:
        driver: Docker's cgroup driver, ``systemd`` or ``cgroupfs``.
        version: cgroup version, 1 or 2.
        name: For systemd the slice unit, for cgroupfs the directory name under each hierarchy.
        root: The cgroup filesystem root (``/sys/fs/cgroup``).
    """

    driver: str
    version: int
    name: str
    root: Path = CGROUP_ROOT

    @property
    def docker_value(self) -> str:
        """The value of Docker's ``HostConfig.CgroupParent``."""
        return self.name if self.driver == "systemd" else f"/{self.name}"

    def _dirs(self) -> dict[str, Path]:
        """Controller → the parent's directory (cgroupfs driver only)."""
        if self.version == 2:
            return {"unified": self.root / self.name}
        return {"cpu": self.root / "cpu" / self.name, "memory": self.root / "memory" / self.name}

    def apply_limits(self, cpus: float, memory_bytes: int, tasks: int | None = None) -> bool:
        """Write the parent's CPU quota, memory and tasks limits (cgroupfs driver; systemd's slice has its own).

        Args:
            cpus: Cores all sessions may use together (nproc x 90%).
            memory_bytes: Memory all sessions may use together (MemTotal x 90%).
            tasks: Tasks (processes and threads) all sessions may have together
                (``pids.max``), or None to leave it alone.

        Returns:
            True if the limits are in place; False (and a log line saying why)
            when they could not be written, e.g. an agent running unprivileged.
        """
        if self.driver == "systemd":
            return True
        quota = max(1000, int(cpus * CFS_PERIOD_US))
        try:
            if self.version == 2:
                unified = self._dirs()["unified"]
                _enable_controllers(self.root, ("cpu", "memory") + (("pids",) if tasks else ()))
                unified.mkdir(exist_ok=True)
                _write(unified / "cpu.max", f"{quota} {CFS_PERIOD_US}")
                _write(unified / "memory.max", str(memory_bytes))
                if tasks:
                    _write(unified / "pids.max", str(tasks))
            else:
                cpu, memory = self._dirs()["cpu"], self._dirs()["memory"]
                cpu.mkdir(exist_ok=True)
                memory.mkdir(exist_ok=True)
                _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(quota))
                _write(memory / "memory.limit_in_bytes", str(memory_bytes))
                if tasks:
                    pids = self.root / "pids" / self.name
                    pids.mkdir(exist_ok=True)
                    _write(pids / "pids.max", str(tasks))
        except OSError as e:
            log.warning("cgroup parent %s: cannot set its limits (%s); each session's own limits still apply",
                        self.docker_value, e)
            return False
        log.info("cgroup parent %s (cgroup v%d): %.2f CPUs, %d MiB, %s tasks for all sessions together",
                 self.docker_value, self.version, cpus, memory_bytes >> 20, tasks or "unlimited")
        return True

    def memory_usage_bytes(self) -> int | None:
        """Memory the sessions use together right now, or None when unknown."""
        if self.driver == "systemd":
            path = self.root / self.name / "memory.current" if self.version == 2 else \
                self.root / "memory" / self.name / "memory.usage_in_bytes"
        elif self.version == 2:
            path = self._dirs()["unified"] / "memory.current"
        else:
            path = self._dirs()["memory"] / "memory.usage_in_bytes"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Remove the parent's directories if no session is left in them (cgroupfs driver).

        On cgroup v1 Docker makes the parent in every hierarchy (blkio, cpuset, pids, ...), not
        only in the two whose limits the agent writes, so every hierarchy is swept.
        """
        if self.driver == "systemd":
            return
        if self.version == 2:
            candidates = list(self._dirs().values())
        else:
            try:
                candidates = [h / self.name for h in self.root.iterdir() if (h / self.name).is_dir()]
            except OSError:
                candidates = []
        for path in candidates:
            try:
                path.rmdir()
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    log.info("cgroup parent %s: %s", path, e)


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _enable_controllers(root: Path, controllers: tuple[str, ...]) -> None:
    """Make ``controllers`` available to children of ``root`` (cgroup v2 ``cgroup.subtree_control``)."""
    wanted = " ".join(f"+{c}" for c in controllers)
    with contextlib.suppress(OSError):
        _write(root / "cgroup.subtree_control", wanted)


def detect(docker_info: dict, name: str | None = None, root: Path = CGROUP_ROOT) -> CgroupParent:
    """The session parent for this host, from ``docker info``.

    Args:
        docker_info: The Engine API's ``GET /info`` result (``CgroupDriver``, ``CgroupVersion``).
        name: Directory name for the cgroupfs parent (default ``convocate-sessions``); the
            systemd driver always uses ``convocate-sessions.slice``.
        root: The cgroup filesystem root.
    """
    driver = str(docker_info.get("CgroupDriver") or "cgroupfs")
    version = 2 if str(docker_info.get("CgroupVersion") or "1") == "2" else 1
    if driver == "systemd":
        return CgroupParent("systemd", version, SLICE, root)
    return CgroupParent("cgroupfs", version, name or CGROUPFS_PARENT, root)


def container_cgroup(parent: CgroupParent, container_id: str, controller: str) -> Path:
    """A session container's own cgroup directory (for reading its usage in tests and capacity)."""
    if parent.driver == "systemd":
        leaf = f"docker-{container_id}.scope"
        base = parent.root / parent.name if parent.version == 2 else parent.root / controller / parent.name
        return base / leaf
    if parent.version == 2:
        return parent.root / parent.name / container_id
    return parent.root / controller / parent.name / container_id

