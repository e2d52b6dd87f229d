"""``convocate-host update --claude-code``: build the image with a Claude Code version on the shell host, roll it.

The shell host and the agent host are this machine (:class:`LocalTarget`) and its real dockerd; the
build is the real ``build-image.sh`` from the repository's context with the stand-in (``none``), the
agent end the real ``convocate-agent image-info`` under a relocated root, ``current-image`` a file
under ``tmp_path``. Both ends share one dockerd, so the agent already has the image and nothing is
streamed (the transfer itself is tests/test_host_images.py's). The dry run plans the build and the
roll and changes nothing; the command line refuses a bad version, an unreachable registry, and a
shell host without the convocate package (a bare Debian container reached over SSH).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common import messages
from convocate_host import claude_roll
from convocate_host.dryrun import DryRunTarget
from convocate_host.report import LiveReport
from convocate_host.target import LocalTarget
from tests.harness import REPO, python
from tests.systemd_hosts import DOCKER
from tests.test_host_cli import convocate_host, host_container, ssh_host  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker

CONTEXT = REPO / "packaging" / "image"
TAG = "convocate-test-pin:roll-standin"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check)


def present(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


@pytest.fixture
def roll_tag() -> Iterator[str]:
    """The tag the test builds; removed at teardown (an untag when another tag has the same image)."""
    assert not present(TAG)
    yield TAG
    docker("image", "rm", TAG, check=False)


def agent_command(root: Path) -> tuple[str, ...]:
    return ("env", f"CONVOCATE_ROOT={root}", python(), "-m", "convocate_agent")


def test_the_tag_names_both_versions():
    assert claude_roll.claude_code_tag("0.1.0", "2.1.331") == "convocate:0.1.0-cc2.1.331"


async def test_a_dry_run_plans_the_build_and_the_roll_and_changes_nothing(tmp_path, roll_tag):
    shell = DryRunTarget(LocalTarget("127.0.0.1"))
    out = io.StringIO()
    report = LiveReport("local host", out)
    report.dry_run = True
    shell.on_plan = report.planned
    current = tmp_path / "current-image"
    tag = await claude_roll.build_image(shell, "2.1.331", report, tag=roll_tag, context=CONTEXT,
                                        cache_dir=tmp_path / "cache", convocate_version="0.1.0")
    assert tag == roll_tag
    changed = await claude_roll.roll_to_agent(shell, shell, tag, "2.1.331", report, shell_report=report,
                                              current_image=str(current), owner="root:root")
    assert changed
    planned = [line for kind, line in report.entries if kind == "planned"]
    assert any(f"build-image.sh --tag {roll_tag} --claude-code 2.1.331 --convocate-version 0.1.0" in line
               for line in planned), planned
    assert any(str(current) in line for line in planned), planned
    text = out.getvalue()
    assert "would   session image convocate-test-pin:roll-standin would be built with Claude Code 2.1.331" in text
    assert f"would   image {roll_tag} would be sent once built" in text
    assert messages.CLAUDE_CODE_ROLL_NOTE.format(version="2.1.331") in text
    assert not present(roll_tag) and not current.exists() and not (tmp_path / "cache").exists()


async def test_a_roll_builds_the_image_with_that_version_and_makes_it_current(tmp_path, roll_tag):
    shell = LocalTarget("127.0.0.1")
    root = tmp_path / "agent"
    current = tmp_path / "current-image"
    out = io.StringIO()
    report = LiveReport("local host", out)
    tag = await claude_roll.build_image(shell, "none", report, tag=roll_tag, context=CONTEXT,
                                        cache_dir=REPO / ".cache" / "images", convocate_version="0.1.0")
    assert tag == roll_tag and present(roll_tag)
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", roll_tag).stdout)
    assert labels["convocate.claude-code"] == "none" and labels["convocate.version"] == "0.1.0"
    assert await claude_roll.image_claude_code(shell, roll_tag) == "none"
    assert await claude_roll.roll_to_agent(shell, shell, tag, "none", report, shell_report=report,
                                           command=agent_command(root), current_image=str(current),
                                           owner="root:root")
    assert current.read_text() == f"{roll_tag}\n"
    assert f"image {roll_tag} present" in out.getvalue()  # same dockerd: nothing to send
    assert messages.CLAUDE_CODE_ROLL_NOTE.format(version="none") in out.getvalue()

    again = LiveReport("local host", io.StringIO())
    await claude_roll.build_image(shell, "none", again, tag=roll_tag, context=CONTEXT,
                                  cache_dir=REPO / ".cache" / "images", convocate_version="0.1.0")
    assert not await claude_roll.roll_to_agent(shell, shell, tag, "none", again, shell_report=again,
                                               command=agent_command(root), current_image=str(current),
                                               owner="root:root")
    assert again.changes == 0, again.entries  # up to date: build skipped, image present, current-image kept


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_command_line_refuses_a_version_that_is_not_plain_semver():
    done = await convocate_host("update", "--claude-code", "2.1", "--all", "--dry-run", "--json")
    assert done.returncode == 2, done
    answer = json.loads(done.stdout)
    assert answer == {"ok": False, "code": "bad_request",
                      "error": messages.CLAUDE_CODE_BAD_VERSION.format(value="2.1")}


async def test_the_command_line_says_when_the_registry_cannot_be_asked():
    url = f"http://127.0.0.1:{closed_port()}"
    done = await convocate_host("update", "--claude-code", "latest", "--registry", url, "--all", "--dry-run")
    assert done.returncode == 69, done
    assert "cannot ask the npm registry" in done.stderr and "Connection refused" in done.stderr


async def test_a_shell_host_without_the_convocate_package_is_told_so(ssh_host):  # noqa: F811
    options, _ = ssh_host
    host = options[options.index("--host") + 1]
    done = await convocate_host("update", "--claude-code", "2.1.331", "--shell-host", host, *options,
                                "--dry-run", "--json")
    assert done.returncode == 2, done
    answer = json.loads(done.stdout)
    assert answer["code"] == "bad_request" and "has no convocate package" in answer["error"]
