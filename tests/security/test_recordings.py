"""``recording_read`` and ``recording_list`` reach the sessions' recordings and nothing else (issue 19).

The attacker holds a key the agent accepts (a compromised shell-side process): it may read every
recording, but no file name it sends may reach anything else the agent's user can read, above all
the agent's credential store (``/var/lib/convocate-agent/credentials/``, which no op ever returns):
not by ``../``, an absolute path, a NUL, a planted symlink, a FIFO (which would block a read), nor a
recordings directory that is itself a symlink.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from convocate.common import asciicast
from tests.conftest import connect, rpc, rpc_ok
from tests.harness import LocalCluster

pytestmark = pytest.mark.docker

SECRET = "sk-ant-recordings-" + "r" * 40
T0 = 1_795_000_000.0


async def _session_with_a_recording(cluster: LocalCluster, conn, name: str) -> tuple[str, os.PathLike]:
    await rpc_ok(conn, "credential_set", {"name": "default", "kind": "api_key", "secret": SECRET})
    sid = (await rpc_ok(conn, "create", {"name": name}))["uuid"]
    directory = cluster.paths.session_recordings_dir(sid)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"version": 2, "width": 80, "height": 24, "timestamp": T0}
    (directory / asciicast.file_name(T0)).write_text(json.dumps(header) + "\n" + '[0.1, "o", "real"]\n')
    return sid, directory


def _credential_files(cluster: LocalCluster) -> list[str]:
    return sorted(str(p) for p in cluster.paths.agent_credentials_dir.iterdir())


@pytest.mark.parametrize("file", [
    "../../credentials/default.json", "/var/lib/convocate-agent/credentials/default.json", "..", ".",
    "20261118T000000.000000Z.cast\x00", "20261118T000000.000000Z.cast/../../credentials/default.json",
    "x/20261118T000000.000000Z.cast", "20261118T000000.000000Z.json", "20261118T000000.000000Z.cast\n",
])
async def test_a_file_that_is_not_a_bare_recording_name_is_refused(cluster, file):
    async with connect(cluster) as conn:
        sid, _ = await _session_with_a_recording(cluster, conn, f"rec-bad-{uuid.uuid4().hex[:6]}")
        response = await rpc(conn, "recording_read", {"id": sid, "file": file})
    assert response["code"] == "bad_request" and "is not a recording's file name" in response["error"]
    assert SECRET not in json.dumps(response)


async def test_planted_symlinks_fifos_and_a_symlinked_directory_are_not_followed(cluster):
    async with connect(cluster) as conn:
        sid, directory = await _session_with_a_recording(cluster, conn, "rec-symlink")
        credential = _credential_files(cluster)[0]
        link = directory / asciicast.file_name(T0 + 1)
        link.symlink_to(credential)
        fifo = directory / asciicast.file_name(T0 + 2)
        os.mkfifo(fifo)
        other = str(uuid.uuid4())  # a whole recordings directory that is a symlink to the store
        cluster.paths.session_recordings_dir(other).symlink_to(cluster.paths.agent_credentials_dir)
        files = await rpc_ok(conn, "recording_list", {"id": sid})
        assert [f["file"] for f in files] == [asciicast.file_name(T0)]  # neither the link nor the FIFO
        for name in (link.name, fifo.name):
            response = await rpc(conn, "recording_read", {"id": sid, "file": name})
            assert response["code"] == "bad_request", response
            assert "is not a regular file" in response["error"]
        assert (await rpc(conn, "recording_list", {"id": other}))["code"] == "not_found"
        assert (await rpc(conn, "recording_read", {"id": other, "file": link.name}))["code"] == "not_found"
        grep = await rpc_ok(conn, "recording_grep", {"pattern": "sk-ant"})
        assert grep["matches"] == []
        bad_id = await rpc(conn, "recording_list", {"id": "../credentials"})
        assert bad_id["code"] == "bad_request" and "is not a UUIDv4" in bad_id["error"]
        # the agent still answers: the FIFO was never opened for a blocking read
        assert (await rpc_ok(conn, "recording_read", {"id": sid, "file": files[0]["file"]}))["data"].endswith(
            '"real"]\n')
