"""``convocate-host update --claude-code VERSION``: a new Claude Code across agents, no new packages.

1. The shell host builds the session image with that Claude Code version, from the build context
   its ``convocate`` package ships (``/usr/share/convocate/image/build-image.sh --claude-code
   VERSION``), tagged ``convocate:<convocate version>-cc<VERSION>``: the convocate version keeps the
   image's own parts (entrypoint, supervisor, reporter) those of the installed packages, the
   ``-cc`` suffix keeps it apart from ``convocate:<version>`` (the pinned build the packages made),
   so rolling back is ``update --claude-code <old version>`` or ``update --image convocate:<version>``.
   The build is checked by the image's ``convocate.claude-code`` label.
2. Each agent gets the image as ``update`` sends it (saved once on the shell host, streamed, SHA-256
   checked on arrival, nothing sent to an agent that has it) and its ``current-image`` is stamped.

The agents are not restarted: the agent reads ``current-image`` at every container start, so new
sessions and restarts take the new version and running sessions keep theirs until restarted; each
session's ``claude_code`` field (``convocate ls --wide``) shows which one it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from convocate.common import messages
from convocate.common.constants import LABEL_CLAUDE_CODE
from convocate.common.errors import BadRequest, ConfigError
from convocate.common.paths import Paths
from convocate_host.agenthost import stamp_current_image
from convocate_host.debs import installed_version
from convocate_host.images import AGENT_COMMAND, ensure_agent_image, image_id
from convocate_host.report import LiveReport
from convocate_host.target import Target

PATHS = Paths()
#: A real build fetches ~380 MB from npm; seconds.
BUILD_TIMEOUT_S = 3600.0


def claude_code_tag(convocate_version: str, claude_code: str) -> str:
    """``convocate:0.1.0-cc2.1.331``: the image of ``convocate_version`` with Claude Code ``claude_code``.

    Docker tags allow ``[A-Za-z0-9_.-]`` (up to 128 characters), which both versions satisfy.
    """
    return f"convocate:{convocate_version}-cc{claude_code}"


async def image_claude_code(target: Target, tag: str) -> str | None:
    """The ``convocate.claude-code`` label of ``tag`` in the target's Docker, or None."""
    result = await target.run(["docker", "image", "inspect", "--format",
                               f'{{{{index .Config.Labels "{LABEL_CLAUDE_CODE}"}}}}', tag],
                              check=False, reads=True)
    return result.text.strip() or None if result.ok else None


async def build_image(shell: Target, claude_code: str, report: LiveReport, *, tag: str | None = None,
                      context: Path | str = PATHS.image_context,
                      cache_dir: Path | str = PATHS.image_cache_dir,
                      convocate_version: str | None = None) -> str:
    """Build the session image with Claude Code ``claude_code`` on the shell host; returns its tag.

    build-image.sh skips the build when the tag is up to date (its context hash), so running it
    again changes nothing.

    Args:
        shell: The shell host.
        claude_code: A plain ``X.Y.Z`` (or ``none``: the stand-in, for tests).
        report: The shell host's report.
        tag: The tag to build; None: :func:`claude_code_tag` of the shell's ``convocate`` package.
        context: The build context on the shell host (the package's).
        cache_dir: build-image.sh's base image cache there.
        convocate_version: The image's ``convocate.version``; None: the installed ``convocate`` package's.

    Raises:
        BadRequest: the shell host has no ``convocate`` package (and no version was given).
        ConfigError: the build context is missing there, or the image built has another version.
        HostError: the build failed.
    """
    if convocate_version is None:
        convocate_version = await installed_version(shell, "convocate")
        if convocate_version is None:
            raise BadRequest(messages.CLAUDE_CODE_NO_SHELL_PACKAGE.format(host=shell.description))
    tag = tag or claude_code_tag(convocate_version, claude_code)
    script = f"{context}/build-image.sh"
    if not (await shell.run(["test", "-x", script], check=False, reads=True)).ok:
        raise ConfigError(messages.IMAGE_CONTEXT_MISSING.format(path=context))
    before = await image_id(shell, tag)
    await shell.run([script, "--tag", tag, "--claude-code", claude_code, "--convocate-version", convocate_version,
                     "--cache-dir", str(cache_dir)], timeout=BUILD_TIMEOUT_S,
                    what=f"building {tag} with Claude Code {claude_code}")
    if shell.dry_run:
        report.changed(f"session image {tag} would be built with Claude Code {claude_code} (if not up to date)")
        return tag
    after, label = await image_id(shell, tag), await image_claude_code(shell, tag)
    if label != claude_code:
        raise ConfigError(messages.CLAUDE_CODE_IMAGE_MISMATCH.format(tag=tag, label=label, version=claude_code))
    report.step(after != before, f"session image {tag} with Claude Code {claude_code} "
                                 f"({(after or '?').removeprefix('sha256:')[:12]})")
    return tag


async def roll_to_agent(shell: Target, agent: Target, tag: str, claude_code: str, report: LiveReport, *,
                        shell_report: LiveReport, command: Sequence[str] = AGENT_COMMAND,
                        progress: TextIO | None = None, current_image: str | None = None,
                        owner: str | None = None) -> bool:
    """Send ``tag`` to one agent host and make it its current image; True when ``current-image`` changed.

    Args:
        shell: Where the image is.
        agent: The agent host.
        tag: The image built by :func:`build_image`.
        claude_code: Its Claude Code version (for the report).
        report: The agent's report.
        shell_report: The shell host's report (the image archive).
        command: How to run ``convocate-agent`` on the agent host.
        progress: Where the transfer's progress bar goes; None for none.
        current_image: The agent's ``current-image`` path; None: the standard one.
        owner: Its ``user:group``; None: the standard one.

    Raises:
        BadRequest: the shell host has no such image.
        HostError: sending, loading or stamping failed.
    """
    if shell.dry_run and await image_id(shell, tag) is None:  # the dry run built nothing to send
        report.changed(f"image {tag} would be sent once built, and loaded (SHA-256 verified on arrival)")
    else:
        await ensure_agent_image(shell, agent, tag, report, command=command, progress=progress,
                                 shell_report=shell_report)
    stamp = {k: v for k, v in (("path", current_image), ("owner", owner)) if v is not None}
    changed = await stamp_current_image(agent, tag, report, **stamp)
    if changed:
        report.note(messages.CLAUDE_CODE_ROLL_NOTE.format(version=claude_code))
    return changed
