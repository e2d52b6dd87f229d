"""Session directories (convocate_agent.store)."""

import json
import os
import time

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
    store.paths.session_record(bad.uuid).write_text("{not json")
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
    assert json.loads(store.paths.session_record(src.uuid).read_text())["name"] == "src"
    assert not (new / "session.json").exists() and not (home / "session.json").exists()


def test_trash_moves_the_home_aside(store):
    m = meta()
    store.create(m)
    target = store.trash(m.uuid)
    assert target.parent == store.paths.trash_dir and not (target / "session.json").exists()
    assert not store.exists(m.uuid) and not store.paths.session_record(m.uuid).exists()
    assert [e.meta for e in store.trash_entries()] == [m]
    assert store.restore(target.name) == m and store.load(m.uuid) == m


def test_sweep_staging_removes_half_built_homes(store):
    store.paths.staging_dir.mkdir()
    (store.paths.staging_dir / new_uuid()).mkdir()
    assert len(store.sweep_staging()) == 1
    assert list(store.paths.staging_dir.iterdir()) == []


def test_the_record_lives_outside_the_home_and_the_home_is_never_read(store):
    m = meta("agents")
    store.create(m)
    home = store.paths.session_dir(m.uuid)
    assert store.paths.session_record(m.uuid).is_file() and os.listdir(home) == ["CLAUDE.md"]
    forged = dict(m.to_json(), name="forged", cpus=64, memory_mb=1 << 20)
    (home / "session.json").write_text(json.dumps(forged))
    store.save(m.with_changes(last_accessed=3))
    assert store.load(m.uuid).name == "agents" and store.load(m.uuid).cpus == 0.5
    assert json.loads((home / "session.json").read_text())["name"] == "forged"  # the session's file, untouched


def test_a_record_without_a_home_or_a_home_without_a_record_is_no_session(store):
    m = meta()
    store.create(m)
    os.rename(store.paths.session_dir(m.uuid), store.paths.session_base / "elsewhere")
    assert store.session_ids() == [] and not store.exists(m.uuid)
    with pytest.raises(NotFound):
        store.load(m.uuid)
    stray = store.paths.session_dir(new_uuid())
    stray.mkdir()
    notes = store.finish_interrupted()
    assert any("has no home" in n for n in notes) and any(str(stray) in n for n in notes)
    assert store.paths.session_record(m.uuid).exists()  # reported, not removed


def test_finish_interrupted_completes_a_delete_and_drops_a_create(store):
    deleted, created = meta("deleted"), meta("created")
    store.create(deleted)
    store.trash(deleted.uuid)
    trash_id = os.listdir(store.paths.trash_dir)[0]
    # the crash: the home went to the trash but the record did not follow
    os.rename(store.paths.trash_records_dir / f"{trash_id}.json", store.paths.session_record(deleted.uuid))
    # the crash: the record was written but the staged home not renamed into place
    store.save(created)
    (store.paths.staging_dir / created.uuid).mkdir(parents=True)
    store.finish_interrupted()
    store.sweep_staging()
    assert store.session_ids() == []
    assert not store.paths.session_record(created.uuid).exists()
    assert [e.meta for e in store.trash_entries()] == [deleted]


def test_clone_never_follows_a_symlink_out_of_the_home(store, tmp_path):
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "key").write_text("host key\n")
    src = meta("src")
    store.create(src)
    home = store.paths.session_dir(src.uuid)
    os.symlink(outside / "secret", home / "dir-link")
    os.symlink(outside / "secret" / "key", home / "file-link")
    dst = meta("dst")
    store.clone(src.uuid, dst)
    new = store.paths.session_dir(dst.uuid)
    assert os.readlink(new / "dir-link") == str(outside / "secret")
    assert os.readlink(new / "file-link") == str(outside / "secret" / "key")
    assert sorted(os.listdir(outside / "secret")) == ["key"]


def legacy_home(store, m, text=None):
    home = store.paths.session_dir(m.uuid)
    home.mkdir(parents=True)
    (home / "session.json").write_text(text if text is not None else json.dumps(m.to_json()))
    return home


