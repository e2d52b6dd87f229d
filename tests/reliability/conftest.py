"""Fixtures of the reliability suite, and the report of what it tried.

``CONVOCATE_RELIABILITY=full`` (``./build.sh test --full``) runs every test at
its full size; without it the same tests run small enough for every
``./build.sh test``. At the end of the run the tallies of
:mod:`tests.reliability.support` are printed (and written as JSON to
``$CONVOCATE_RELIABILITY_REPORT`` when set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalCluster, remove_containers
from tests.reliability.support import MODE, REPORT_ENV, TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (TALLY.counts or TALLY.notes):
        return
    terminalreporter.section(f"reliability ({MODE} run)")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
    if os.environ.get(REPORT_ENV):
        TALLY.write(Path(os.environ[REPORT_ENV]))
        terminalreporter.write_line(f"tallies written to {os.environ[REPORT_ENV]}")


@pytest.fixture
def make_cluster(tmp_path: Path, session_image: str) -> Iterator[Callable[..., LocalCluster]]:
    """Build, install and start agents of the test's own; all are stopped and their containers removed after.

    Call it as ``make_cluster(name, **LocalCluster fields)``; pass ``start=False``
    to only install.
    """
    made: list[LocalCluster] = []

    def make(name: str = "root", start: bool = True, **fields: Any) -> LocalCluster:
        cluster = LocalCluster(root=tmp_path / name, image=session_image, **fields)
        made.append(cluster)
        cluster.install()
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
        if "DOCKER_HOST" not in cluster.extra_env:  # a private dockerd cleans up after itself
            with contextlib.suppress(Exception):
                remove_containers(cluster.root)
