"""What every benchmark shares: a figure with its baseline, percentiles, and a scratch cluster."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.harness import LocalCluster, remove_containers


@dataclass(frozen=True)
class Figure:
    """One measured figure and the baseline it is compared with, measured in the same run.

    Attributes:
        name: What was measured.
        unit: ``ms``, ``MB/s``, ``MiB``, ``events/s`` ...
        value: convocate's figure.
        baseline: The baseline's figure, or None when there is none.
        baseline_name: What the baseline is.
        lower_is_better: Whether smaller values are better (latencies, memory).
    """

    name: str
    unit: str
    value: float
    baseline: float | None = None
    baseline_name: str = ""
    lower_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """value / baseline (how many times the baseline's cost, or its throughput)."""
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def scratch_cluster(image: str, **kwargs) -> Iterator[LocalCluster]:
    """A local cluster under a temporary root, torn down afterwards (containers included).

    The root is removed when the benchmark succeeds, and kept (with the daemons' logs) when it fails.
    """
    root = Path(tempfile.mkdtemp(prefix="convocate-bench-"))
    cluster = LocalCluster(root=root, image=image, **kwargs)
    ok = False
    try:
        cluster.install()
        cluster.start()
        yield cluster
        ok = True
    finally:
        cluster.stop_all()
        remove_containers(root)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"bench: kept {root} (logs: agent.log, status.log)", file=sys.stderr)
