"""The Claude Code pin: resolved against a fake npm registry on loopback, written atomically, read by the build.

The registry is a real HTTP server on 127.0.0.1 (port 0) that answers as registry.npmjs.org does
for ``GET /@anthropic-ai/claude-code`` (the abbreviated document with ``dist-tags``), or with a
bad version, a 404 or nothing at all. The pin flows into ``build-image.sh --print-build`` (build
args, label, context hash) from a copy of the build context, so the repository's pin is never
touched; ``./build.sh image --claude-code latest`` against an unreachable registry leaves it alone.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from convocate.common import messages
from convocate.common.errors import BadRequest, ConfigError, Unreachable
from convocate_host import claude_pin
from tests.harness import REPO

IMAGE_DIR = REPO / "packaging" / "image"


class FakeRegistry:
    """An npm registry on loopback serving one answer for the claude-code package."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b""
        self.requests: list[tuple[str, str]] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                registry.requests.append((self.path, self.headers.get("Accept", "")))
                if self.path != "/@anthropic-ai/claude-code":
                    self.send_error(404, "Not found")
                    return
                self.send_response(registry.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(registry.body)))
                self.end_headers()
                self.wfile.write(registry.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, latest: object, status: int = 200) -> None:
        self.status = status
        self.body = json.dumps({"name": "@anthropic-ai/claude-code", "dist-tags": {"latest": latest, "next": "9.9.9"},
                                "versions": {"2.1.330": {}}}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.close()


@pytest.fixture
def pin_file(tmp_path: Path) -> Path:
    path = tmp_path / "claude-code.version"
    path.write_text("2.1.330\n")
    return path


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_latest_is_resolved_from_the_registry_and_pinned(registry, pin_file):
    registry.answer("2.1.331")
    old, new = claude_pin.pin("latest", pin_file, registry.url)
    assert (old, new) == ("2.1.330", "2.1.331")
    assert pin_file.read_text() == "2.1.331\n"
    assert [p for p, _ in registry.requests] == ["/@anthropic-ai/claude-code"]
    assert registry.requests[0][1].startswith("application/vnd.npm.install-v1+json")  # the small document
    assert claude_pin.pin_message(old, new, pin_file) == f"Claude Code 2.1.330 \u2192 2.1.331 (pinned in {pin_file})"
    assert list(pin_file.parent.iterdir()) == [pin_file]  # no temporary file left beside it


def test_the_registry_comes_from_npm_config_registry(registry, pin_file, monkeypatch):
    registry.answer("3.0.0")
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", registry.url + "/")
    assert claude_pin.pin("latest", pin_file) == ("2.1.330", "3.0.0")


def test_the_same_version_leaves_the_file_alone(registry, pin_file):
    registry.answer("2.1.330")
    before = pin_file.stat().st_mtime_ns
    assert claude_pin.pin("latest", pin_file, registry.url) == ("2.1.330", "2.1.330")
    assert pin_file.stat().st_mtime_ns == before
    assert "already pinned" in claude_pin.pin_message("2.1.330", "2.1.330", pin_file)


@pytest.mark.parametrize("latest", ["2.1", "v2.1.331", "2.1.331-beta.1", "^2.1.0", "", 2, None, "2.1.331\n; rm -rf /"])
def test_a_latest_that_is_no_plain_semver_is_refused_and_the_pin_kept(registry, pin_file, latest):
    registry.answer(latest)
    with pytest.raises(BadRequest, match="not a plain X.Y.Z version") as caught:
        claude_pin.pin("latest", pin_file, registry.url)
    assert "the pin is unchanged" in str(caught.value)
    assert pin_file.read_text() == "2.1.330\n"


def test_an_answer_without_dist_tags_is_refused(registry, pin_file):
    registry.status, registry.body = 200, b"<html>proxy login</html>"
    with pytest.raises(BadRequest, match="no dist-tags.latest"):
        claude_pin.pin("latest", pin_file, registry.url)
    assert pin_file.read_text() == "2.1.330\n"


def test_a_404_is_a_clear_error_and_the_pin_kept(registry, pin_file):
    with pytest.raises(Unreachable, match=r"HTTP 404") as caught:
        claude_pin.pin("latest", pin_file, registry.url + "/no-such-prefix")
    assert f"{registry.url}/no-such-prefix/@anthropic-ai/claude-code" in str(caught.value)
    assert pin_file.read_text() == "2.1.330\n"


def test_an_unreachable_registry_is_a_clear_error_and_the_pin_kept(pin_file):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(Unreachable, match="Connection refused") as caught:
        claude_pin.pin("latest", pin_file, url, timeout_s=5)
    assert str(caught.value) == messages.CLAUDE_CODE_REGISTRY_FAILED.format(
        url=f"{url}/@anthropic-ai/claude-code", reason="[Errno 111] Connection refused")
    assert pin_file.read_text() == "2.1.330\n"


def test_an_explicit_version_is_pinned_without_asking_anyone(pin_file):
    url = f"http://127.0.0.1:{closed_port()}"  # would fail if it were asked
    assert claude_pin.pin("2.2.0", pin_file, url) == ("2.1.330", "2.2.0")
    with pytest.raises(BadRequest, match="not a plain X.Y.Z"):
        claude_pin.pin("2.2", pin_file, url)
    assert pin_file.read_text() == "2.2.0\n"


def test_a_broken_pin_file_is_a_config_error(tmp_path):
    bad = tmp_path / "claude-code.version"
    bad.write_text("latest\n")
    with pytest.raises(ConfigError, match="must hold one X.Y.Z line"):
        claude_pin.read_pin(bad)
    with pytest.raises(ConfigError):
        claude_pin.read_pin(tmp_path / "missing")


def test_the_command_line_prints_the_move(registry, pin_file, capsys):
    registry.answer("2.1.400")
    assert claude_pin.main(["pin", "latest", "--pin-file", str(pin_file), "--registry", registry.url]) == 0
    assert capsys.readouterr().out == f"Claude Code 2.1.330 \u2192 2.1.400 (pinned in {pin_file})\n"
    assert claude_pin.main(["pin", "latest", "--pin-file", str(pin_file),
                            "--registry", f"http://127.0.0.1:{closed_port()}"]) == Unreachable.exit_code
    assert "the pin is unchanged" in capsys.readouterr().err
    assert pin_file.read_text() == "2.1.400\n"


# --- the pin in the build -------------------------------------------------------------------------------
def test_the_pin_is_the_only_place_the_version_is_written():
    assert claude_pin.read_pin() == (IMAGE_DIR / "claude-code.version").read_text().strip()
    dockerfile = (IMAGE_DIR / "Dockerfile").read_text()
    assert dockerfile.count("ARG CLAUDE_CODE_VERSION\n") == 2  # both stages, no default
    version = claude_pin.read_pin()
    for path in (IMAGE_DIR / "Dockerfile", IMAGE_DIR / "build-image.sh", REPO / "build.sh"):
        assert version not in path.read_text(), path


def print_build(context: Path, *args: str) -> dict[str, list[str]]:
    result = subprocess.run([str(context / "build-image.sh"), "--tag", "convocate-test-pin:print", "--print-build",
                             "--convocate-version", "0.0.0-test", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("build-image:"):
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.docker
def test_the_pin_flows_into_the_build_args_label_and_context_hash(tmp_path, docker_client):
    context = tmp_path / "image"
    shutil.copytree(IMAGE_DIR, context, symlinks=True)
    pinned = claude_pin.read_pin()
    first = print_build(context)
    assert first["claude_code"] == [pinned]
    assert f"CLAUDE_CODE_VERSION={pinned}" in first["build_arg"]
    assert f"convocate.claude-code={pinned}" in first["label"]
    standin = print_build(context, "--claude-code", "none")

    (context / "claude-code.version").write_text("9.8.7\n")
    moved = print_build(context)
    assert moved["claude_code"] == ["9.8.7"] and "CLAUDE_CODE_VERSION=9.8.7" in moved["build_arg"]
    assert "convocate.claude-code=9.8.7" in moved["label"]
    assert moved["context_hash"] != first["context_hash"]  # a new pin rebuilds the real image
    assert print_build(context, "--claude-code", "none")["context_hash"] == standin["context_hash"]  # not the stand-in
    assert print_build(context, "--claude-code", pinned)["context_hash"] == first["context_hash"]  # the same build

    (context / "claude-code.version").write_text("latest\n")
    result = subprocess.run([str(context / "build-image.sh"), "--tag", "convocate-test-pin:print", "--print-build"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "must hold one version like X.Y.Z, got 'latest'" in result.stderr


def test_build_sh_image_with_an_unreachable_registry_builds_nothing_and_keeps_the_pin():
    before = (IMAGE_DIR / "claude-code.version").read_bytes()
    env = {**os.environ, "NPM_CONFIG_REGISTRY": f"http://127.0.0.1:{closed_port()}"}
    result = subprocess.run([str(REPO / "build.sh"), "image", "--claude-code", "latest"], capture_output=True,
                            text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "cannot ask the npm registry" in result.stderr and "Connection refused" in result.stderr
    assert "the Claude Code pin was not changed; nothing was built" in result.stderr
    assert "docker build" not in result.stdout + result.stderr
    assert (IMAGE_DIR / "claude-code.version").read_bytes() == before
