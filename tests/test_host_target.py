"""convocate-host's targets and pure steps: files written atomically and only when they differ, reports, rules.

The target tests drive a real :class:`LocalTarget` (this machine, as root) on files under the test's
temp dir, and a real :class:`SSHTarget` against an asyncssh server on loopback that runs the commands
it is sent with a shell, so both implementations are held to the same behaviour.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import io
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from convocate.common import keys
from convocate.common.errors import ConfigError
from convocate_host.dryrun import DryRunTarget
from convocate_host.prepare import kernel_needs_reboot
from convocate_host.report import LiveReport
from convocate_host.sshtarget import SSHTarget
from convocate_host.target import (
    ABSENT,
    FileChanged,
    HostError,
    LocalTarget,
    SudoRequired,
    Target,
)
from tests.harness import REPO, python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the targets run commands as root")


class _ShellServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True


async def _run_command(process: asyncssh.SSHServerProcess) -> None:
    """Run the exec request with /bin/sh, as sshd would; ``sudo`` is refused like a host without NOPASSWD."""
    command = process.command or ""
    if command.startswith("sudo ") and process.get_extra_info("username") == "nosudo":
        process.stderr.write(b"sudo: a password is required\n")
        process.exit(1)
        return
    if command.startswith("sudo -n -- "):
        command = command[len("sudo -n -- "):]
    proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def pump_in() -> None:
        while data := await process.stdin.read(65536):
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()

    async def pump(reader: asyncio.StreamReader, writer) -> None:
        while data := await reader.read(65536):
            writer.write(data)

    feeding = asyncio.ensure_future(pump_in())
    await asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr))
    status = await proc.wait()
    feeding.cancel()  # like sshd: the command's end ends the channel, whatever stdin still holds
    process.exit(status)


@pytest.fixture
async def ssh_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path, Path]]:
    host_key = keys.generate_key()
    client_key = keys.generate_key()
    identity = tmp_path / "id_ed25519"
    keys.write_private_key(identity, client_key)
    auth = asyncssh.import_authorized_keys(keys.public_key_line(client_key) + "\n")
    server = await asyncssh.create_server(_ShellServer, "127.0.0.1", 0, server_host_keys=[host_key],
                                          authorized_client_keys=auth, process_factory=_run_command, encoding=None)
    port = server.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {keys.public_key_line(host_key)}\n")
    try:
        yield port, identity, known
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(params=["local", "ssh"])
async def target(request, ssh_server) -> AsyncIterator[Target]:
    if request.param == "local":
        local = LocalTarget("127.0.0.1")
        await local.check_sudo()
        yield local
        return
    port, identity, known = ssh_server
    remote = await SSHTarget.connect("127.0.0.1", user="operator", port=port, identity=identity, known_hosts=known)
    yield remote
    await remote.close()


async def test_write_file_is_idempotent_and_sets_mode_and_owner(target: Target, tmp_path: Path):
    path = tmp_path / "etc" / "thing.conf"
    assert await target.ensure_dir(str(path.parent), mode=0o750) is True
    assert await target.ensure_dir(str(path.parent), mode=0o750) is False
    assert await target.write_file(str(path), b"one\n", mode=0o600) is True
    assert path.read_bytes() == b"one\n" and path.stat().st_mode & 0o777 == 0o600
    assert await target.write_file(str(path), b"one\n", mode=0o600) is False
    assert await target.write_file(str(path), b"one\n", mode=0o644) is True  # a mode change is a change
    assert await target.write_file(str(path), b"two\n", mode=0o644, owner="1337:1337") is True
    assert (path.stat().st_uid, path.stat().st_gid) == (1337, 1337)
    assert await target.read_file(str(path)) == b"two\n"
    assert await target.read_file(str(tmp_path / "missing")) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["thing.conf"]  # no temporary file left


async def test_a_compare_and_swap_write_never_overwrites_another_writer(target: Target, tmp_path: Path):
    path = tmp_path / "hosts"
    with pytest.raises(FileChanged):  # it was to be new, but exists
        path.write_bytes(b"theirs\n")
        await target.write_file(str(path), b"mine\n", expect_sha256=ABSENT)
    assert path.read_bytes() == b"theirs\n"
    read = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"theirs, rewritten\n")  # someone writes between our read and our write
    with pytest.raises(FileChanged):
        await target.write_file(str(path), b"mine\n", expect_sha256=read)
    assert path.read_bytes() == b"theirs, rewritten\n"
    fresh = hashlib.sha256(path.read_bytes()).hexdigest()
    assert await target.write_file(str(path), b"mine\n", expect_sha256=fresh) is True
    assert path.read_bytes() == b"mine\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".convocate-host.")] == []  # no temporary left


async def test_a_failed_write_leaves_the_old_file(target: Target, tmp_path: Path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "kept.conf"
    path.write_bytes(b"old\n")
    with pytest.raises(HostError) as failed:
        await target.write_file(str(path), b"new\n", owner="no-such-user:no-such-group")
    assert "writing" in str(failed.value) and "no-such-user" in str(failed.value)
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["kept.conf"]


async def test_a_failing_command_names_the_host_and_its_output(target: Target):
    with pytest.raises(HostError) as failed:
        await target.sh("echo broken pipe dream >&2; exit 3", what="a doomed step")
    text = str(failed.value)
    assert target.description in text and "a doomed step" in text and "status 3" in text and "broken pipe dream" in text
    assert (await target.run(["false"], check=False)).returncode == 1


async def test_streams_carry_large_inputs_both_ways(target: Target, tmp_path: Path):
    data = os.urandom(3 << 20)
    proc = await target.open_process(["sh", "-c", f"cat > {tmp_path / 'big'}; sha256sum {tmp_path / 'big'}"])
    for i in range(0, len(data), 1 << 16):
        proc.write(data[i:i + (1 << 16)])
        await proc.drain()
    await proc.close_stdin()
    result = await proc.wait()
    assert result.ok and result.text.split()[0] == hashlib.sha256(data).hexdigest()
    reader = await target.open_process(["cat", str(tmp_path / "big")])
    got = bytearray()
    while chunk := await reader.read(1 << 20):
        got.extend(chunk)
    assert (await reader.wait()).ok and bytes(got) == data


async def test_ssh_target_without_nopasswd_sudo_is_told_so(ssh_server):
    port, identity, known = ssh_server
    with pytest.raises(SudoRequired) as refused:
        await SSHTarget.connect("127.0.0.1", user="nosudo", port=port, identity=identity, known_hosts=known)
    assert "NOPASSWD" in str(refused.value) and "nosudo" in str(refused.value)


async def test_ssh_target_refuses_a_host_key_not_in_known_hosts(ssh_server, tmp_path: Path):
    from convocate.common.errors import HostKeyMismatch

    port, identity, _ = ssh_server
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {keys.public_key_line(keys.generate_key())}\n")
    with pytest.raises(HostKeyMismatch) as refused:
        await SSHTarget.connect("127.0.0.1", user="operator", port=port, identity=identity, known_hosts=wrong)
    assert str(wrong) in str(refused.value) and "never trusts a new key" in str(refused.value)


def test_live_report_prints_each_step_and_counts_changes():
    out = io.StringIO()
    report = LiveReport("op@h", out)
    report.kept("thing present")
    assert report.step(True, "other thing written") is True
    report.note("reboot later")
    assert report.finish("init-agent") == "init-agent on op@h: 1 change(s)"
    assert out.getvalue().splitlines() == ["op@h: ok      thing present", "op@h: changed other thing written",
                                           "op@h: note    reboot later", "init-agent on op@h: 1 change(s)"]
    quiet = LiveReport("h", io.StringIO())
    quiet.kept("x")
    assert quiet.finish("install") == "install on h: nothing changed"


@pytest.mark.parametrize("running, installed, flag, expected", [
    ("6.1.0-18-amd64", ["6.1.0-18-amd64"], False, False),
    ("6.1.0-18-amd64", ["6.1.0-18-amd64", "6.1.0-20-amd64"], False, True),
    ("6.1.0-20-amd64", ["6.1.0-18-amd64", "6.1.0-20-amd64"], False, False),
    ("6.1.0-9-amd64", ["6.1.0-10-amd64", "6.1.0-9-amd64"], False, True),  # numeric, not lexical
    ("5.15.0-1-generic", [], False, False),  # a container: no kernel in /boot
    ("5.15.0-1-generic", [], True, True),  # Ubuntu's /run/reboot-required
])
def test_kernel_needs_reboot(running, installed, flag, expected):
    assert kernel_needs_reboot(running, installed, flag) is expected


def test_upsert_authorized_key_replaces_a_rekeyed_peer_and_keeps_other_lines():
    old, new, other = keys.generate_key(), keys.generate_key(), keys.generate_key()
    text = "# managed by hand\n" + keys.public_key_line(other, "alice@laptop") + "\n"
    text = keys.upsert_authorized_key(text, keys.public_key_line(old, "convocate-agent abcd1234"))
    assert keys.upsert_authorized_key(text, keys.public_key_line(old, "convocate-agent abcd1234")) == text
    rekeyed = keys.upsert_authorized_key(text, keys.public_key_line(new, "convocate-agent abcd1234"))
    assert rekeyed.splitlines() == ["# managed by hand", keys.public_key_line(other, "alice@laptop"),
                                    keys.public_key_line(new, "convocate-agent abcd1234")]
    with pytest.raises(ConfigError):
        keys.upsert_authorized_key(text, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== someone")


def test_cli_help_lists_every_subcommand():
    done = subprocess.run([python(), "-m", "convocate_host", "help"], capture_output=True, text=True, cwd=REPO)
    for command in ("install", "init-shell", "init-agent", "update", "migrate-session", "create-vm", "version"):
        assert f"  {command}" in done.stdout
    assert "not implemented" not in done.stdout


async def test_a_peering_key_is_minted_once_and_its_public_half_repaired(tmp_path: Path):
    from convocate_host.peering import ensure_keypair

    target = LocalTarget("127.0.0.1")
    path = str(tmp_path / "agent_to_shell_ed25519_key")
    report = LiveReport("h", io.StringIO())
    line = await ensure_keypair(target, path, "convocate-agent abcd1234", report, owner="root:root")
    assert report.changes == 1 and line.endswith(" convocate-agent abcd1234")
    assert (tmp_path / "agent_to_shell_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert await ensure_keypair(target, path, "convocate-agent abcd1234", report, owner="root:root") == line
    assert report.changes == 1  # kept
    (tmp_path / "agent_to_shell_ed25519_key.pub").unlink()
    assert await ensure_keypair(target, path, "convocate-agent abcd1234", report, owner="root:root") == line
    assert (tmp_path / "agent_to_shell_ed25519_key.pub").read_text() == line + "\n"  # same key, not a new one
    (tmp_path / "agent_to_shell_ed25519_key").write_text("not a key\n")
    with pytest.raises(ConfigError):
        await ensure_keypair(target, path, "convocate-agent abcd1234", report, owner="root:root")
    assert (tmp_path / "agent_to_shell_ed25519_key").read_text() == "not a key\n"


async def test_tls_files_are_readable_by_an_unprivileged_rsyslog_and_root_only_otherwise(tmp_path: Path):
    from convocate_host.logforward import _write_tls_files

    target = LocalTarget("127.0.0.1")
    files = {"ca.pem": b"certificate\n", "client.key": b"private\n"}
    debian, ubuntu = tmp_path / "debian", tmp_path / "ubuntu"
    assert await _write_tls_files(target, str(debian), files, ("root", "root")) is True
    assert await _write_tls_files(target, str(debian), files, ("root", "root")) is False
    # Ubuntu's rsyslogd drops to syslog:syslog ($PrivDropToUser); nobody:nogroup stands in for it here.
    await _write_tls_files(target, str(ubuntu), files, ("nobody", "nogroup"))

    def mode_owner(path: Path) -> tuple[str, str]:
        st = path.stat()
        return f"{st.st_mode & 0o777:o}", grp.getgrgid(st.st_gid).gr_name

    assert [mode_owner(p) for p in (debian, debian / "ca.pem", debian / "client.key")] == \
        [("700", "root"), ("644", "root"), ("600", "root")]
    assert [mode_owner(p) for p in (ubuntu, ubuntu / "ca.pem", ubuntu / "client.key")] == \
        [("750", "nogroup"), ("644", "nogroup"), ("640", "nogroup")]


async def test_a_dry_run_target_runs_reads_and_only_records_everything_else(target: Target, tmp_path: Path):
    kept = tmp_path / "kept"
    kept.write_bytes(b"old\n")
    dry = DryRunTarget(target)
    seen: list[str] = []
    dry.on_plan = seen.append
    assert (await dry.run(["cat", str(kept)], reads=True)).stdout == b"old\n"  # a read runs
    result = await dry.run(["touch", str(tmp_path / "made")], what="making a file")
    assert result.ok and result.stdout == b"" and not (tmp_path / "made").exists()  # a write does not
    assert await dry.write_file(str(kept), b"new\n", mode=0o600) is True
    assert await dry.write_file(str(tmp_path / "new"), b"x") is True
    assert await dry.ensure_dir(str(tmp_path / "dir"), mode=0o700) is True
    assert kept.read_bytes() == b"old\n" and not (tmp_path / "new").exists() and not (tmp_path / "dir").exists()
    # What this run would have written reads back as written, so later steps see the planned state.
    assert await dry.read_file(str(kept)) == b"new\n" and await dry.exists(str(tmp_path / "new"))
    assert await dry.write_file(str(kept), b"new\n", mode=0o600) is False
    assert await dry.ensure_dir(str(tmp_path / "dir"), mode=0o700) is False
    sink = await dry.open_process(["tee", str(tmp_path / "streamed")])
    sink.write(b"data")
    await sink.close_stdin()
    assert (await sink.wait()).ok and not (tmp_path / "streamed").exists()
    assert seen == dry.planned and seen == [
        f"would run: touch {tmp_path / 'made'} (making a file)",
        f"would write {kept} (4 bytes, mode 0600, root:root)",
        f"would write {tmp_path / 'new'} (1 bytes, mode 0644, root:root)",
        f"would make directory {tmp_path / 'dir'} (mode 0700, root:root)",
        f"would stream into: tee {tmp_path / 'streamed'}",
    ]


def test_a_dry_run_report_says_would_and_counts_what_would_change():
    from convocate_host import report as reports

    reports.configure(dry_run=True)
    try:
        out = io.StringIO()
        report = LiveReport("h", out)
        report.changed("user claude (UID 1337) created")
        report.planned("would run: useradd claude")
        report.kept("time zone UTC")
        assert report.finish("install") == "install on h: 1 change(s) would be made; nothing was changed (dry run)"
        assert out.getvalue().splitlines()[:3] == ["h: would   user claude (UID 1337) created",
                                                   "h: plan    would run: useradd claude", "h: ok      time zone UTC"]
        assert reports.json_document("install")["hosts"][0]["steps"][1] == {"status": "planned",
                                                                             "line": "would run: useradd claude"}
    finally:
        reports.configure()
