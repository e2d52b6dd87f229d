"""Session directories (convocate_agent.store)."""

import json
import os

import pytest

from convocate.common.errors import ConfigError, NotFound
from convocate.common.model import SessionMeta, new_uuid
from convocate.common.paths import Paths
from convocate_agent.store import SessionStore

UID, GID = os.getuid(), os.getgid()


@pytest.fixture
def store(tmp_path):
    paths = Paths(tmp_path)
    paths.skel_dir.mkdir(parents=True)
    (paths.skel_dir / "CLAUDE.md").write_text("conventions\n")
    return SessionStore(paths, UID, GID)


def meta(name="s"):
    return SessionMeta(new_uuid(), name, 1, 2, cpus=0.5, memory_mb=256)


def test_create_seeds_the_home_from_skel_and_writes_metadata(store):
    m = meta()
    store.create(m)
    home = store.paths.session_dir(m.uuid)
    assert (home / "CLAUDE.md").read_text() == "conventions\n"
    assert store.load(m.uuid) == m
    assert store.session_ids() == [m.uuid]
    assert list(store.paths.staging_dir.iterdir()) == []


def test_load_of_a_missing_session_is_not_found(store):
    with pytest.raises(NotFound, match="does not exist"):
        store.load(new_uuid())


def test_a_corrupt_session_file_is_reported_not_fatal(store):
    good, bad = meta("good"), meta("bad")
    store.create(good)
    store.create(bad)
    store.paths.session_file(bad.uuid).write_text("{not json")
    sessions, broken = store.load_all()
    assert [s.uuid for s in sessions] == [good.uuid]
    assert broken[0].uuid == bad.uuid and "invalid session metadata" in broken[0].reason
    with pytest.raises(ConfigError):
        store.load(bad.uuid)


def test_cache_notices_a_rewritten_file(store):
    m = meta()
    store.create(m)
    store.load(m.uuid)
    store.save(m.with_changes(name="renamed"))
    assert store.load(m.uuid).name == "renamed"


def test_clone_copies_modes_symlinks_and_skips_special_files(store):
    src = meta("src")
    store.create(src)
    home = store.paths.session_dir(src.uuid)
    (home / "project").mkdir(mode=0o700)
    (home / "project" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(home / "project" / "run.sh", 0o751)
    os.symlink("project/run.sh", home / "link")
    os.mkfifo(home / "agent.fifo")
    dst = meta("dst")
    store.clone(src.uuid, dst)
    new = store.paths.session_dir(dst.uuid)
    assert (new / "project" / "run.sh").stat().st_mode & 0o777 == 0o751
    assert (new / "project").stat().st_mode & 0o777 == 0o700
    assert os.readlink(new / "link") == "project/run.sh"
    assert not (new / "agent.fifo").exists()
    assert store.load(dst.uuid).name == "dst"
    assert json.loads((home / "session.json").read_text())["name"] == "src"


def test_trash_moves_the_home_aside(store):
    m = meta()
    store.create(m)
    target = store.trash(m.uuid)
    assert target.parent == store.paths.trash_dir and (target / "session.json").exists()
    assert not store.exists(m.uuid)


def test_sweep_staging_removes_half_built_homes(store):
    store.paths.staging_dir.mkdir()
    (store.paths.staging_dir / new_uuid()).mkdir()
    assert len(store.sweep_staging()) == 1
    assert list(store.paths.staging_dir.iterdir()) == []
