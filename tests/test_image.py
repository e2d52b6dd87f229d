"""The session image on its own: entrypoint, supervisor, tmux (packaging/image/).

Containers are started here through the docker SDK exactly as the agent starts
them (init process, home bind mount, CLAUDE_UID/GID), labelled with this
test's root, and removed at teardown.
"""

from __future__ import annotations

import os
import time

import docker
import pytest

pytestmark = pytest.mark.docker

UID = "1337:1337"


@pytest.fixture
def run_session(docker_client, session_image, tmp_path):
    started = []

    def run(**env):
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        environment = {"CLAUDE_UID": "1337", "CLAUDE_GID": "1337", "CONVOCATE_BACKOFF_BASE": "0.05",
                       "CONVOCATE_AGENT_COMMAND": "claude", **env}
        container = docker_client.containers.run(
            session_image, detach=True, init=True, environment=environment,
            labels={"convocate.root": str(tmp_path)},
            mounts=[docker.types.Mount("/home/claude", str(home), type="bind")],
        )
        started.append(container)
        return container, home

    yield run
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def tmux(container, *args):
    return container.exec_run(["tmux", *args], user=UID, environment={"HOME": "/home/claude"})


def wait_ready(container, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tmux(container, "has-session", "-t", "main").exit_code == 0:
            return
        time.sleep(0.02)
    raise AssertionError(container.logs().decode())


def wait_screen(container, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux(container, "capture-pane", "-p", "-t", "main").output.decode()
        if text in screen:
            return screen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not on screen:\n{screen}")


def wait_exit(container, timeout=20.0):
    return container.wait(timeout=timeout)["StatusCode"]


def test_session_runs_the_agent_command_as_claude_in_tmux(run_session):
    container, home = run_session()
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    tmux(container, "send-keys", "-t", "main", "hello", "Enter")
    wait_screen(container, "echo: hello")
    assert container.exec_run(["id", "-u", "claude"]).output.strip() == b"1337"
    container.exec_run(["sh", "-c", "echo data > /home/claude/made-by-session"], user=UID)
    assert os.stat(home / "made-by-session").st_uid == 1337
    assert os.stat(home).st_uid == 1337


def test_a_clean_exit_ends_the_session(run_session):
    container, _ = run_session()
    wait_ready(container)
    wait_screen(container, "convocate stand-in claude")
    tmux(container, "send-keys", "-t", "main", "/exit", "Enter")
    assert wait_exit(container) == 0


def test_a_crash_is_resumed_with_dash_c_and_five_crashes_give_up(run_session):
    container, home = run_session()
    wait_ready(container)
    banner = "convocate stand-in claude"
    for attempt in range(5):
        screen = wait_screen(container, banner)
        deadline = time.monotonic() + 10
        while screen.count(banner) < attempt + 1 and time.monotonic() < deadline:
            screen = tmux(container, "capture-pane", "-p", "-t", "main").output.decode()
        if attempt:
            assert "-c" in screen.split(banner)[-1].splitlines()[0]  # resumed after the crash
        tmux(container, "send-keys", "-t", "main", "/crash", "Enter")
    assert wait_exit(container) == 3
    log = (home / ".convocate" / "logs" / "supervisor.log").read_text()
    assert log.count("agent exited with status 3 after") == 5, log
    assert "giving up: the agent failed 5 times in a row" in log, log
    assert b"convocate" in container.logs()  # supervisor lines reach docker logs


def test_docker_stop_is_prompt(run_session):
    container, _ = run_session()
    wait_ready(container)
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5
