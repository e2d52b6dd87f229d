"""The TUI, driven through a real terminal (tmux send-keys / capture-pane) against real agents."""

from __future__ import annotations

import json
import re
import time

import pytest

from convocate.common import messages
from tests.conftest import make_cluster
from tests.harness import REPO, LocalCluster, python
from tests.test_cli import Terminal

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_image):
    yield from make_cluster(tmp_path_factory.mktemp("tui"), session_image, status=True)


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
    with TUI(cluster.env) as term:
        yield term


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


# --- issue 13 item 7: the TUI tried as a new user would ------------------------------------------------

def _header_clock(screen: str) -> str:
    found = re.search(r"agent\(s\).*load [\d.]+ [\d.]+ [\d.]+\s+(\d\d:\d\d:\d\d)", screen)
    assert found, f"no clock in the header:\n{screen}"
    return found.group(1)


def _clock_ticks(tui: TUI, still_shown: str) -> None:
    """The header clock changes within 4 s while ``still_shown`` (the open dialog) stays on the screen."""
    first = _header_clock(tui.screen())
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        screen = tui.screen()
        if _header_clock(screen) != first:
            assert still_shown in screen, f"the dialog went away while the clock ticked:\n{screen}"
            return
        time.sleep(0.1)
    raise AssertionError(f"the header clock stayed at {first} with {still_shown!r} open:\n{tui.screen()}")


def _form_lines(tui: TUI) -> dict[str, str]:
    """The New/Edit form's fields as shown: label → value."""
    shown = {}
    for line in tui.screen().splitlines():
        for label in ("Name:", "Protocol:", "Port:", "DNS name:", "CPUs:", "Memory MiB:"):
            at = line.find(f"│ {label}")
            if at >= 0:
                shown[label.rstrip(":")] = line[at + 2 + len(label):].split("│")[0].strip()
        for label in ("Start now", "Attach right away"):
            if label in line:
                shown[label] = "[X]" if f"[X]  {label}" in line else "[ ]"
    return shown


def _wait_form(tui: TUI, expected: dict[str, str], timeout: float = 10.0) -> None:
    """Wait until the form shows ``expected`` (label → value, a subset of :func:`_form_lines`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = _form_lines(tui)
        if all(shown.get(label) == value for label, value in expected.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"the form does not show {expected}:\n{tui.screen()}")


def _dialog_text(screen: str) -> str:
    """The screen's text with box lines gone and wrapped lines joined, for matching sentences."""
    return " ".join(screen.replace("│", " ").replace("─", " ").split())


