"""The install steps' shared helpers: /etc/default files, idempotent writes (convocate.common.hostsetup)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from convocate.common import hostsetup, startinputs
from convocate.common.account import AccountEntry, AccountLookups, account_steps
from convocate.common.errors import ConfigError
from convocate.common.hostsetup import StepReport, render_env_file, write_if_changed

HEADER = "# header\n"


def test_a_new_env_file_starts_with_the_header():
    assert render_env_file("", {"A": "1", "B": ":2"}, HEADER) == "# header\nA=1\nB=:2\n"


def test_env_file_keys_are_rewritten_in_place_and_other_lines_stay():
    current = "# mine\nA=1\nEXTRA=keep me\n# A=commented\nA=2\n"
    assert render_env_file(current, {"A": "3", "C": "4"}, HEADER) == "# mine\nA=1\nEXTRA=keep me\n# A=commented\nA=3\nC=4\n"


def test_write_if_changed_writes_once_and_fixes_the_mode(tmp_path):
    path, report = tmp_path / "f", StepReport()
    assert write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    inode = path.stat().st_ino
    assert not write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    assert path.stat().st_ino == inode and report.changes == 1 and report.steps[-1].endswith("unchanged")
    os.chmod(path, 0o666)
    assert not write_if_changed(path, b"x\n", mode=0o640, report=report, what="file")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and report.steps[-1].endswith("owner/mode fixed")
    assert report.summary() == "2 change(s)"


# --- what the postinst's install steps check and decide ------------------------------------------
def test_a_port_another_program_listens_on_is_refused_with_its_name_and_pid(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            hostsetup.check_port_free(port, "convocate-test-none.service", StepReport())
        assert f"TCP port {port} is in use by " in str(caught.value)
        assert f"(PID {os.getpid()})" in str(caught.value)
        assert "convocate-test-none.service cannot listen there" in str(caught.value)
    report = StepReport()
    hostsetup.check_port_free(port, "convocate-test-none.service", report)
    assert report.steps == [f"TCP port {port} is free for convocate-test-none.service"]


def test_children_of_an_install_step_get_no_debconf_environment():
    env = hostsetup.child_env({"PATH": "/bin", "DEBIAN_HAS_FRONTEND": "1", "DEBCONF_REDIR": "1",
                               "DEBIAN_FRONTEND": "readline"})
    assert env == {"PATH": "/bin"}


def test_state_moves_from_etc_once_and_a_newer_copy_wins(tmp_path):
    old, new = tmp_path / "etc" / "settings.json", tmp_path / "var" / "settings.json"
    old.parent.mkdir()
    new.parent.mkdir()
    old.write_text("old")
    report = StepReport()
    hostsetup.move_state(old, new, report)
    assert new.read_text() == "old" and not old.exists() and report.changes == 1
    old.write_text("stale")
    hostsetup.move_state(old, new, report)
    assert new.read_text() == "old" and old.read_text() == "stale"
    assert report.steps[-1] == f"note: {old} is left over from an older version; {new} is used"


def test_start_inputs_digest_changes_with_content_not_with_the_path_it_is_read_through(tmp_path):
    a, b, dropins = tmp_path / "a", tmp_path / "b", tmp_path / "unit.d"
    a.write_text("CONVOCATE_AGENT_LISTEN=:222\n")
    b.write_text("CONVOCATE_AGENT_LISTEN=:222\n")
    dropins.mkdir()
    first = startinputs.digest([("defaults", a), ("dropins", dropins)])
    assert first == startinputs.digest([("defaults", b), ("dropins", dropins)])
    (dropins / "50-x.conf").write_text("[Service]\n")
    assert startinputs.digest([("defaults", a), ("dropins", dropins)]) != first
    run = tmp_path / "run"
    run.mkdir()
    assert startinputs.changed_since_start(run, [("defaults", a)])  # nothing recorded: restart
    startinputs.record(run, startinputs.digest([("defaults", a)]))
    assert not startinputs.changed_since_start(run, [("defaults", a)])
    a.write_text("CONVOCATE_AGENT_LISTEN=:2222\n")
    assert startinputs.changed_since_start(run, [("defaults", a)])
    assert startinputs.digest([("x", tmp_path / "missing")]) != startinputs.digest([("x", a)])



# --- the claude account: what is refused, run and kept (convocate.common.account) ------------------
def _found(groups: dict[str, int], users: dict[str, tuple[int, int]]) -> AccountLookups:
    """What the databases hold, given groups {name: gid} and users {name: (uid, gid)}."""
    group_entries = [AccountEntry(name, gid, gid) for name, gid in groups.items()]
    user_entries = [AccountEntry(name, uid, gid, "/bin/sh") for name, (uid, gid) in users.items()]

    def first(entries: list[AccountEntry], match) -> AccountEntry | None:
        return next((e for e in entries if match(e)), None)

    return AccountLookups(first(group_entries, lambda e: e.name == "claude"), first(group_entries, lambda e: e.id == 1337),
                          first(user_entries, lambda e: e.name == "claude"), first(user_entries, lambda e: e.id == 1337))


@pytest.mark.parametrize(("groups", "users", "refusal"), [
    ({"claude": 1000}, {}, "group claude exists with GID 1000; convocate needs GID 1337"),
    ({"games": 1337}, {}, "GID 1337 belongs to group games; convocate needs it for its group claude"),
    ({"claude": 1337}, {"claude": (1000, 1337)}, "user claude exists with UID 1000; convocate needs UID 1337"),
    ({"claude": 1337}, {"claude": (1337, 100)},
     "user claude exists with primary GID 100; convocate needs primary GID 1337"),
    ({"claude": 1337}, {"mallory": (1337, 1337)}, "UID 1337 belongs to user mallory; convocate needs it"),
])
def test_a_claude_account_clash_is_refused_naming_the_account_and_the_id(groups, users, refusal):
    with pytest.raises(ConfigError) as caught:
        account_steps(_found(groups, users), "/home/claude", "/usr/sbin/nologin", set_shell=False, create_home=False)
    assert str(caught.value).startswith(refusal)


def test_a_missing_claude_account_is_created_a_matching_one_kept_and_a_shell_host_gets_its_shell():
    steps = account_steps(_found({}, {}), "/home/claude", "/usr/sbin/nologin", set_shell=False, create_home=True)
    assert [step.command[0] for step in steps] == ["addgroup", "adduser"]
    assert "--no-create-home" not in steps[1].command
    assert [step.line for step in steps] == ["group claude (GID 1337) created", "user claude (UID 1337) created"]
    kept = _found({"claude": 1337}, {"claude": (1337, 1337)})
    assert [step.command for step in account_steps(kept, "/home/claude", "/usr/sbin/nologin", set_shell=False,
                                                   create_home=False)] == [None, None]
    shell = account_steps(kept, "/home/claude", "/usr/bin/convocate", set_shell=True, create_home=False)
    assert shell[1].command == ["usermod", "--shell", "/usr/bin/convocate", "claude"]
    assert shell[1].line == "user claude: login shell /bin/sh -> /usr/bin/convocate"


def test_getent_lines_are_read_as_group_and_passwd_entries():
    assert AccountEntry.from_getent("") is None
    assert AccountEntry.from_getent("claude:x:1337:\n") == AccountEntry("claude", 1337, 1337)
    assert AccountEntry.from_getent("claude:x:1337:1337:convocate sessions:/home/claude:/usr/sbin/nologin\n") == \
        AccountEntry("claude", 1337, 1337, "/usr/sbin/nologin")
    with pytest.raises(ConfigError, match="no group"):
        AccountEntry.from_getent("claude:x:not-a-number:")

