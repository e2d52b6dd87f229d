"""``convocate-host init-agent`` and ``update``: agent hosts joined to a shell host, then kept current.

init-agent (DESIGN §6), each step idempotent:

1. the ``convocate-agent`` package, debconf preseeded with the shell host and ports; its postinst
   runs ``convocate-agent install`` (account, agent ID, host key, slice limits).
2. the peering keys minted and both host keys pinned (:mod:`convocate_host.peering`); the agent is
   registered in the shell's ``/etc/convocate/agents/<agent-id>/``, its status key recorded there
   (``status_ed25519_key.pub``: the binding of that key to this agent ID) and then authorized in
   ``status_authorized_keys``, which status-serve re-reads by itself.
3. log forwarding: the agent's own TLS listener on the shell host (a port of the log range,
   admitting only this agent's certificate), its rsyslog TLS client certificate from the cluster CA,
   and rsyslog forwarding the session containers' logs to that port (:mod:`convocate_host.logforward`).
4. the session image: sent from the shell host when the agent lacks it (SHA-256 checked on
   arrival), then stamped as the agent's ``current-image``.
5. the shell's operator CA public key as the agent's ``operator-ca.pub`` (issue 19; read at each
   ``operator_identify``, no restart).
6. the agent restarted when its own configuration changed, then checked from the shell host:
   ``convocate agents`` must report it ``ok``.

update: the newest .debs of whatever convocate packages the host has, the image of the new
version, ``current-image`` stamped, and for an agent its status key recorded in the shell's
registry (an agent joined by an older convocate-host has none, and status-serve refuses its
status link until it has); running session containers keep their image until they are
restarted. ``--all`` rolls every registered agent, one at a time, and stops at the first one
that does not come back healthy; with ``--drain`` each agent is drained first (its sessions move to
the others through the shell host) and undrained once it is healthy again.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from convocate.common import messages
from convocate.common.constants import AGENT_PORT, STATUS_PORT
from convocate.common.errors import BadRequest
from convocate.common.paths import CLAUDE_USER, Paths
from convocate_host import logforward, operator_ca
from convocate_host.debs import ensure_package, find_deb, installed_version
from convocate_host.images import ensure_agent_image
from convocate_host.peering import (
    CLAUDE_OWNER,
    AgentIdentity,
    bind_status_key,
    ensure_authorized,
    pin_agent_side,
    pin_shell_side,
    read_agent_identity,
    read_status_host_key,
    read_status_key,
)
from convocate_host.report import LiveReport
from convocate_host.target import HostError, Target

PATHS = Paths()
AGENT_UNIT = "convocate-agent.service"
HEALTH_TIMEOUT_S = 90.0
#: Seconds a whole ``convocate drain`` may take (each session's move is bounded by its home's size).
DRAIN_TIMEOUT_S = 3600.0
PACKAGES = ("convocate", "convocate-agent", "convocate-host")


@dataclass(frozen=True)
class AgentOptions:
    """What ``init-agent`` sets.

    Attributes:
        debs: Directory with the .debs.
        image: The session image tag the agent runs (``convocate:<version>``).
        shell_address: How the agent reaches the shell host (its ``shell-host``).
        agent_address: How the shell host reaches the agent (its registry ``address``).
        listen_port: The agent's SSH port.
        status_port: The shell's status port.
        log_port: The first of the shell's TLS log ports (the agent gets one of the range).
        docker_path_prefix: Where the agent host's files appear to its dockerd (an agent in a
            container driving its host's dockerd); empty normally.
    """

    debs: Path
    image: str
    shell_address: str
    agent_address: str
    listen_port: int = AGENT_PORT
    status_port: int = STATUS_PORT
    log_port: int = logforward.LOG_PORT
    docker_path_prefix: str = ""


async def init_agent(shell: Target, agent: Target, options: AgentOptions, shell_report: LiveReport,
                     agent_report: LiveReport) -> AgentIdentity | None:
    """Install ``agent`` and join it to ``shell``.

    Returns:
        The agent's identity; None from a dry run that stops where the package would be installed.

    Raises:
        BadRequest: no .deb, or the shell host has not the image.
        HostError: a step failed on either host.
    """
    status_host_key = await read_status_host_key(shell)
    deb = find_deb(options.debs, "convocate-agent")
    installed = await ensure_package(agent, deb, agent_report, {
        "convocate-agent/shell-host": ("string", options.shell_address),
        "convocate-agent/listen-port": ("string", str(options.listen_port)),
        "convocate-agent/shell-port": ("string", str(options.status_port)),
    })
    if installed and agent.dry_run:  # the agent ID, host key and the rest are made by that install
        agent_report.note(messages.DRY_RUN_STOPS_AT_PACKAGE.format(package=deb.package))
        return None
    identity = await read_agent_identity(agent)
    agent_report.kept(f"agent ID {identity.agent_id}")
    login_key = await pin_shell_side(shell, identity, address=options.agent_address, port=options.listen_port,
                                     report=shell_report)
    status_key, status_changed = await pin_agent_side(agent, identity, shell_login_key=login_key,
                                                      status_host_key=status_host_key, report=agent_report)
    await bind_status_key(shell, identity.agent_id, status_key, shell_report)
    await ensure_authorized(shell, str(PATHS.status_authorized_keys), status_key, shell_report,
                            f"agent {identity.agent_id}'s status key", owner=CLAUDE_OWNER)
    # rsyslog is restarted by its own step; the agent reads current-image at every start of a session.
    # Only what the agent reads when it starts (its status link, its service settings) restarts it.
    await logforward.ensure_agent(shell, agent, identity.agent_id, options.shell_address, options.log_port,
                                  agent_report, shell_report)
    restart = status_changed
    restart |= await ensure_agent_defaults(agent, {"CONVOCATE_AGENT_LOG_SOCKET": str(PATHS.agent_log_socket),
                                                   "CONVOCATE_AGENT_DOCKER_PATH_PREFIX": options.docker_path_prefix},
                                           agent_report)
    await ensure_agent_image(shell, agent, options.image, agent_report, shell_report=shell_report)
    await stamp_current_image(agent, options.image, agent_report)
    await operator_ca.install_agent_ca(shell, agent, agent_report)
    if restart:
        await agent.run(["systemctl", "restart", AGENT_UNIT], what="restarting the agent")
        agent_report.changed(f"{AGENT_UNIT} restarted with the new configuration")
    else:
        agent_report.kept(f"{AGENT_UNIT} configuration unchanged")
    await wait_healthy(shell, identity.agent_id, shell_report)
    return identity


async def ensure_agent_defaults(agent: Target, values: dict[str, str], report: LiveReport) -> bool:
    """The agent service's environment that convocate-host sets, in a unit drop-in; True when changed.

    ``/etc/default/convocate-agent`` belongs to the package (debconf answers, merged with ucf), so
    convocate-host keeps its own settings in ``convocate-agent.service.d/50-convocate-host.conf``
    (systemd.unit(5) drop-in, ``Environment=``). Lines an earlier convocate-host wrote into
    ``/etc/default/convocate-agent`` for the same keys are removed from it; systemd re-reads the units.
    """
    dropin = str(PATHS.unit_dropin_dir(AGENT_UNIT) / "50-convocate-host.conf")
    text = ("# Written by convocate-host init-agent: the agent's log socket and Docker path prefix.\n[Service]\n"
            + "".join(f"Environment={k}={v}\n" for k, v in values.items()))
    await agent.run(["mkdir", "-p", str(PATHS.unit_dropin_dir(AGENT_UNIT))], what="making the unit's drop-in dir")
    changed = await agent.write_file(dropin, text.encode(), mode=0o644)
    path = str(PATHS.agent_defaults)
    current = (await agent.read_file(path) or b"").decode()
    kept = [line for line in current.splitlines() if line.partition("=")[0].strip() not in values]
    if current and kept != current.splitlines():
        changed |= await agent.write_file(path, ("\n".join(kept) + "\n").encode(), mode=0o644)
    if changed:
        await agent.run(["systemctl", "daemon-reload"], what="reloading systemd's units")
    return report.step(changed, f"service settings {', '.join(f'{k}={v}' for k, v in values.items())}")


async def stamp_current_image(agent: Target, tag: str, report: LiveReport, *, path: str | None = None,
                              owner: str = CLAUDE_OWNER) -> bool:
    """``current-image`` (``path``, default the agent's standard one) names ``tag``; True when it changed."""
    path = path or str(PATHS.current_image_file)
    changed = await agent.write_file(path, f"{tag}\n".encode(), owner=owner)
    return report.step(changed, f"current image {tag} ({path})")


def _as_claude(*args: str) -> list[str]:
    """``convocate ARGS`` run as the user ``claude`` (its registry and peering keys) on the shell host."""
    return ["runuser", "-u", CLAUDE_USER, "--", "convocate", *args]


async def agents_status(shell: Target) -> list[dict]:
    """``convocate agents --json`` on the shell host, as the user ``claude``."""
    result = await shell.run(_as_claude("agents", "--json"),
                             what="asking the shell host for its agents", check=False, reads=True)
    try:
        return json.loads(result.text)
    except ValueError as e:
        raise HostError(messages.HOST_COMMAND_FAILED.format(
            host=shell.description, what="listing agents", command="convocate agents --json",
            status=result.returncode, detail=result.detail())) from e


async def wait_healthy(shell: Target, agent_id: str, report: LiveReport, *, version: str | None = None,
                       timeout_s: float = HEALTH_TIMEOUT_S) -> dict:
    """Wait until the shell host reaches the agent (and it runs ``version``, if given).

    Raises:
        HostError: it did not within ``timeout_s`` seconds; the message has the last status.
    """
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while True:
        rows = [r for r in await agents_status(shell) if r.get("agent_id") == agent_id]
        last = rows[0] if rows else {"status": "not registered"}
        link = last.get("status_link") or {}
        if last.get("status") == "ok" and (version is None or last.get("version") == version) \
                and link.get("connected"):
            report.kept(f"the shell host reaches agent {agent_id} (version {last.get('version')}) and its status "
                        "events reach the shell host")
            return last
        if shell.dry_run:  # nothing was restarted or registered, so there is nothing to wait for
            report.note(f"would wait until the shell host reaches agent {agent_id} (now: {last.get('status')})")
            return last
        if time.monotonic() > deadline:
            raise HostError(messages.HOST_AGENT_UNHEALTHY.format(agent=agent_id, host=shell.description,
                                                                 seconds=timeout_s, status=json.dumps(last)))
        await asyncio.sleep(1.0)


async def drain_agent(shell: Target, agent_id: str, report: LiveReport) -> None:
    """Empty an agent before it is updated: ``convocate drain AGENT --json`` on the shell host, as ``claude``.

    The agent takes no new session from here on, and each of its sessions moves to the agent
    placement picks among the others (:func:`convocate.fleet.drain`, issue 18). Each move is a
    changed line of ``report``.

    Raises:
        HostError: the drain could not run, or a session could not move; then the agent is
            undrained again (left as it was but for the sessions that did move), and the message
            names each session that stayed and why.
    """
    args = ("drain", agent_id, "--json")
    result = await shell.run(_as_claude(*args), what=f"draining agent {agent_id}", check=False, timeout=DRAIN_TIMEOUT_S)
    if shell.dry_run:  # the plan line is the report
        return
    try:
        drained = json.loads(result.text)
        moved, stayed = drained["moved"], drained["stayed"]
    except (ValueError, KeyError, TypeError) as e:
        raise HostError(messages.HOST_COMMAND_FAILED.format(
            host=shell.description, what=f"draining agent {agent_id}", command=shlex.join(["convocate", *args]),
            status=result.returncode, detail=result.detail())) from e
    report.changed(messages.DRAIN_MARKED.format(agent=agent_id))
    for session in moved:
        report.changed(messages.DRAIN_MOVED.format(session=session["name"], agent=session["agent_id"]))
    if stayed:
        await undrain_agent(shell, agent_id, report)
        raise HostError(messages.HOST_DRAIN_INCOMPLETE.format(
            agent=agent_id, sessions="; ".join(f"{s['name']}: {s['reason']}" for s in stayed)))
    if not moved:
        report.kept(f"agent {agent_id} runs no session")


async def undrain_agent(shell: Target, agent_id: str, report: LiveReport) -> None:
    """``convocate undrain AGENT`` on the shell host, as ``claude``: the agent takes new sessions again.

    Raises:
        HostError: the command failed.
    """
    await shell.run(_as_claude("undrain", agent_id),
                    what=f"letting agent {agent_id} take new sessions again")
    report.changed(messages.UNDRAINED.format(agent=agent_id))


async def update_host(shell: Target, host: Target, debs: Path, report: LiveReport, *, image: str | None,
                      shell_report: LiveReport) -> str | None:
    """Upgrade the convocate packages ``host`` has; for an agent host also its image.

    Returns:
        The agent ID when ``host`` is an agent host, else None.

    Raises:
        BadRequest: none of the packages is installed there, or a .deb is missing.
        HostError: a step failed.
    """
    present = {p: v for p in PACKAGES if (v := await installed_version(host, p)) is not None}
    if not present:
        raise BadRequest(f"{host.description}: no convocate package is installed; use init-shell or init-agent")
    new_versions = {}
    for package in present:
        deb = find_deb(debs, package)
        await ensure_package(host, deb, report)
        new_versions[package] = deb.version
    if "convocate-agent" not in present:
        return None
    identity = await read_agent_identity(host)
    status_key = await read_status_key(host)
    if status_key is None:
        report.note(messages.HOST_NO_STATUS_KEY.format(agent=identity.agent_id))
    else:
        await bind_status_key(shell, identity.agent_id, status_key, shell_report)
    tag = image or f"convocate:{new_versions['convocate-agent']}"
    await ensure_agent_image(shell, host, tag, report, shell_report=shell_report)
    if await stamp_current_image(host, tag, report):
        report.note("running sessions keep their image until they are restarted ((R)estart in the TUI)")
    await wait_healthy(shell, identity.agent_id, shell_report, version=new_versions["convocate-agent"])
    return identity.agent_id


async def registered_agents(shell: Target) -> list[tuple[str, str]]:
    """``(agent-id, address)`` of every agent in the shell's registry."""
    script = 'for d in "$1"/*/; do [ -f "$d/address" ] && printf "%s %s\\n" "$(basename "$d")" "$(head -n1 "$d/address")"; done; true'
    result = await shell.sh(script, str(PATHS.agents_dir), what="reading the agent registry", reads=True)
    return [tuple(line.split(maxsplit=1)) for line in result.text.splitlines() if " " in line]  # type: ignore[misc]


async def each_agent(shell: Target, connect: Callable[[str], Awaitable[Target]],
                     make_report: Callable[[Target], LiveReport],
                     step: Callable[[Target, LiveReport], Awaitable[object]], what: str,
                     finish: str | None = None, *, drain: bool = False) -> list[str]:
    """Run ``step`` on every registered agent in turn; stop at the first that fails.

    Args:
        shell: The shell host (its registry names the agents).
        connect: Opens a :class:`Target` for an agent's address.
        make_report: The report each agent's step writes to.
        step: The work on one agent (its target and report).
        what: The command, for the message of a stop (``update --all``, ``update --claude-code``).
        finish: The label of each agent's closing report line (default ``what``).
        drain: Drain each agent before its step (:func:`drain_agent`: its sessions move to the
            others) and undrain it after, so that a rolling update keeps every session running.

    Returns:
        The agent IDs done, in registry order.

    Raises:
        BadRequest: no agent is registered, or a step refused its input.
        HostError: an agent's step (or drain) failed; the agents after it were not touched. An
            agent whose step failed after its drain stays draining, and the message says so.
    """
    agents = await registered_agents(shell)
    if not agents:
        raise BadRequest(f"{shell.description}: no agent is registered in {PATHS.agents_dir}")
    done: list[str] = []
    for agent_id, address in agents:
        target = await connect(address)
        report = make_report(target)
        draining = False
        try:
            if drain:
                await drain_agent(shell, agent_id, report)
                draining = True
            await step(target, report)
            if draining:
                await undrain_agent(shell, agent_id, report)
        except (HostError, BadRequest) as e:
            rest = [a for a, _ in agents[len(done) + 1:]]
            left = messages.HOST_LEFT_DRAINING.format(agent=agent_id) if draining else ""
            raise type(e)(f"{e}\n{what} stopped at agent {agent_id}; not updated: "
                          f"{', '.join(rest) or 'none'}{left}") from e
        finally:
            report.finish(f"{finish or what} (agent {agent_id})")
            await target.close()
        done.append(agent_id)
    return done
