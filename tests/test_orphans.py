"""Orphan sessions (state ``O``): session directories on the shell host that no agent claims (DESIGN §4).

Pure parts (the scan, the claim filter, the TUI model's rows) on a temporary root; and the CLI
against a real agent, with the shell's CONVOCATE_ROOT apart from the agent's (on one root, as in the
demo, the agent would claim every directory there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from convocate.common.model import SessionMeta, SessionView
from convocate.common.paths import Paths
from convocate.common.timefmt import now_ns
from convocate.orphans import scan_orphans, unclaimed
from convocate.tui.model import REACHABLE, UNREACHABLE, ClusterModel
from tests.harness import REPO, python


def make_orphan(paths: Paths, name: str) -> str:
    sid = str(uuid.uuid4())
    directory = paths.session_dir(sid)
    directory.mkdir(parents=True)
    meta = SessionMeta(uuid=sid, name=name, created_at=now_ns(), last_accessed=now_ns())
    (directory / "session.json").write_text(json.dumps(meta.to_json()))
    return sid


def test_scan_finds_session_directories_and_skips_what_is_not_a_session(tmp_path):
    paths = Paths(tmp_path)
    good = make_orphan(paths, "old-work")
    (paths.session_base / "not-a-uuid").mkdir()
    broken = paths.session_dir(str(uuid.uuid4()))
    broken.mkdir()
    (broken / "session.json").write_text("{ not json")
    paths.session_dir(str(uuid.uuid4())).mkdir()  # no session.json
    views = scan_orphans(paths)
    assert [(v.meta.uuid, v.meta.name, v.state) for v in views] == [(good, "old-work", "O")]
    assert unclaimed(views, {good}) == []
    assert scan_orphans(Paths(tmp_path / "nothing-here")) == []


def test_tui_model_lists_orphans_last_and_only_while_every_agent_answers(tmp_path):
    paths = Paths(tmp_path)
    orphan = make_orphan(paths, "orphan")
    claimed = make_orphan(paths, "claimed")
    model = ClusterModel({"a1": "h:222", "a2": "h2:222"})
    model.set_orphans(scan_orphans(paths))
    for agent in ("a1", "a2"):
        model.set_reach(agent, REACHABLE)
    agent_view = SessionView(meta=SessionMeta(uuid=claimed, name="claimed", created_at=1, last_accessed=1),
                             running=True)
    model.replace_sessions("a1", [agent_view])
    rows = model.rows()
    assert [(r.agent_id, r.session.meta.name, r.session.state) for r in rows] == \
        [("a1", "claimed", "R"), ("-", "orphan", "O")]
    assert rows[-1].session.meta.uuid == orphan
    model.set_reach("a2", UNREACHABLE, "agent a2 refused")
    rows = model.rows()
    assert [r.session.meta.name for r in rows if r.session is not None] == ["claimed"]  # a2 might claim the orphan
    assert rows[0].session is None and "unreachable" in rows[0].text


@pytest.mark.docker
def test_cli_shows_an_orphan_and_tells_how_to_migrate_it(cluster, tmp_path):
    shell = Paths(tmp_path / "shell")
    shutil.copytree(cluster.paths.shell_etc, shell.shell_etc)
    sid = make_orphan(shell, "left-behind")
    env = {**cluster.env, "CONVOCATE_ROOT": str(shell.root)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python(), "-m", "convocate", *args], env=env, text=True, capture_output=True,
                              cwd=REPO, timeout=120)

    listing = json.loads(cli("ls", "--json").stdout)
    orphans = [s for s in listing if s["state"] == "O"]
    assert [(s["uuid"], s["name"], s["agent_id"]) for s in orphans] == [(sid, "left-behind", None)]
    table = cli("ls").stdout
    assert any(line.split()[1:4] == ["O", "left-behind", "-"] for line in table.splitlines()[1:])
    refused = cli("attach", "left-behind")
    assert refused.returncode != 0
    assert f"convocate-host migrate-session --agent AGENT --session {sid}" in refused.stderr
