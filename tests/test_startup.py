"""Start-up of ``convocate`` (issue 17): what each command imports, and ls/agents from status-serve.

- ``help`` and ``version`` must not import asyncssh, docker, npyscreen or cryptography (nor
  asyncio or argparse), and the parser every other verb builds must not import the first four:
  checked on ``sys.modules`` in a fresh interpreter, not timed.
- ``convocate ls`` and ``agents`` answer from status-serve's copy of each agent's answers when it
  is current and over SSH otherwise, with the same rows: compared field by field on a real agent
  and status-serve.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from convocate.common.version import __version__
from convocate.localstatus import Replay, usable
from tests.harness import REPO, LocalCluster, python, remove_containers

HEAVY = ("asyncssh", "docker", "npyscreen", "cryptography")


def imported_by(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``code`` ran in a fresh interpreter (stdout holds its own output)."""
    script = (f"import sys, json\n{code}\n"
              "sys.stdout.write('\\nMODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    done = subprocess.run([python(), "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    return set(json.loads(done.stdout.rsplit("MODULES ", 1)[1]))


@pytest.mark.parametrize("argv", [["--help"], ["help"], ["-h"], ["version"], ["--version"]])
def test_help_and_version_import_no_ssh_docker_tui_crypto_asyncio_or_argparse(argv):
    modules = imported_by(f"from convocate.cli import main\nmain({argv!r})")
    assert not modules & {*HEAVY, "asyncio", "argparse"}, sorted(modules & {*HEAVY, "asyncio", "argparse"})
    assert "convocate" in modules


def test_python_dash_m_convocate_help_imports_none_of_them():
    done = subprocess.run([python(), "-X", "importtime", "-m", "convocate", "--help"], capture_output=True,
                          text=True, cwd=REPO, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "convocate" in imported and "ls" in done.stdout
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_the_parser_of_every_verb_imports_no_ssh_docker_tui_or_crypto():
    modules = imported_by("from convocate.cli import build_parser\nbuild_parser().parse_args(['ls', '--json'])\n"
                          "import convocate.readverbs, convocate.localstatus")
    assert not modules & {*HEAVY, "asyncio"}, sorted(modules & {*HEAVY, "asyncio"})


def _verbs(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "command").choices


def test_a_command_line_builds_only_its_verb_and_that_verb_is_the_whole_parsers_own():
    from convocate.cli import build_parser

    whole = _verbs(build_parser())
    assert len(whole) > 30
    for verb, full in whole.items():
        alone = _verbs(build_parser(verb))
        assert list(alone) == [verb]
        assert alone[verb].format_help() == full.format_help(), verb
        assert repr(alone[verb]._defaults) == repr(full._defaults), verb  # the same work (_Lazy's repr names it)


def test_a_word_that_is_no_verb_gets_the_whole_parser():
    from convocate.cli import build_parser

    assert _verbs(build_parser("nosuchverb")).keys() == _verbs(build_parser()).keys()


def test_each_module_adds_exactly_the_verbs_the_table_names():
    import argparse
    import importlib

    from convocate.cli import MODULE_VERBS

    for module, verbs in MODULE_VERBS.items():
        parser = argparse.ArgumentParser()
        action = parser.add_subparsers(dest="command")
        importlib.import_module(module).add_parsers(action, argparse.ArgumentParser(add_help=False))
        assert tuple(action.choices) == verbs, module


def test_ls_loads_no_other_verbs_modules():
    script = ("import sys\nfrom convocate.cli import build_parser\nbuild_parser('ls').parse_args(['ls'])\n"
              "print(' '.join(sorted(sys.modules)))")
    done = subprocess.run([python(), "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    modules = set(done.stdout.split())
    assert "convocate.cli" in modules
    # nor the credential store (hashing, JSON files): a session's credential field is the model's rule
    assert not modules & {"convocate.replay", "convocate.fleet_cli", "convocate.commands",
                          "convocate.common.credentials"}, modules


def test_the_verbs_moved_to_commands_are_still_found_on_cli():
    from convocate import cli, commands

    assert cli.reply_text is commands.reply_text


# --- which source may answer (pure rule) ----------------------------------------------------------
LIVE = {"connected": True, "stale": False}
CURRENT = {"current": True, "reason": "", "sessions": [], "capacity": {}, "ping": {}}


@pytest.mark.parametrize(("replay", "reason"), [
    (None, "status-serve did not answer"),
    (Replay(), "status-serve has not seen this agent"),
    (Replay({"a1b2c3d4": {**LIVE, "stale": True}}, {"a1b2c3d4": CURRENT}), "the agent is stale (missed 3 heartbeats)"),
    (Replay({"a1b2c3d4": {**LIVE, "connected": False}}, {"a1b2c3d4": CURRENT}), "the agent's status link is down"),
    (Replay({"a1b2c3d4": LIVE}), "status-serve holds no list of this agent"),
    (Replay({"a1b2c3d4": LIVE}, {"a1b2c3d4": {**CURRENT, "current": False, "reason": "a session event came"}}),
     "a session event came"),
    (Replay({"a1b2c3d4": LIVE}, {"a1b2c3d4": {**CURRENT, "sessions": None}}),
     "status-serve's list of this agent is not current"),
])
def test_an_agent_whose_copy_is_not_current_is_asked_over_ssh(replay, reason):
    assert usable(replay, "a1b2c3d4") == (None, reason)


def test_a_live_agent_with_a_current_copy_is_answered_by_status_serve(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent")  # no change made from here yet
    copy = {**CURRENT, "listed_at": "2026-12-07T10:00:00Z"}
    replay = Replay({"a1b2c3d4": LIVE}, {"a1b2c3d4": copy})
    assert usable(replay, "a1b2c3d4") == (copy, "")
    assert usable(replay, "ffff0000")[0] is None  # only the agent it has not seen goes over SSH


def test_a_change_made_from_here_after_the_copy_was_listed_is_read_from_the_agent(monkeypatch, tmp_path):
    from convocate.localstatus import note_write

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    copy = {**CURRENT, "listed_at": "2026-12-07T10:00:00Z"}
    replay = Replay({"a1b2c3d4": LIVE}, {"a1b2c3d4": copy})
    assert usable(replay, "a1b2c3d4") == (copy, "")
    note_write()  # `convocate new` just got its answer; status-serve listed before it
    assert usable(replay, "a1b2c3d4") == (None, "a change made from here since status-serve's list (read your writes)")


# --- against a real agent and status-serve -------------------------------------------------------------
@pytest.fixture
def status_cluster(tmp_path, session_image):
    cluster = LocalCluster(root=tmp_path / "root", image=session_image, status=True)
    cluster.install()
    cluster.start()
    yield cluster
    cluster.stop_all()
    remove_containers(cluster.root)


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    done = cluster.run_role("convocate", *args, check=False, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def wait_for_source(cluster: LocalCluster, source: str, timeout: float = 75.0) -> list[dict]:
    """``ls --json`` until every row says ``source`` (status-serve lists the agent after each event).

    When status-serve listed the agent before this CLI noted its own change (read your writes), the
    copy waits for status-serve's next refresh, at the agent's next heartbeat (every 30 s): hence a
    timeout over two heartbeats.
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(cli(cluster, "ls", "--json").stdout)
        if rows and all(r["source"] == source for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"rows never all came from {source}: {[r.get('source') for r in rows]}")
        time.sleep(0.2)


@pytest.fixture
def slow_heartbeat_cluster(tmp_path, session_image):
    """A real agent and status-serve whose agent sends a heartbeat once an hour: status-serve lists it
    again only for its events, and for a CLI's ask."""
    cluster = LocalCluster(root=tmp_path / "root", image=session_image, status=True)
    cluster.install()
    cluster.paths.agent_settings.parent.mkdir(parents=True, exist_ok=True)
    cluster.paths.agent_settings.write_text(json.dumps({"heartbeat_interval_s": 3600}))
    cluster.start()
    yield cluster
    cluster.stop_all()
    remove_containers(cluster.root)


@pytest.mark.docker
def test_after_a_change_from_here_ls_reads_status_serve_without_waiting_for_a_heartbeat(slow_heartbeat_cluster):
    # The CLI notes its change after the agent's answer, and status-serve may have listed the agent
    # for the change's event before that: only its ask makes status-serve list again (no heartbeat
    # is due for an hour), so ls reads the copy again instead of asking the agent over SSH.
    cluster = slow_heartbeat_cluster
    for name in ("hb-one", "hb-two", "hb-three"):
        cli(cluster, "new", name, "--no-start")
        rows = wait_for_source(cluster, "status-serve")
        assert name in {r["name"] for r in rows}


@pytest.mark.docker
def test_ls_and_agents_from_status_serve_are_the_rows_the_agent_gives(status_cluster):
    cluster = status_cluster
    made = [json.loads(cli(cluster, "new", name, *extra, "--json").stdout)
            for name, extra in (("st-run", ["--dns", "st-run", "--cpus", "0.2", "--memory", "200"]),
                                ("st-stopped", ["--no-start", "--port", "-1"]))]
    from_status = wait_for_source(cluster, "status-serve")
    assert {r["uuid"] for r in from_status} == {m["uuid"] for m in made}
    table_status = cli(cluster, "ls").stdout
    wide_status = cli(cluster, "ls", "--wide").stdout
    waiting_status = cli(cluster, "ls", "--waiting").stdout
    agents_status = json.loads(cli(cluster, "agents", "--json").stdout)
    agents_table_status = cli(cluster, "agents").stdout
    assert [a["source"] for a in agents_status] == ["status-serve"]

    # A change is never hidden by the copy: right after an edit, ls shows it, whichever source answers.
    cli(cluster, "edit", "st-stopped", "--name", "st-renamed")
    rows = json.loads(cli(cluster, "ls", "--json").stdout)
    assert "st-renamed" in {r["name"] for r in rows} and "st-stopped" not in {r["name"] for r in rows}
    cli(cluster, "edit", "st-renamed", "--name", "st-stopped")
    from_status = wait_for_source(cluster, "status-serve")

    cluster.stop_status()  # no socket: every agent is asked over SSH
    from_agent = json.loads(cli(cluster, "ls", "--json").stdout)
    assert [r["source"] for r in from_agent] == ["agent", "agent"]
    for a, b in zip(from_status, from_agent, strict=True):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    assert cli(cluster, "ls").stdout == table_status
    assert cli(cluster, "ls", "--wide").stdout == wide_status
    assert cli(cluster, "ls", "--waiting").stdout == waiting_status

    agents_agent = json.loads(cli(cluster, "agents", "--json").stdout)
    assert [a["source"] for a in agents_agent] == ["agent"]
    live = ("server_time", "usage", "source", "status_link")  # the clock and the load move; the link is gone
    for a, b in zip(agents_status, agents_agent, strict=True):
        assert {k: v for k, v in a.items() if k not in live and k != "capacity"} == \
               {k: v for k, v in b.items() if k not in live and k != "capacity"}
        assert {k: v for k, v in a["capacity"].items() if k != "usage"} == \
               {k: v for k, v in b["capacity"].items() if k != "usage"}
    head = [line.split()[:6] for line in agents_table_status.splitlines()]
    assert [line.split()[:6] for line in cli(cluster, "agents").stdout.splitlines()] == head


# --- the package's launcher ----------------------------------------------------------------------------
def launcher(tmp_path, with_tree: bool = True):
    """packaging/shiv/wrappers/convocate pointed at a tree under ``tmp_path`` holding this checkout's convocate."""
    root = tmp_path / "shiv"
    tree = root / "convocate.pyz_0123abcd" / "site-packages"
    tree.mkdir(parents=True)
    if with_tree:
        (tree / "convocate").symlink_to(REPO / "convocate")
    else:
        tree.rmdir()
    text = (REPO / "packaging" / "shiv" / "wrappers" / "convocate").read_text()
    path = tmp_path / "convocate"
    path.write_text(text.replace("/usr/lib/convocate/shiv", str(root))
                    .replace("/usr/lib/convocate/convocate.pyz", str(tmp_path / "missing.pyz")))
    return path


def test_the_launcher_runs_the_shipped_tree_and_never_the_callers_directory(tmp_path):
    path = launcher(tmp_path)
    cwd = tmp_path / "cwd"
    (cwd / "convocate").mkdir(parents=True)
    (cwd / "convocate" / "__init__.py").write_text("raise SystemExit('imported from the caller directory')\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/sh", str(path), "version"], capture_output=True, text=True, cwd=cwd, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"convocate version v{__version__}\n", "")
    done = subprocess.run(["/bin/sh", str(path), "--help"], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0 and done.stdout.startswith("usage: convocate")


def test_without_the_tree_the_launcher_runs_the_pyz(tmp_path):
    done = subprocess.run(["/bin/sh", str(launcher(tmp_path, with_tree=False)), "version"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode != 0 and "missing.pyz" in done.stderr  # the fallback is the pyz (here: absent)
