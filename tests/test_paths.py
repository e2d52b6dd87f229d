"""Every path under one root (convocate.common.paths)."""

from pathlib import Path

import pytest

from convocate.common.errors import BadRequest
from convocate.common.paths import Paths

SID = "7f9df71a-dcaf-4e56-bb1d-6e1fe44e9a91"


def test_default_root_is_the_real_filesystem():
    p = Paths.from_env({})
    assert not p.relocated
    assert p.agent_id_file == Path("/etc/convocate-agent/agent-id")
    assert p.session_dir(SID) == Path("/home/claude") / SID
    assert p.status_socket == Path("/run/convocate/status.sock")


def test_the_agents_records_live_outside_every_home():
    """Issue 14: metadata and locks sit in the agent's state dir, which no session container mounts."""
    p = Paths.from_env({})
    assert p.session_record(SID) == Path("/var/lib/convocate-agent/sessions") / f"{SID}.json"
    assert p.lock_file(SID) == Path("/var/lib/convocate-agent/locks") / f"{SID}.lock"
    assert p.trash_records_dir == Path("/var/lib/convocate-agent/trash")
    for record in (p.session_record(SID), p.lock_file(SID), p.trash_records_dir):
        assert not record.is_relative_to(p.session_base)


def test_convocate_root_relocates_every_path(tmp_path):
    p = Paths.from_env({"CONVOCATE_ROOT": str(tmp_path)})
    assert p.relocated
    every = [getattr(p, name) for name in dir(p) if isinstance(getattr(type(p), name, None), property)
             and name != "relocated"]
    every += [p.session_dir(SID), p.lock_file(SID), p.session_record(SID), p.legacy_session_file(SID),
              p.legacy_lock_file(SID), p.agent_dir("abcd1234"), p.shell_to_agent_key("abcd1234")]
    for path in every:
        assert isinstance(path, Path) and path.is_relative_to(tmp_path), path


def test_session_paths_refuse_traversal():
    p = Paths.from_env({})
    for bad in ("..", "../x", SID + "/../.."):
        with pytest.raises(BadRequest):
            p.session_dir(bad)
        with pytest.raises(BadRequest):
            p.lock_file(bad)
        with pytest.raises(BadRequest):
            p.session_record(bad)
