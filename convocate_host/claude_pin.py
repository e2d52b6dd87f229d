"""The Claude Code pin: ``packaging/image/claude-code.version``, read and moved.

The session image installs ``@anthropic-ai/claude-code`` from npm at the one version written in
``claude-code.version`` beside ``build-image.sh`` (packaging/image/README.md). This module resolves
a version to pin (``latest`` asks the npm registry for the package's ``dist-tags.latest``) and
rewrites the pin atomically. ``./build.sh image --claude-code VERSION|latest`` runs it as
``python -m convocate_host.claude_pin``; ``convocate-host update --claude-code latest`` uses
:func:`resolve` too. Only the standard library: it runs before the venv has anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from convocate.common import messages
from convocate.common.cli import run_main
from convocate.common.errors import BadRequest, ConfigError, Unreachable
from convocate.common.fsutil import atomic_write

PACKAGE = "@anthropic-ai/claude-code"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
#: The pin in the source tree, relative to the repository (what the messages name).
PIN_RELATIVE = "packaging/image/claude-code.version"
PIN_FILE = Path(__file__).resolve().parent.parent / PIN_RELATIVE
LATEST = "latest"
#: A plain semantic version (semver.org §2: MAJOR.MINOR.PATCH, no leading zeros), no pre-release.
PLAIN_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
#: npm's abbreviated metadata (the "corgi" document, npm registry API): dist-tags without every manifest.
ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"
TIMEOUT_S = 20.0
#: Largest registry answer read, in bytes (the abbreviated document of claude-code is a few MB).
MAX_ANSWER = 64 << 20


def check_version(value: str) -> str:
    """``value`` if it is a plain semver ``X.Y.Z`` (semver.org §2), else an error.

    Raises:
        BadRequest: anything else (a range, a tag, a pre-release, text).
    """
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not PLAIN_SEMVER.fullmatch(text):
        raise BadRequest(messages.CLAUDE_CODE_BAD_VERSION.format(value=value))
    return text


def registry_url(registry: str | None = None) -> str:
    """The registry base URL: ``registry``, else ``$NPM_CONFIG_REGISTRY`` (npm's own setting), else npmjs.org."""
    base = registry or os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry") \
        or DEFAULT_REGISTRY
    return base.rstrip("/")


def latest_version(registry: str | None = None, *, timeout_s: float = TIMEOUT_S) -> str:
    """The newest Claude Code version: ``dist-tags.latest`` of the package's registry document.

    Args:
        registry: Registry base URL (see :func:`registry_url`).
        timeout_s: Connect and read timeout, in seconds.

    Returns:
        The version, checked to be a plain semver.

    Raises:
        Unreachable: the registry could not be reached, or answered with an HTTP error.
        BadRequest: the answer is not JSON, has no ``dist-tags.latest``, or that is no plain semver.
    """
    url = f"{registry_url(registry)}/{PACKAGE}"
    if not url.startswith(("http://", "https://")):
        raise BadRequest(messages.CLAUDE_CODE_REGISTRY_FAILED.format(url=url, reason="not an http(s) URL"))
    request = urllib.request.Request(url, headers={"Accept": ACCEPT, "User-Agent": "convocate-claude-pin"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 (http(s) only, above)
            body = answer.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as e:
        raise Unreachable(messages.CLAUDE_CODE_REGISTRY_FAILED.format(url=url, reason=f"HTTP {e.code} {e.reason}")) \
            from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise Unreachable(messages.CLAUDE_CODE_REGISTRY_FAILED.format(url=url, reason=reason)) from e
    if len(body) > MAX_ANSWER:
        raise BadRequest(messages.CLAUDE_CODE_REGISTRY_BAD.format(url=url, reason=f"more than {MAX_ANSWER} bytes"))
    try:
        latest = json.loads(body)["dist-tags"]["latest"]
    except (ValueError, KeyError, TypeError) as e:
        raise BadRequest(messages.CLAUDE_CODE_REGISTRY_BAD.format(url=url, reason="no dist-tags.latest in it")) \
            from e
    if not isinstance(latest, str) or not PLAIN_SEMVER.fullmatch(latest):
        raise BadRequest(messages.CLAUDE_CODE_REGISTRY_BAD.format(
            url=url, reason=f"dist-tags.latest is {json.dumps(latest)}, not a plain X.Y.Z version"))
    return latest


def resolve(wanted: str, registry: str | None = None, *, timeout_s: float = TIMEOUT_S) -> str:
    """``latest`` → the registry's newest version; a version → itself, checked.

    Raises:
        Unreachable, BadRequest: see :func:`latest_version` and :func:`check_version`.
    """
    if wanted == LATEST:
        return latest_version(registry, timeout_s=timeout_s)
    return check_version(wanted)


def read_pin(path: Path = PIN_FILE) -> str:
    """The pinned version.

    Raises:
        ConfigError: the file is missing or does not hold one plain semver.
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(messages.CLAUDE_CODE_PIN_UNREADABLE.format(path=path, reason=e.strerror or e)) from e
    if not PLAIN_SEMVER.fullmatch(text):
        raise ConfigError(messages.CLAUDE_CODE_PIN_UNREADABLE.format(path=path, reason=f"it holds {text!r}"))
    return text


def pin(wanted: str, path: Path = PIN_FILE, registry: str | None = None, *,
        timeout_s: float = TIMEOUT_S) -> tuple[str, str]:
    """Resolve ``wanted`` and write it to the pin file (atomically: temp file, fsync, rename).

    Nothing is written when resolving fails, so a network error or a bad answer leaves the pin alone.

    Args:
        wanted: ``latest`` or a plain ``X.Y.Z``.
        path: The pin file.
        registry: Registry base URL for ``latest``.
        timeout_s: Registry timeout, in seconds.

    Returns:
        ``(old, new)`` versions; the file is left untouched when they are equal.

    Raises:
        Unreachable, BadRequest: resolving failed; ConfigError: the current pin is unreadable.
    """
    new = resolve(wanted, registry, timeout_s=timeout_s)
    old = read_pin(path)
    if new != old:
        atomic_write(path, f"{new}\n".encode(), mode=0o644)
    return old, new


def pin_message(old: str, new: str, path: Path = PIN_FILE) -> str:
    """``Claude Code 2.1.330 → 2.1.331 (pinned in packaging/image/claude-code.version)``."""
    shown = PIN_RELATIVE if path.resolve() == PIN_FILE else str(path)
    if old == new:
        return messages.CLAUDE_CODE_PIN_KEPT.format(version=new, path=shown)
    return messages.CLAUDE_CODE_PINNED.format(old=old, new=new, path=shown)


USAGE = f"""\
usage: python -m convocate_host.claude_pin pin (latest|VERSION) [--pin-file FILE] [--registry URL]
       python -m convocate_host.claude_pin show [--pin-file FILE]

Move or show the Claude Code pin ({PIN_RELATIVE}). 'latest' asks the npm
registry (--registry, else $NPM_CONFIG_REGISTRY, else {DEFAULT_REGISTRY}) for
{PACKAGE}'s dist-tags.latest. A network error or a bad answer leaves the pin alone.
"""


def main(argv: list[str] | None = None) -> int:
    """The command line (``./build.sh image --claude-code`` runs ``pin``); returns the exit status."""

    def run(args: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="claude_pin", add_help=False)
        parser.add_argument("command", choices=["pin", "show"])
        parser.add_argument("version", nargs="?")
        parser.add_argument("--pin-file", type=Path, default=PIN_FILE)
        parser.add_argument("--registry")
        parsed = parser.parse_args(args)
        if parsed.command == "show":
            print(read_pin(parsed.pin_file))
            return 0
        if not parsed.version:
            raise BadRequest("pin needs 'latest' or a version")
        old, new = pin(parsed.version, parsed.pin_file, parsed.registry)
        print(pin_message(old, new, parsed.pin_file))
        return 0

    return run_main("claude_pin", USAGE, sys.argv[1:] if argv is None else argv, run)


if __name__ == "__main__":
    sys.exit(main())
