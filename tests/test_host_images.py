"""Session image transfer: saved on the shell host, streamed to an agent, checked by SHA-256 before it loads.

Both ends are this machine (:class:`LocalTarget`) and its real dockerd; the agent end is the real
``convocate-agent load-image`` under a relocated root. A throwaway tag of the base image stands for
the session image, and is removed from Docker between saving and sending, so "loaded" can only mean
the transfer loaded it. A tampered archive is refused with nothing loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common.errors import BadRequest
from convocate.common.paths import Paths
from convocate.common.progress import format_bytes
from convocate_agent.images import load_image
from convocate_host import images
from convocate_host.report import LiveReport
from convocate_host.target import HostError, LocalTarget
from tests.harness import python
from tests.systemd_hosts import BASE_IMAGE, DOCKER

pytestmark = pytest.mark.docker


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check)


@pytest.fixture
def scratch_tag() -> Iterator[str]:
    """A tag of the base image made for this test; removed at teardown."""
    tag = f"convocate-test-transfer:{uuid.uuid4().hex[:10]}"
    docker("tag", BASE_IMAGE, tag)
    yield tag
    docker("image", "rm", tag, check=False)


def present(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


@pytest.fixture
def archive_dir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "shell-archives"
    monkeypatch.setattr(images, "ARCHIVE_DIR", str(directory))
    return directory


def agent_command(root: Path) -> tuple[str, ...]:
    return ("env", f"CONVOCATE_ROOT={root}", python(), "-m", "convocate_agent")


async def test_an_image_goes_to_the_agent_verified_and_only_when_missing(tmp_path, scratch_tag, archive_dir):
    shell, agent = LocalTarget("127.0.0.1"), LocalTarget("127.0.0.1")
    root = tmp_path / "agent"
    report, out = LiveReport("test", io.StringIO()), io.StringIO()
    archive = await images.ensure_archive(shell, scratch_tag, report)
    assert Path(archive.path).stat().st_size == archive.size and report.changes == 1
    again = await images.ensure_archive(shell, scratch_tag, report)
    assert again == archive and report.changes == 1  # the archive of the same image is kept
    docker("image", "rm", scratch_tag)
    assert not present(scratch_tag)

    answer = await images.send_archive(shell, agent, archive, command=agent_command(root), progress=out)
    assert answer["tag"] == scratch_tag and answer["bytes"] == archive.size and present(scratch_tag)
    total = format_bytes(archive.size)
    assert f"sending {scratch_tag} [" in out.getvalue() and f" 100% {total}/{total} " in out.getvalue()  # got to the end
    assert "\r" not in out.getvalue()  # not a terminal: plain lines, no redraws
    assert list((root / "var" / "lib" / "convocate-agent" / "incoming").iterdir()) == []  # spool emptied
    # The agent has it now: ensure_agent_image sends nothing.
    quiet = LiveReport("agent", io.StringIO())
    assert await images.ensure_agent_image(shell, agent, scratch_tag, quiet, command=agent_command(root),
                                           progress=None) is False
    assert quiet.changes == 0


async def test_a_tampered_archive_is_refused_and_nothing_is_loaded(tmp_path, scratch_tag, archive_dir):
    shell, agent = LocalTarget("127.0.0.1"), LocalTarget("127.0.0.1")
    archive = await images.ensure_archive(shell, scratch_tag, LiveReport("test", io.StringIO()))
    docker("image", "rm", scratch_tag)
    data = bytearray(Path(archive.path).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: the shell's record still matches
    Path(archive.path).write_bytes(bytes(data))
    with pytest.raises(HostError) as refused:
        await images.send_archive(shell, agent, archive, command=agent_command(tmp_path / "agent"))
    assert "is corrupt" in str(refused.value) and "nothing was loaded" in str(refused.value)
    assert not present(scratch_tag)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_load_image_refuses_a_bad_digest_before_docker_sees_anything(tmp_path, scratch_tag):
    paths = Paths(tmp_path)
    paths.agent_etc.mkdir(parents=True)
    saved = subprocess.run([DOCKER, "save", scratch_tag], capture_output=True, check=True).stdout
    docker("image", "rm", scratch_tag)
    with pytest.raises(BadRequest, match="is not a SHA-256 digest"):
        load_image(paths, io.BytesIO(saved), sha256="abc", tag=scratch_tag)
    with pytest.raises(BadRequest, match="nothing was loaded"):
        load_image(paths, io.BytesIO(saved), sha256="0" * 64, tag=scratch_tag)
    assert not present(scratch_tag) and list(paths.agent_image_spool.iterdir()) == []
    terminal = _Terminal()
    loaded = load_image(paths, io.BytesIO(saved), sha256=hashlib.sha256(saved).hexdigest(), tag=scratch_tag,
                        set_current=True, size_hint=len(saved), progress=terminal)
    drawn = terminal.getvalue()
    assert f"receiving {scratch_tag} [" in drawn and f"loading {scratch_tag} [" in drawn and drawn.count("\n") == 2
    finals = [line.rsplit("\r", 1)[-1] for line in drawn.split("\n")[:2]]  # each bar's last redraw
    assert all("] 100% " in final for final in finals), finals  # both reached the end (cut at 80 columns here)
    assert present(scratch_tag) and loaded.current_set and paths.current_image_file.read_text() == f"{scratch_tag}\n"
    info = subprocess.run([*agent_command(tmp_path), "image-info", scratch_tag], capture_output=True, text=True)
    assert json.loads(info.stdout) == {"tag": scratch_tag, "present": True, "id": loaded.image_id}
