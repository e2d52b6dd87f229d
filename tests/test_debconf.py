"""debconf: every answer is checked in the .config scripts and asked again when wrong (issue 13, item 2).

One Debian 12 host with systemd as PID 1 (tests/systemd_hosts.py) gets the three .debs, installed
with the shell's ``convocate/build-image`` preseeded false so that no postinst builds the session
image. Then, driven like a person through debconf's readline frontend under a pty (pexpect,
``docker exec -it``):

- ``dpkg-reconfigure`` at debconf's default priority (high) asks nothing: every question has a
  safe default;
- ``dpkg-reconfigure convocate-agent`` and ``dpkg-reconfigure convocate``: a wrong port (``web``,
  ``70000``, ``0``), shell host or DNS domain shows its error and the question again; an empty
  answer takes the template's default; the configuration files end up with the valid answers;
- the shell's config script under ``debconf(1)``, as apt's preconfiguration runs it, with the image
  build answered yes: a wrong base image likewise (dpkg-reconfigure would go on to build the
  image in the postinst);

and non-interactively:

- a preseeded wrong answer makes ``dpkg-reconfigure -fnoninteractive`` fail with a message that
  names the question and the rule, and leaves the configuration files and the service as they were;
- a value an administrator wrote into a configuration file becomes the answer instead of being
  reverted (Debian Policy §10.7.4), while a preseeded answer still wins over a file nobody edited,
  also when the config script runs twice (apt's preconfiguration, then the postinst).

Every text a test looks for comes from debian/*.templates, the text the person reads. The host
container carries the label ``convocate.test=debconf`` and is removed at teardown.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pexpect
import pytest

from tests.systemd_hosts import DOCKER, PACKAGES, REPO, Host, start_host

pytestmark = [pytest.mark.slow, pytest.mark.docker]

LABEL = "convocate.test=debconf"
#: Wide enough that no prompt or error title wraps (the frontend wraps at the terminal's width).
COLUMNS = 200
AGENT_DEFAULTS = "/etc/default/convocate-agent"
SHELL_HOST_FILE = "/etc/convocate-agent/shell-host"
SHELL_DEFAULTS = "/etc/default/convocate"
DOMAIN_FILE = "/etc/convocate/domain"
CONFIG_FILES = (AGENT_DEFAULTS, SHELL_HOST_FILE, SHELL_DEFAULTS, DOMAIN_FILE)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- the templates: what the person reads ------------------------------------------------------
def _templates(package: str) -> dict[str, tuple[str, str, str]]:
    """Template name -> (type, short, extended description) of ``debian/<package>.templates``."""
    templates: dict[str, tuple[str, str, str]] = {}
    for stanza in (REPO / "debian" / f"{package}.templates").read_text(encoding="utf-8").split("\n\n"):
        name = kind = short = ""
        extended: list[str] = []
        in_description = False
        for line in stanza.splitlines():
            if line.startswith("Template:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Type:"):
                kind = line.split(":", 1)[1].strip()
            elif re.match(r"_?Description:", line):
                short, in_description = line.split(":", 1)[1].strip(), True
            elif line.startswith(" ") and in_description:
                extended.append("" if line.strip() == "." else line.strip())
            else:
                in_description = False
        if name:
            templates[name] = (kind, short, " ".join(extended))
    return templates


TEMPLATES = {**_templates("convocate-agent"), **_templates("convocate")}


def prompt(question: str) -> str:
    """What the readline frontend prints before the cursor for ``question`` (its short description)."""
    return TEMPLATES[question][1]


def error_text(error: str, value: str) -> tuple[str, str]:
    """The title and the first sentence of the error template ``error`` about the answer ``value``."""
    short, extended = (text.replace("${value}", value) for text in TEMPLATES[error][1:])
    return short, extended.split(". ")[0]


def squeeze(text: str) -> str:
    """``text`` without terminal escapes and with every run of white space made one space."""
    return " ".join(ANSI.sub("", text).split())


# --- the host ------------------------------------------------------------------------------------
class DebconfHost(Host):
    """A systemd host with the .debs installed and helpers for debconf."""

    def preseed(self, *lines: str) -> None:
        self.sh(f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} | debconf-set-selections")

    def unsee(self, *questions: str) -> None:
        """Clear the questions' seen flags (debconf-communicate(1)), so that a config script asks them."""
        commands = "".join(f"fset {q} seen false\n" for q in questions)
        self.sh(f"printf {shlex.quote(commands)} | debconf-communicate")

    def answer(self, question: str) -> str:
        """The debconf answer to ``question`` (``debconf-show``)."""
        package = question.split("/")[0]
        for line in self.sh(f"debconf-show {package}").stdout.splitlines():
            name, _, value = line.lstrip("* ").partition(":")
            if name == question:
                return value.strip()
        raise AssertionError(f"{question} is not a question of {package}")

    def config_files(self) -> dict[str, str]:
        return {path: self.sh(f"cat {path} 2>/dev/null || echo MISSING", check=False).stdout for path in CONFIG_FILES}

    def setting(self, path: str, name: str) -> str:
        """The value of ``NAME=`` in the environment file ``path``."""
        lines = [line for line in self.read(path).splitlines() if line.startswith(f"{name}=")]
        assert len(lines) == 1, self.read(path)
        return lines[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def host(systemd_host_image: str, debs) -> Iterator[DebconfHost]:
    started = start_host(systemd_host_image, LABEL)
    try:
        host = DebconfHost(started.id)
        host.preseed("convocate convocate/build-image boolean false")
        files = " ".join(host.copy_in(debs[p]) for p in PACKAGES)
        host.sh(f"apt-get install -y -q {files}")
        yield host
    finally:
        started.remove()


@dataclass
class Readline:
    """A command run through debconf's readline frontend on a pty, answered like a person would.

    ``docker exec`` does not end the command when its client goes: :meth:`close` kills it inside
    the host (its PID is in :data:`PID_FILE`), or a failed test would leave debconf's database
    locked for the next ones.
    """

    host: Host
    child: pexpect.spawn
    transcript: io.StringIO

    PID_FILE = "/run/test-debconf-readline.pid"

    @classmethod
    def start(cls, host: Host, *command: str, env: tuple[str, ...] = ()) -> Readline:
        transcript = io.StringIO()
        script = f'echo $$ > {cls.PID_FILE}; exec env DEBIAN_FRONTEND=readline "$@"'
        child = pexpect.spawn(DOCKER, ["exec", "-it", host.id, "sh", "-c", script, "sh", *env, *command],
                              encoding="utf-8", timeout=60, dimensions=(50, COLUMNS))
        child.logfile_read = transcript
        return cls(host, child, transcript)

    def close(self) -> None:
        """End the command (if it still runs) and its children, here and in the host."""
        if self.child.isalive():
            self.host.sh(f"pid=$(cat {self.PID_FILE}); kill -KILL -- -$pid 2>/dev/null || kill -KILL $pid", check=False)
            self.child.close(force=True)

    def expect(self, text: str) -> None:
        try:
            self.child.expect_exact(text)
        except (pexpect.TIMEOUT, pexpect.EOF):
            raise AssertionError(f"no {text!r} on the screen:\n{self.screen()}") from None

    def answer(self, question: str, text: str) -> None:
        """Wait for the prompt of ``question``, then type ``text`` and Enter."""
        self.expect(prompt(question))
        self.child.sendline(text)

    def answers(self, question: str, error: str, *texts: str) -> None:
        """Type each of ``texts`` at ``question``'s prompt: all but the last are refused.

        Each refused answer must bring the error template ``error`` naming it (its title and its
        rule) and then the same question again.
        """
        self.answer(question, texts[0])
        for value, following in zip(texts, texts[1:], strict=False):
            title, rule = error_text(error, value)
            self.expect(title)
            self.answer(question, following)
            assert squeeze(rule) in squeeze(self.transcript.getvalue()), self.screen()

    def finish(self, timeout: float = 120) -> str:
        """Wait for the command to end; it must succeed. Returns the whole screen."""
        try:
            self.child.expect(pexpect.EOF, timeout=timeout)
        except pexpect.TIMEOUT:
            raise AssertionError(f"still running after {timeout} s:\n{self.screen()}") from None
        self.child.close()
        assert self.child.exitstatus == 0, f"exited {self.child.exitstatus}:\n{self.screen()}"
        return self.screen()

    def screen(self) -> str:
        return ANSI.sub("", self.transcript.getvalue())


@pytest.fixture
def readline(host: DebconfHost) -> Iterator[Callable[..., Readline]]:
    """Start commands under the readline frontend in ``host``; each is ended at teardown."""
    started: list[Readline] = []

    def start(*command: str, env: tuple[str, ...] = ()) -> Readline:
        started.append(Readline.start(host, *command, env=env))
        return started[-1]

    yield start
    for run in started:
        run.close()


# --- priorities ------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["convocate-agent", "convocate"])
def test_default_priority_asks_nothing(host: DebconfHost, readline, package: str):
    questions = [q for q, (kind, short, _) in TEMPLATES.items()
                 if q.startswith(f"{package}/") and kind in ("string", "boolean") and "internal use" not in short]
    run = readline("dpkg-reconfigure", "--priority=high", package)
    prompts = [prompt(q) for q in questions]
    index = run.child.expect_exact([pexpect.EOF, *prompts], timeout=120)
    assert index == 0, f"asked at priority high: {prompts[index - 1]!r}\n{run.screen()}"
    run.child.close()
    assert run.child.exitstatus == 0, run.screen()


# --- readline: asked again until the answer is valid --------------------------------------------------
def test_agent_questions_are_asked_again_until_valid(host: DebconfHost, readline):
    # The current SSH port is not the default, so the empty answer below shows that it takes the default.
    host.preseed("convocate-agent convocate-agent/listen-port string 2222")
    host.sh("dpkg-reconfigure -fnoninteractive convocate-agent")
    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_LISTEN") == ":2222"

    run = readline("dpkg-reconfigure", "convocate-agent")
    run.answers("convocate-agent/shell-host", "convocate-agent/invalid-shell-host",
                "bad_host", "256.1.1.1", "Shell.Example.org")
    run.answers("convocate-agent/listen-port", "convocate-agent/invalid-port", "web", "70000", "")
    run.answers("convocate-agent/shell-port", "convocate-agent/invalid-port", "0", "2223")
    run.finish()

    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_LISTEN") == ":222"  # the template's default
    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_SHELL_PORT") == "2223"
    assert host.read(SHELL_HOST_FILE) == "Shell.Example.org\n"
    assert host.answer("convocate-agent/listen-port") == "222"


def test_shell_questions_are_asked_again_until_valid(host: DebconfHost, readline):
    host.preseed("convocate convocate/status-port string 2224")
    host.sh("dpkg-reconfigure -fnoninteractive convocate")
    assert host.setting(SHELL_DEFAULTS, "CONVOCATE_STATUS_LISTEN") == ":2224"

    run = readline("dpkg-reconfigure", "convocate")
    run.answer("convocate/build-image", "no")
    run.answers("convocate/domain", "convocate/invalid-domain", "bad_domain.example", "-lab.example.org",
                "Lab.Example.ORG")
    run.answers("convocate/status-port", "convocate/invalid-port", "web", "70000", "")
    run.finish()

    assert host.read(DOMAIN_FILE) == "lab.example.org\n"  # lowercased
    assert host.setting(SHELL_DEFAULTS, "CONVOCATE_STATUS_LISTEN") == ":223"  # the template's default
    assert host.answer("convocate/domain") == "lab.example.org"


def test_base_image_is_asked_again_until_valid(host: DebconfHost, readline):
    # Only the config script: dpkg-reconfigure would go on to build the image in the postinst.
    # Answered yes and not seen yet, as on a first install, where apt's preconfiguration runs it so.
    domain = host.answer("convocate/domain")
    host.preseed("convocate convocate/build-image boolean true", "convocate convocate/base-image string",
                 f"convocate convocate/domain string {domain}")
    host.unsee("convocate/build-image", "convocate/base-image")
    run = readline("debconf", "-o", "convocate", "/var/lib/dpkg/info/convocate.config", "configure",
                   env=("DEBIAN_PRIORITY=medium",))
    try:
        run.answer("convocate/build-image", "yes")
        run.answers("convocate/base-image", "convocate/invalid-base-image",
                    "Debian:Bookworm", "debian:", "registry.example.org:5000/base/debian:12")
        run.finish()
        assert host.answer("convocate/base-image") == "registry.example.org:5000/base/debian:12"
    finally:
        run.close()  # it holds debconf's database while it runs
        host.preseed("convocate convocate/build-image boolean false", "convocate convocate/base-image string")


# --- noninteractive: a preseeded wrong answer never reaches the postinst --------------------------------
@pytest.mark.parametrize(("question", "value", "error"), [
    pytest.param(question, value, error, id=question) for question, value, error in (
        ("convocate-agent/listen-port", "web", "convocate-agent/invalid-port"),
        ("convocate-agent/shell-port", "70000", "convocate-agent/invalid-port"),
        ("convocate-agent/shell-host", "shell host", "convocate-agent/invalid-shell-host"),
        ("convocate/status-port", "0", "convocate/invalid-port"),
        ("convocate/domain", "lab..example.org", "convocate/invalid-domain"),
        ("convocate/base-image", "Debian:Bookworm", "convocate/invalid-base-image"),
    )
])
def test_noninteractive_preseeded_invalid_answer_fails_and_changes_nothing(host: DebconfHost, question, value, error):
    package = question.split("/")[0]
    unit = "convocate-agent.service" if package == "convocate-agent" else "convocate-status.service"
    good = host.answer(question)
    files, pid = host.config_files(), host.main_pid(unit)
    host.preseed(f"{package} {question} string {value}")
    try:
        result = host.sh(f"dpkg-reconfigure -fnoninteractive {package} 2>&1", check=False)
        assert result.returncode != 0, result.stdout
        title, rule = error_text(error, value)
        said = squeeze(result.stdout)
        assert question in said and squeeze(title) in said and squeeze(rule) in said, result.stdout
        assert "dpkg --configure -a" in said
        assert host.config_files() == files
        assert host.main_pid(unit) == pid
    finally:
        host.preseed(f"{package} {question} string {good}")
    host.sh(f"dpkg-reconfigure -fnoninteractive {package}")


# --- the configuration files are the truth (Policy §10.7.4) --------------------------------------------
def test_administrators_edits_become_the_answers(host: DebconfHost):
    host.sh(f"sed -i 's/^CONVOCATE_AGENT_LISTEN=.*/CONVOCATE_AGENT_LISTEN=:2345/' {AGENT_DEFAULTS}"
            f" && sed -i 's/^CONVOCATE_AGENT_SHELL_PORT=.*/CONVOCATE_AGENT_SHELL_PORT=\"2346\"/' {AGENT_DEFAULTS}"
            f" && echo edited.example.org > {SHELL_HOST_FILE}"
            f" && sed -i 's/^CONVOCATE_STATUS_LISTEN=.*/CONVOCATE_STATUS_LISTEN=:2347/' {SHELL_DEFAULTS}"
            f" && echo edited.example.org > {DOMAIN_FILE}")
    host.sh("dpkg-reconfigure -fnoninteractive convocate-agent && dpkg-reconfigure -fnoninteractive convocate")

    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_LISTEN") == ":2345"
    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_SHELL_PORT").strip('"') == "2346"
    assert host.read(SHELL_HOST_FILE) == "edited.example.org\n"
    assert host.setting(SHELL_DEFAULTS, "CONVOCATE_STATUS_LISTEN") == ":2347"
    assert host.read(DOMAIN_FILE) == "edited.example.org\n"
    assert [host.answer(q) for q in ("convocate-agent/listen-port", "convocate-agent/shell-port",
                                     "convocate-agent/shell-host", "convocate/status-port", "convocate/domain")] == [
        "2345", "2346", "edited.example.org", "2347", "edited.example.org"]


def test_ucf_keeps_an_edited_defaults_file_when_a_new_answer_comes_noninteractively(host: DebconfHost):
    # The edit above (quotes around 2346) is not what the answers render, so ucf(1) holds the file as the
    # administrator's: a new preseeded answer does not overwrite it without asking; it lands in .ucf-dist.
    before = host.read(AGENT_DEFAULTS)
    host.preseed("convocate-agent convocate-agent/listen-port string 2348")
    host.sh("dpkg-reconfigure -fnoninteractive convocate-agent")
    assert host.read(AGENT_DEFAULTS) == before
    assert host.setting(f"{AGENT_DEFAULTS}.ucf-dist", "CONVOCATE_AGENT_LISTEN") == ":2348"
    # Taking the package's version ends that (what ucf's question offers; by hand, the .ucf-dist file):
    # the file is the package's again, and the next answer reaches it without a question.
    host.sh(f"mv {AGENT_DEFAULTS}.ucf-dist {AGENT_DEFAULTS} && dpkg-reconfigure -fnoninteractive convocate-agent")
    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_LISTEN") == ":2348"
    assert not host.exists(f"{AGENT_DEFAULTS}.ucf-dist")


def test_preseeded_answer_wins_over_a_file_nobody_edited_across_two_config_runs(host: DebconfHost):
    # apt runs the config script before unpacking (dpkg-preconfigure), then again from the postinst.
    host.preseed("convocate-agent convocate-agent/listen-port string 2350",
                 "convocate-agent convocate-agent/shell-host string shell2.example.org")
    host.sh("debconf -o convocate-agent /var/lib/dpkg/info/convocate-agent.config configure")
    host.sh("dpkg-reconfigure -fnoninteractive convocate-agent")
    assert host.setting(AGENT_DEFAULTS, "CONVOCATE_AGENT_LISTEN") == ":2350"
    assert host.read(SHELL_HOST_FILE) == "shell2.example.org\n"
