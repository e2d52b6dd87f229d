"""The TUI, driven through a real terminal (tmux send-keys / capture-pane) against real agents."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.harness import REPO, LocalCluster, python, remove_containers
from tests.test_cli import Terminal

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_image):
    c = LocalCluster(root=tmp_path_factory.mktemp("tui"), image=session_image, status=True)
    c.install()
    c.start()
    yield c
    c.stop_all()
    remove_containers(c.root)


def cli(cluster, *args):
    return cluster.run_role("convocate", *args, timeout=120)


class TUI(Terminal):
    """The TUI running in a private tmux server."""

    def open(self, cols=140, rows=32):
        self.start(f"cd {REPO} && {python()} -m convocate; echo EXIT=$?; sleep 120", cols, rows)
        self.wait_for("ACCESSED")
        return self

    def keys(self, *keys, pause=0.15):
        for key in keys:
            self.tmux("send-keys", "-t", "t", key)
            time.sleep(pause)

    def row(self, name: str) -> str:
        """The table line of session ``name``."""
        for line in self.screen().splitlines():
            cells = line.strip("│ ").split()
            if len(cells) > 2 and cells[0].isdigit() and cells[2] == name:
                return line
        raise AssertionError(f"no row for {name}:\n{self.screen()}")

    def state(self, name: str) -> str:
        return self.row(name).strip("│ ").split()[1]

    def select(self, name: str) -> None:
        number = self.row(name).strip("│ ").split()[0]
        assert int(number) <= 9, "test tables stay under ten rows"
        self.keys(number)

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.state(name) == state:
                    return
            except AssertionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} is not {state}:\n{self.screen()}")

    def wait_for_activity(self, name: str, activity: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.row(name).strip("│ ").split()[5] == activity:
                    return
            except (AssertionError, IndexError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} is not {activity}:\n{self.screen()}")

    def wait_gone(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not re.search(rf"\s{re.escape(name)}\s", self.screen()):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} is still listed:\n{self.screen()}")


@pytest.fixture
def tui(cluster):
    term = TUI(cluster.env)
    yield term
    term.close()


def test_table_shows_sessions_with_their_states_and_live_events(cluster, tui):
    cli(cluster, "new", "running-one", "--cpus", "0.1", "--memory", "100")
    cli(cluster, "new", "stopped-one", "--no-start")
    tui.open()
    tui.wait_state("running-one", "R")
    tui.wait_state("stopped-one", "-")
    tui.wait_for("cpu 0.1/")  # the title sums the agents' reservations and limits
    assert re.search(r"convocate\s+1 agent\(s\), \d+ session\(s\)\s+cpu [\d.]+/[\d.]+\s+mem [\d.]+/[\d.]+ GiB"
                     r"\s+load [\d.]+ [\d.]+ [\d.]+\s+\d\d:\d\d:\d\d", tui.screen())
    # Another client creates a session: it appears without a key press.
    cli(cluster, "new", "from-elsewhere", "--no-start")
    tui.wait_state("from-elsewhere", "-", timeout=5)
    for name in ("running-one",):
        cli(cluster, "kill", name)
    for name in ("running-one", "stopped-one", "from-elsewhere"):
        cli(cluster, "delete", name)
    tui.wait_gone("from-elsewhere")
    tui.keys("q")
    tui.wait_for("EXIT=0")


def test_new_then_attach_type_and_detach_back_to_the_menu(cluster, tui):
    tui.open()
    tui.keys("n")
    tui.wait_for("New session on")
    tui.keys("made-in-tui")
    tui.keys(*["Tab"] * 7, "Space", "Tab", "Tab", "Enter")  # uncheck "Attach right away", then OK
    tui.wait_state("made-in-tui", "R")
    tui.select("made-in-tui")
    tui.keys("Enter")
    tui.wait_for("convocate stand-in claude")
    tui.keys("typed from the tui", "Enter")
    tui.wait_for("echo: typed from the tui")
    tui.keys("C-b", "d")
    tui.wait_for("detached from made-in-tui")
    tui.wait_for("ACCESSED")
    listed = {s["name"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}
    assert listed["made-in-tui"]["running"]
    cli(cluster, "kill", "made-in-tui")
    cli(cluster, "delete", "made-in-tui")


def test_lifecycle_keys_do_what_they_say(cluster, tui):
    cli(cluster, "new", "keyed", "--cpus", "0.1", "--memory", "100")
    tui.open()
    tui.wait_state("keyed", "R")

    tui.select("keyed")
    tui.keys("k")
    tui.wait_for("Stop keyed")
    tui.keys("y")
    tui.wait_state("keyed", "-")

    tui.select("keyed")
    tui.keys("r")
    tui.wait_for("Restart keyed")
    tui.keys("y")
    tui.wait_state("keyed", "R")

    tui.select("keyed")
    tui.keys("e")
    tui.wait_for("Edit keyed")
    tui.keys(*["BSpace"] * 10, "renamed", *["Tab"] * 5, *["BSpace"] * 10, "150", "Tab", "Tab", "Enter")
    tui.wait_for("port and limits change at its next start")  # memory changed on a running session
    tui.keys("y")
    tui.wait_for("restart renamed: done")
    tui.wait_state("renamed", "R")
    assert json.loads(cli(cluster, "ls", "--json").stdout)[0]["memory_mb"] == 150

    tui.select("renamed")
    tui.keys("c")
    tui.wait_for("Name of the copy")
    tui.keys(*["BSpace"] * 20, "the-copy", "Tab", "Tab", "Enter")
    tui.wait_state("the-copy", "-")

    tui.select("renamed")
    tui.keys("b")
    tui.wait_for("Detach every operator from renamed")
    tui.keys("y")
    tui.wait_for("background renamed: done")

    tui.select("renamed")
    tui.keys("o")
    tui.wait_for("Take over renamed")
    tui.keys("y")
    tui.wait_for("override renamed: done")

    tui.select("renamed")
    tui.keys("d")
    tui.wait_for("Delete renamed")
    tui.keys("y")
    tui.wait_for("is running; kill it first")  # the agent's message, in an error dialog
    tui.keys("Enter")

    tui.select("the-copy")
    tui.keys("d")
    tui.wait_for("Delete the-copy")
    tui.keys("y")
    tui.wait_gone("the-copy")
    cli(cluster, "kill", "renamed")
    cli(cluster, "delete", "renamed")


def test_a_killed_agent_becomes_an_unreachable_row_and_recovers(cluster, tui):
    cli(cluster, "new", "patient", "--no-start")
    tui.open()
    tui.wait_state("patient", "-")
    cluster.stop()
    tui.wait_for(f"agent {cluster.agent_id} unreachable", timeout=30)
    assert "patient" not in tui.screen()
    cluster.start(same_port=True)
    tui.wait_state("patient", "-", timeout=40)
    assert "unreachable" not in tui.screen()
    cli(cluster, "delete", "patient")


def test_without_a_terminal_or_agents_it_says_what_to_do(tmp_path, cluster):
    import subprocess

    done = subprocess.run([python(), "-m", "convocate"], env=cluster.env, cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 78 and "needs a terminal" in done.stderr and "Traceback" not in done.stderr
    empty = Terminal(LocalCluster(root=tmp_path, image="x").env)
    try:
        empty.start(f"cd {REPO} && {python()} -m convocate; echo EXIT=$?; sleep 60")
        screen = empty.wait_for("EXIT=")
        assert "no agent is registered" in screen and "EXIT=78" in screen
    finally:
        empty.close()
    small = TUI(cluster.env)
    try:
        small.start(f"cd {REPO} && {python()} -m convocate; echo EXIT=$?; sleep 60", 60, 12)
        screen = small.wait_for("EXIT=")
        assert "needs at least 80x16" in screen.replace("\n", "")
    finally:
        small.close()
    login = subprocess.run([python(), "-m", "convocate", "-c", "ls /"], env=cluster.env, cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert login.returncode == 2 and "does not run commands" in login.stderr
