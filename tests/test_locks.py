"""Lifecycle lock files (convocate_agent.locks)."""

import os
import subprocess

import pytest

from convocate.common.errors import Locked
from convocate.common.paths import Paths
from convocate_agent.locks import SessionLocks, process_start_time

SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"
OTHER_SID = "0e5a3a59-4a8f-4c1b-9f5e-0d6b1c2a3b4c"  # a lock whose holder lives (the test runner's parent)


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


@pytest.fixture
def locks(tmp_path):
    paths = Paths(tmp_path)
    paths.session_base.mkdir(parents=True)
    paths.session_locks_dir.mkdir(parents=True)
    return SessionLocks(paths)


def test_hold_writes_the_pid_and_removes_the_file(locks):
    with locks.hold(SID, "create"):
        path = locks.paths.lock_file(SID)
        assert path.read_text().splitlines()[0] == str(os.getpid())
        assert locks.is_locked(SID) and SID in locks.locked_ids()
        with pytest.raises(Locked, match=rf'session "{SID}" is locked by pid {os.getpid()} \(create\)'):
            with locks.hold(SID, "delete"):
                pass
    assert not path.exists() and not locks.is_locked(SID)


def test_a_dead_holder_is_stale_and_taken_over(locks):
    locks.paths.lock_file(SID).write_text(f"{dead_pid()}\nrestart 1\n")
    assert not locks.is_locked(SID)
    with locks.hold(SID, "kill"):
        assert locks.holder(SID).op == "kill"


def test_a_reused_pid_with_another_start_time_is_stale(locks):
    mine = process_start_time(os.getpid())
    locks.paths.lock_file(SID).write_text(f"{os.getpid()}\ncreate {mine + 1}\n")
    assert not locks.is_locked(SID)


def test_a_plain_pid_lock_from_another_tool_is_honoured(locks):
    locks.paths.lock_file(SID).write_text(f"{os.getppid()}\n")
    assert locks.is_locked(SID)
    assert locks.clear_stale(SID) is None


def test_sweep_removes_only_stale_locks(locks):
    locks.paths.lock_file(SID).write_text(f"{dead_pid()}\n")
    locks.paths.lock_file(OTHER_SID).write_text(f"{os.getppid()}\n")
    assert locks.sweep() == [SID]
    assert locks.paths.lock_file(OTHER_SID).exists()


def test_locks_live_outside_the_session_base_and_stale_legacy_ones_are_swept(locks):
    """Issue 14: no lock beside the homes; the stale ones an older agent left there go at start."""
    with locks.hold(SID, "create"):
        assert locks.paths.lock_file(SID).parent == locks.paths.session_locks_dir
        assert [n for n in os.listdir(locks.paths.session_base) if n.endswith(".lock")] == []
    locks.paths.legacy_lock_file(SID).write_text(f"{dead_pid()}\ncreate\n")
    locks.paths.legacy_lock_file(OTHER_SID).write_text(f"{os.getppid()}\n")
    assert locks.sweep_legacy() == [SID]
    assert not locks.paths.legacy_lock_file(SID).exists() and locks.paths.legacy_lock_file(OTHER_SID).exists()
    assert not locks.is_locked(OTHER_SID)  # only the agent's own lock directory counts