def test_migrate_legacy_moves_valid_files_once_and_leaves_invalid_ones_out(store, tmp_path):
    old = SessionMeta(new_uuid(), "old", 1, 2, dns_name="web", port=1001, cpus=1.0, memory_mb=512)
    dup = SessionMeta(new_uuid(), "dup", 5, 6, dns_name="web", port=1001, cpus=1.0, memory_mb=512)
    legacy_home(store, old)
    legacy_home(store, dup)
    bad = legacy_home(store, meta("bad"), json.dumps(dict(meta("bad").to_json(), cpus="lots")))
    other = meta("other")
    wrong = legacy_home(store, other, json.dumps(dict(other.to_json(), uuid=new_uuid())))
    (tmp_path / "target.json").write_text(json.dumps(old.to_json()))
    linked = meta("linked")
    store.paths.session_dir(linked.uuid).mkdir()
    os.symlink(tmp_path / "target.json", store.paths.session_dir(linked.uuid) / "session.json")

    report = store.migrate_legacy()
    assert sorted(report.migrated) == sorted([old.uuid, dup.uuid])
    assert sorted(u for u, _ in report.refused) == sorted([bad.name, wrong.name, linked.uuid])
    assert store.load(old.uuid) == old
    assert store.load(dup.uuid) == dup.with_changes(dns_name="", port=0)  # the older session keeps them
    assert len(report.notes) == 2
    assert not (store.paths.session_dir(old.uuid) / "session.json").exists()
    assert (bad / "session.json").exists() and not store.exists(bad.name)
    assert sorted(store.session_ids()) == sorted([old.uuid, dup.uuid])

    # once: a session.json the session writes afterwards is never read
    (store.paths.session_dir(old.uuid) / "session.json").write_text(json.dumps(dict(old.to_json(), name="forged")))
    again = store.migrate_legacy()
    assert again.migrated == [] and store.load(old.uuid).name == "old"


def test_migrate_legacy_moves_the_trash_metadata_too(store):
    m = meta("trashed")
    store.paths.trash_dir.mkdir(parents=True)
    entry = store.paths.trash_dir / f"{m.uuid}.123"
    entry.mkdir()
    (entry / "session.json").write_text(json.dumps(m.to_json()))
    assert store.migrate_legacy().trash_migrated == [entry.name]
    assert [e.meta for e in store.trash_entries()] == [m]
    assert store.restore(entry.name) == m and store.exists(m.uuid)


def test_session_ids_skips_the_known_ones_without_looking_at_their_homes(store, monkeypatch):
    known, new = meta("known"), meta("new")
    store.create(known)
    store.create(new)
    looked_at: list[str] = []
    real = store._home_exists
    monkeypatch.setattr(store, "_home_exists", lambda sid: looked_at.append(sid) or real(sid))
    assert store.session_ids(excluding={known.uuid}) == [new.uuid]
    assert looked_at == [new.uuid]


def test_the_in_memory_state_adopts_a_record_written_by_another_process(store):
    from convocate_agent.state import SessionState

    state = SessionState(store, runtime=None)
    first = meta("first")
    store.create(first)
    assert [m.uuid for m in state.metas()] == [first.uuid]
    other = SessionStore(store.paths, UID, GID)  # e.g. convocate-host migrate-session: no listener of ours
    second = meta("second")
    other.create(second)
    assert sorted(m.uuid for m in state.metas()) == sorted([first.uuid, second.uuid])
    assert state.meta(second.uuid) == second


def _records_mtime(store, mtime_ns: int) -> None:
    os.utime(store.paths.session_records_dir, ns=(mtime_ns, mtime_ns))


def test_a_record_written_in_the_same_mtime_tick_as_the_last_listing_is_still_adopted(store):
    """Git's racily-clean rule: a listing that started within RACY_MTIME_NS of the directory's mtime is
    repeated even when the mtime did not change (another process's write landed in the same tick)."""
    from convocate_agent.state import SessionState

    state = SessionState(store, runtime=None)
    store.create(meta("first"))
    tick = time.time_ns() + 10**9  # the listing below starts before this mtime: within any tick's margin
    _records_mtime(store, tick)
    assert len(state.metas()) == 1
    second = meta("second")
    SessionStore(store.paths, UID, GID).create(second)  # no listener of ours
    _records_mtime(store, tick)  # as if stamped in the same tick
    assert state.meta(second.uuid) == second


def test_a_settled_records_directory_is_not_listed_again_until_it_changes(store, monkeypatch):
    from convocate_agent.state import SessionState

    state = SessionState(store, runtime=None)
    store.create(meta("first"))
    _records_mtime(store, time.time_ns() - 10**9)  # changed a second ago: past any tick
    assert len(state.metas()) == 1
    listings: list[int] = []
    real = store.session_ids
    monkeypatch.setattr(store, "session_ids", lambda **kw: listings.append(1) or real(**kw))
    for _ in range(5):
        assert len(state.metas()) == 1
    assert listings == []
    third = meta("third")
    SessionStore(store.paths, UID, GID).create(third)  # the mtime moves on: listed once, adopted
    assert state.meta(third.uuid) == third and len(listings) == 1