def test_new_form_with_invalid_values_names_the_field_and_comes_back_with_every_value(cluster, tui):
    tui.open()
    tui.keys("n")
    tui.wait_for("New session on")
    # An empty name, a port out of range, a DNS name with "_", CPUs that are no number; "Attach" unchecked.
    tui.keys("Tab", "Tab", "70000", "Tab", "bad_name", "Tab", "web", "Tab", "300", "Tab", "Tab", "Space",
             "Tab", "Tab", "Enter")
    typed = {"Name": "", "Protocol": "tcp", "Port": "70000", "DNS name": "bad_name", "CPUs": "web",
             "Memory MiB": "300", "Start now": "[X]", "Attach right away": "[ ]"}
    fixes = [  # the field the error names, the rule it states, and the keys that fix it and press OK
        ('field "name"', "1-64 characters", ["kept-values", *["Tab"] * 9, "Enter"], ("Name", "kept-values")),
        ('field "port"', "1-65535", [*["BSpace"] * 6, "4321", *["Tab"] * 7, "Enter"], ("Port", "4321")),
        ('field "dns_name"', "a-z, 0-9 and '-'", [*["BSpace"] * 8, "kept-example", *["Tab"] * 6, "Enter"],
         ("DNS name", "kept-example")),
        ('field "cpus"', "'web' is not a number", [*["BSpace"] * 3, "0.2", *["Tab"] * 5, "Enter"], ("CPUs", "0.2")),
    ]
    for field, rule, keys, (label, fixed) in fixes:
        text = _dialog_text(tui.wait_for(field))
        assert rule in text and messages.FORM_VALUES_KEPT in text, text
        tui.keys("Enter")  # dismiss the error: the same form is back, with what was typed
        _wait_form(tui, typed)
        assert _form_lines(tui) == typed, tui.screen()
        tui.keys(*keys)
        typed[label] = fixed
    tui.wait_state("kept-values", "R")
    made = {s["name"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}["kept-values"]
    assert (made["port"], made["dns_name"], made["cpus"], made["memory_mb"]) == (4321, "kept-example", 0.2, 300)
    assert "[convocate] attached" not in tui.screen()  # "Attach right away" stayed unchecked
    cli(cluster, "kill", "kept-values")
    cli(cluster, "delete", "kept-values")


def test_new_form_refused_by_admission_control_comes_back_with_the_values(cluster, tui):
    tui.open()
    tui.keys("n")
    tui.wait_for("New session on")
    tui.keys("too-big", *["Tab"] * 4, "100", "Tab", "200", *["Tab"] * 4, "Enter")  # 100 CPUs: valid, not admitted
    assert "admission denied: cpus asked 100 cores" in _dialog_text(tui.wait_for("admission denied"))
    tui.keys("Enter")
    _wait_form(tui, {"Name": "too-big", "CPUs": "100", "Memory MiB": "200", "Attach right away": "[X]"})
    tui.keys("Escape")  # cancel: back to the table, and nothing was made
    tui.wait_gone("New session on")
    assert "too-big" not in {s["name"] for s in json.loads(cli(cluster, "ls", "--json").stdout)}


def test_edit_form_refused_by_the_agent_comes_back_with_the_values(cluster, tui):
    cli(cluster, "new", "port-holder", "--no-start", "--port", "4545")
    cli(cluster, "new", "edit-me", "--no-start")
    tui.open()
    tui.wait_state("edit-me", "-")
    tui.select("edit-me")
    tui.keys("e")
    tui.wait_for("Edit edit-me")
    tui.keys(*["BSpace"] * 7, "edited-name", "Tab", "Tab", "4545", *["Tab"] * 5, "Enter")
    text = _dialog_text(tui.wait_for("already used"))
    assert "port 4545/tcp is already used by session" in text, text  # the agent's rule, in its words
    tui.keys("Enter")
    _wait_form(tui, {"Name": "edited-name", "Port": "4545"})
    assert "Edit edit-me" in tui.screen()
    tui.keys("Tab", "Tab", *["BSpace"] * 4, "4546", *["Tab"] * 5, "Enter")
    tui.wait_for("edit edit-me: done")
    edited = {s["uuid"]: s for s in json.loads(cli(cluster, "ls", "--json").stdout)}
    assert [(s["name"], s["port"]) for s in edited.values() if s["name"] == "edited-name"] == [("edited-name", 4546)]
    cli(cluster, "delete", "edited-name")
    cli(cluster, "delete", "port-holder")


def test_escape_does_not_swallow_the_next_key(cluster, tui):
    tui.open()
    tui.keys("Escape", pause=0.5)  # on the table: nothing to cancel
    tui.keys("n")
    tui.wait_for("New session on", timeout=5)
    tui.keys("Escape", pause=0.5)  # in a dialog: cancels it
    tui.wait_gone("New session on", timeout=5)
    tui.keys("n")
    tui.wait_for("New session on", timeout=5)
    tui.keys("Escape", pause=0.5)
    tui.wait_gone("New session on", timeout=5)
    tui.keys("q")
    tui.wait_for("EXIT=0")


def test_the_header_clock_ticks_while_a_dialog_is_open(cluster, tui):
    cli(cluster, "new", "clocked", "--no-start")
    tui.open()
    tui.wait_state("clocked", "-")
    _clock_ticks(tui, "ACCESSED")  # the table itself
    tui.keys("n")
    tui.wait_for("New session on")
    _clock_ticks(tui, "New session on")  # a form
    tui.keys("clock-form", *["Tab"] * 4, "web", *["Tab"] * 5, "Enter")
    tui.wait_for('field "cpus"')
    _clock_ticks(tui, 'field "cpus"')  # a message
    tui.keys("Enter")
    _wait_form(tui, {"Name": "clock-form", "CPUs": "web"})
    tui.keys("Escape")
    tui.wait_gone("New session on")
    tui.select("clocked")
    tui.keys("d")
    tui.wait_for("Delete clocked")
    _clock_ticks(tui, "Delete clocked")  # a confirmation
    tui.keys("n")
    tui.wait_gone("Delete clocked")
    cli(cluster, "delete", "clocked")


def test_a_packaged_shell_host_without_its_session_image_says_so_and_how_to_build_it(cluster, tui):
    context = cluster.root / "usr" / "share" / "convocate" / "image"  # as the convocate package ships it
    context.mkdir(parents=True)
    try:
        tui.open()
        tui.wait_for("no session image yet")
        tui.wait_for("it has not been built")
        tui.keys("q")
        tui.wait_for("EXIT=0")
    finally:
        context.rmdir()


def test_a_session_on_an_old_credential_is_marked_and_its_reason_shown_when_selected(cluster, tui):
    assert cluster.run_role("convocate", "auth", "set", "--name", "tui-cred", "--api-key", input="sk-ant-tui-one",
                            timeout=120).returncode == 0
    cli(cluster, "new", "on-cred", "--cpus", "0.1", "--memory", "100", "--credential", "tui-cred")
    tui.open()
    tui.wait_state("on-cred", "R")
    assert messages.CREDENTIAL_STALE_MARK not in tui.row("on-cred")
    cluster.run_role("convocate", "auth", "set", "--name", "tui-cred", "--api-key", input="sk-ant-tui-two",
                     timeout=120)
    tui.wait_for(messages.CREDENTIAL_STALE_MARK)  # live, from the agent's container.edited
    assert tui.row("on-cred").rstrip(" │").endswith(messages.CREDENTIAL_STALE_MARK)
    tui.select("on-cred")
    tui.wait_for('runs with an old credential "tui-cred"')
    cli(cluster, "restart", "on-cred")
    deadline = time.monotonic() + 20
    while messages.CREDENTIAL_STALE_MARK in tui.row("on-cred") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert messages.CREDENTIAL_STALE_MARK not in tui.row("on-cred")
    cli(cluster, "kill", "on-cred")
    cli(cluster, "delete", "on-cred")
    cli(cluster, "auth", "rm", "tui-cred")
    tui.keys("q")
    tui.wait_for("EXIT=0")
