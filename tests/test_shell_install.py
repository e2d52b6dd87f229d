"""``convocate install`` under a relocated root, as a real subprocess.

Relocated, install writes its files under the root but leaves users, /etc/shells, systemd and
dnsmasq alone; what it does to the live system is shown by tests/test_packages.py.
"""

from __future__ import annotations

import contextlib
import stat
import uuid

import docker.errors
import pytest

from convocate import image_status
from convocate.common import keys, messages
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.version import __version__
from tests.harness import REPO, LocalCluster


def run_install(root, *args, check=True, env=None):
    return LocalCluster(root=root, image="unused", extra_env=env or {}).run_role(
        "convocate", "install", *args, check=check)


def test_install_creates_the_shell_host_files_and_is_idempotent(tmp_path):
    first = run_install(tmp_path, "--no-image")
    etc = tmp_path / "etc" / "convocate"
    key = keys.load_private_key(etc / "status_host_ed25519_key")
    assert stat.S_IMODE((etc / "status_host_ed25519_key").stat().st_mode) == 0o600
    assert (etc / "status_authorized_keys").read_text() == ""
    assert (etc / "agents").is_dir()
    assert (tmp_path / "var/lib/convocate/dnsmasq-hosts").read_text() == ""
    assert "CONVOCATE_STATUS_LISTEN=:223" in (tmp_path / "etc/default/convocate").read_text().splitlines()
    assert "system users, /etc/shells, units and dnsmasq left untouched" in first.stdout
    assert "session image: not built (as asked)" in first.stdout

    second = run_install(tmp_path, "--no-image")
    assert second.stdout.strip().endswith("convocate install: nothing changed")
    assert keys.fingerprint(keys.load_private_key(etc / "status_host_ed25519_key")) == keys.fingerprint(key)


def test_install_applies_the_debconf_answers(tmp_path):
    run_install(tmp_path, "--no-image", "--domain", "Lab.Example.ORG", "--status-port", "2223")
    assert (tmp_path / "etc/convocate/domain").read_text() == "lab.example.org\n"
    assert "CONVOCATE_STATUS_LISTEN=:2223" in (tmp_path / "etc/default/convocate").read_text().splitlines()
    again = run_install(tmp_path, "--no-image", "--domain", "lab.example.org", "--status-port", "2223")
    assert again.stdout.strip().endswith("nothing changed")


@pytest.mark.parametrize("args, message", [
    (("--status-port", "0"), messages.BAD_INSTALL_PORT.format(option="--status-port", value="0")),
    (("--domain", "bad_domain"), "is not a valid DNS name"),
])
def test_install_refuses_a_bad_answer(tmp_path, args, message):
    result = run_install(tmp_path, "--no-image", *args, check=False)
    assert result.returncode == BadRequest.exit_code and message in result.stderr


def test_install_without_the_image_context_says_where_it_looked(tmp_path):
    result = run_install(tmp_path, "--image-context", str(tmp_path / "nowhere"), check=False)
    assert result.returncode != 0
    assert messages.IMAGE_CONTEXT_MISSING.format(path=tmp_path / "nowhere") in result.stderr


def test_install_without_docker_says_how_to_build_the_image_later(tmp_path):
    result = run_install(tmp_path, "--image-context", str(REPO / "packaging/image"),
                         env={"DOCKER": str(tmp_path / "no-docker"), "PATH": "/usr/sbin:/sbin"})
    assert f"the session image convocate:{__version__} was not built: Docker is not installed" in result.stdout
    assert f"{REPO}/packaging/image/build-image.sh --tag convocate:{__version__}" in result.stdout
    # The record says so too, for `convocate image-status`, `ls` and the TUI.
    record = image_status.load(tmp_path / "var/lib/convocate/image-build.json")
    assert record.state == image_status.FAILED and record.error == "Docker is not installed"


def test_an_explicit_image_build_without_docker_fails_with_exit_78(tmp_path):
    result = run_install(tmp_path, "--image", "--image-context", str(REPO / "packaging/image"), check=False,
                         env={"DOCKER": str(tmp_path / "no-docker"), "PATH": "/usr/sbin:/sbin"})
    assert result.returncode == ConfigError.exit_code
    assert f"the session image convocate:{__version__} was not built: Docker is not installed" in result.stderr


def test_install_prints_the_defaults_file_for_ucf_without_touching_anything(tmp_path):
    result = run_install(tmp_path, "--print-defaults", "--status-port", "2223", "--base-image", "local/base:12")
    lines = result.stdout.splitlines()
    assert "CONVOCATE_STATUS_LISTEN=:2223" in lines and "CONVOCATE_BASE_IMAGE=local/base:12" in lines
    assert lines[0].startswith("# Settings of convocate-status.service")
    assert not (tmp_path / "etc").exists()
    # The default answers give what older versions wrote, so ucf takes a file they left as its own.
    default = run_install(tmp_path, "--print-defaults", "--status-port", "", "--base-image", "").stdout
    assert [line for line in default.splitlines() if not line.startswith("#")] == ["CONVOCATE_STATUS_LISTEN=:223"]


@pytest.mark.docker
def test_install_builds_the_session_image_with_the_shipped_script(tmp_path, docker_client, session_image):
    # The stand-in image again under a tag of this test's own: every build step is in Docker's
    # cache from the test image, so this is quick, and the shared tag is not touched.
    tag = f"convocate:test-{uuid.uuid4().hex[:12]}"
    try:
        result = run_install(tmp_path, "--image-context", str(REPO / "packaging/image"), "--claude-code", "none",
                             "--image-tag", tag)
        assert f"session image {tag} built" in result.stdout
        assert docker_client.images.get(tag).labels["convocate.version"] == __version__
        again = run_install(tmp_path, "--image-context", str(REPO / "packaging/image"), "--claude-code", "none",
                            "--image-tag", tag)
        assert f"session image {tag} up to date" in again.stdout
        assert again.stdout.strip().endswith("nothing changed")
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)


@pytest.mark.docker
def test_on_a_terminal_the_image_build_is_one_progress_bar_with_docker_builds_steps(tmp_path, docker_client,
                                                                                      session_image):
    import pexpect

    from tests.harness import python

    tag = f"convocate:test-{uuid.uuid4().hex[:12]}"
    env = LocalCluster(root=tmp_path, image="unused").env
    try:
        child = pexpect.spawn(python(), ["-m", "convocate", "install", "--image", "--image-context",
                                         str(REPO / "packaging/image"), "--claude-code", "none", "--image-tag", tag],
                              env=env, cwd=str(REPO), encoding="utf-8", timeout=300, dimensions=(24, 160))
        child.expect(r"building the session image \[[#.]+\] +step \d+/\d+")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        screen = child.before
        assert f"session image {tag} built" in screen
        assert "Step 1/" not in screen  # docker build's own lines went into the bar, not onto the terminal
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)
