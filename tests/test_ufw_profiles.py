"""The ufw application profiles of the shell and agent packages (packaging/ufw/, issue 13 item 3).

ufw itself reads them: ``ufw app info`` and ``ufw --dry-run allow`` run against a copy of this
machine's ufw configuration relocated into a temp dir (ufw's ``--rootdir``/``--datadir``), so the
host's firewall is never read for rules or changed; the dry run prints the iptables rules it
would add without calling iptables beyond ``iptables -V``.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from convocate.common.constants import AGENT_PORT, STATUS_PORT
from convocate_host.rsyslog import port_range

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "packaging" / "ufw"
UFW = shutil.which("ufw") or "/usr/sbin/ufw"
#: The ports each profile opens: the defaults the code uses (DESIGN §2).
EXPECTED = {
    "convocate": {(STATUS_PORT, "tcp"), *((p, "tcp") for p in port_range())},  # a log port per agent
    "convocate-agent": {(AGENT_PORT, "tcp")},
}
#: The package whose .install line ships each profile.
PACKAGE = {"convocate": "convocate", "convocate-agent": "convocate-agent"}

needs_ufw = pytest.mark.skipif(not Path(UFW).exists(), reason="ufw is not installed (./build.sh deps installs it)")


@pytest.fixture
def ufw_root(tmp_path: Path) -> Path:
    """This machine's ufw configuration copied under ``tmp_path``, with only our profiles in applications.d."""
    root = tmp_path / "ufw-root"
    shutil.copytree("/etc/ufw", root / "etc" / "ufw", ignore=shutil.ignore_patterns("applications.d"))
    (root / "etc" / "default").mkdir(parents=True)
    shutil.copy2("/etc/default/ufw", root / "etc" / "default" / "ufw")
    shutil.copytree("/lib/ufw", root / "lib" / "ufw")
    apps = root / "etc" / "ufw" / "applications.d"
    apps.mkdir()
    for profile in EXPECTED:
        shutil.copy2(PROFILES / profile, apps / profile)
    return root


def ufw(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UFW, f"--rootdir={root}", f"--datadir={root}", *args], capture_output=True, text=True,
                          timeout=60)


def problems(stderr: str) -> list[str]:
    """ufw's warnings and errors, but for the one about /tmp being world writable (where pytest's tmp_path is)."""
    return [line for line in stderr.splitlines()
            if line.startswith(("WARN", "ERROR")) and "is world writable" not in line]


def test_profiles_directory_holds_exactly_the_two_profiles():
    assert sorted(p.name for p in PROFILES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_follows_ufw_framework_format(name):
    """One section named as the file, the three fields ufw-framework(8) requires, ports as PORT[:PORT][,...]/PROTO."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PROFILES / name, encoding="utf-8")
    assert parser.sections() == [name]
    section = parser[name]
    assert set(section) == {"title", "description", "ports"}
    assert all(section[field].strip() for field in section)
    ports = set()
    for spec in section["ports"].split("|"):
        match = re.fullmatch(r"(\d+(?::\d+)?(?:,\d+(?::\d+)?)*)/(tcp|udp)", spec)
        assert match, spec
        for item in match[1].split(","):
            first, _, last = item.partition(":")
            ports |= {(p, match[2]) for p in range(int(first), int(last or first) + 1)}
    assert ports == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_is_installed_by_its_package(name):
    lines = (REPO / "debian" / f"{PACKAGE[name]}.install").read_text().splitlines()
    assert f"packaging/ufw/{name} etc/ufw/applications.d" in lines


@needs_ufw
def test_ufw_lists_both_profiles_without_a_warning(ufw_root):
    result = ufw(ufw_root, "app", "list")
    assert result.returncode == 0, result.stderr
    assert problems(result.stderr) == []
    listed = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert listed == sorted(EXPECTED)


@needs_ufw
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ufw_app_info_shows_title_and_ports(ufw_root, name):
    result = ufw(ufw_root, "app", "info", name)
    assert result.returncode == 0, result.stderr
    assert problems(result.stderr) == []
    assert f"Profile: {name}\n" in result.stdout
    assert "Title: convocate " in result.stdout
    shown = re.split(r"^Ports?:\n", result.stdout, maxsplit=1, flags=re.M)[1].split()  # "Port:" for one
    section = configparser.ConfigParser(interpolation=None)
    section.read(PROFILES / name, encoding="utf-8")
    assert shown == section[name]["ports"].split("|")


@needs_ufw
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ufw_allow_by_profile_opens_exactly_the_role_ports(ufw_root, name):
    """``ufw allow NAME`` (dry run) adds one ACCEPT rule for the profile's TCP ports, for IPv4 and IPv6."""
    before = (ufw_root / "etc" / "ufw" / "user.rules").read_bytes()
    result = ufw(ufw_root, "--dry-run", "allow", name)
    assert result.returncode == 0, result.stderr
    assert problems(result.stderr) == []
    section = configparser.ConfigParser(interpolation=None)
    section.read(PROFILES / name, encoding="utf-8")
    ports = section[name]["ports"].split("/")[0]  # ufw writes ranges as PORT:PORT, as the profile does
    rule = "-p tcp --dport {0} -j ACCEPT" if "," not in ports else "-p tcp -m multiport --dports {0} -j ACCEPT"
    for chain in ("ufw-user-input", "ufw6-user-input"):
        added = [line for line in result.stdout.splitlines() if line.startswith(f"-A {chain} ")]
        assert added == [f"-A {chain} {rule.format(ports)} -m comment --comment 'dapp_{name}'"]
    assert (ufw_root / "etc" / "ufw" / "user.rules").read_bytes() == before  # a dry run writes nothing
