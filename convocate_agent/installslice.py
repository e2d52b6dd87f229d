"""The kernel's cap on all sessions together: the CPU quota drop-in of ``convocate-sessions.slice``.

Capacity layer 2 (DESIGN §4): the packaged slice carries ``MemoryMax=90%``; ``CPUQuota=`` is a
percentage of one CPU (systemd.resource-control(5)), so the agent's ``install`` writes 90% of this
host's CPUs as a drop-in, the same :data:`LIMIT_FRACTION` as admission control.
"""

from __future__ import annotations

from dataclasses import dataclass

from convocate.common import hostsetup
from convocate.common.hostsetup import StepReport
from convocate.common.paths import Paths
from convocate_agent.admission import LIMIT_FRACTION, HostResources


@dataclass(frozen=True)
class SliceLimits:
    """The kernel's cap on all sessions together (capacity layer 2, DESIGN §4), as far as the unit cannot say it.

    ``MemoryMax=90%`` stands in the packaged slice itself (systemd.resource-control(5) takes a
    percentage of physical memory). ``CPUQuota=`` takes a percentage of *one* CPU, so 90% of all of
    them depends on the host and is written here as a drop-in.

    Attributes:
        cpu_quota_percent: ``CPUQuota=`` in percent of one CPU (180 = 90% of two CPUs).
    """

    cpu_quota_percent: int

    @classmethod
    def for_host(cls, host: HostResources) -> SliceLimits:
        """90% of the host's usable CPUs (the same 90% as admission control)."""
        return cls(int(round(host.cpus * LIMIT_FRACTION * 100)))

    def dropin(self) -> str:
        """The drop-in's text (systemd.resource-control(5): CPUQuota=)."""
        return (
            "# Written by `convocate-agent install` for this host: all convocate sessions together get at most\n"
            "# 90% of its CPUs (CPUQuota = nproc x 90%; MemoryMax=90% is in the slice itself).\n"
            "# Rewritten on every install, upgrade and dpkg-reconfigure of convocate-agent.\n"
            "[Slice]\n"
            f"CPUQuota={self.cpu_quota_percent}%\n"
        )


def ensure_slice_dropin(paths: Paths, report: StepReport) -> bool:
    """Write the slice's drop-in for this host's CPUs (``paths.slice_limits_dropin``); returns whether it changed."""
    limits = SliceLimits.for_host(HostResources.probe())
    paths.slice_limits_dropin.parent.mkdir(parents=True, exist_ok=True)
    return hostsetup.write_if_changed(
        paths.slice_limits_dropin, limits.dropin().encode(), mode=0o644, report=report,
        what=f"slice limit CPUQuota={limits.cpu_quota_percent}%:")
