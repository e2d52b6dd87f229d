"""What the agent's SSH server refuses (DESIGN §2), driven by OpenSSH and asyncssh.

The agent must accept ed25519 public keys listed in authorized_keys and
``session`` channels carrying one of its two subsystems, and nothing else.
"""

from __future__ import annotations

import asyncio
import subprocess

import asyncssh
import pytest

from convocate.common import keys
from convocate.common.protocol import RPC_SUBSYSTEM
from tests.conftest import connect, openssh_args, rpc_ok, run_openssh

PING = b'{"op":"ping","params":{}}\n'


def ssh_cmd(cluster, tmp_path, *extra, key=None):
    args = openssh_args(cluster, tmp_path, key)
    return args[:1] + list(extra) + args[1:]


def assert_agent_serves(cluster, tmp_path):
    done = run_openssh(openssh_args(cluster, tmp_path) + ["-s", RPC_SUBSYSTEM], input=PING)
    assert done.returncode == 0 and b'"ok":true' in done.stdout, done.stderr


@pytest.mark.parametrize("extra, trailing, message", [
    ([], ["echo", "hi"], b"exec request failed"),
    (["-T"], [], b"shell request failed"),
    (["-tt"], [], b"PTY allocation request failed"),  # refused at pty-req, before the shell request
    (["-s"], ["sftp"], b"subsystem request failed"),
    (["-s"], ["no-such-subsystem"], b"subsystem request failed"),
    (["-W", "127.0.0.1:22"], [], b"administratively prohibited"),
    (["-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"], [], b"remote port forwarding failed"),
])
def test_openssh_requests_other_than_our_subsystems_are_refused(cluster, tmp_path, extra, trailing, message):
    done = run_openssh(ssh_cmd(cluster, tmp_path, *extra) + trailing, input=b"")
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert_agent_serves(cluster, tmp_path)


def test_local_port_forward_channels_are_refused(cluster, tmp_path):
    import socket
    import threading
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    proc = subprocess.Popen(ssh_cmd(cluster, tmp_path, "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:22", "-v"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = bytearray()
    refused = threading.Event()

    def read_stderr() -> None:  # ssh -N never exits by itself: read its log as it comes
        for line in proc.stderr:
            err.extend(line)
            if b"administratively prohibited" in line:
                refused.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not refused.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", local_port), timeout=2) as s:
                    s.settimeout(10)
                    assert s.recv(100) == b""  # the agent refused the direct-tcpip channel
                refused.wait(10)
            except (ConnectionRefusedError, TimeoutError):
                time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
    assert refused.is_set(), bytes(err)
    assert_agent_serves(cluster, tmp_path)


async def test_asyncssh_direct_tcpip_channel_is_refused(ssh):
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        await ssh.open_connection("127.0.0.1", 22)
    assert refused.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


def test_password_and_keyboard_interactive_are_not_offered(cluster, tmp_path):
    done = run_openssh(ssh_cmd(cluster, tmp_path, "-v", "-o", "PreferredAuthentications=password,keyboard-interactive")
                       + ["-s", RPC_SUBSYSTEM], input=PING)
    assert done.returncode == 255
    assert b"Authentications that can continue: publickey\r\n" in done.stderr or \
        b"Authentications that can continue: publickey\n" in done.stderr


async def test_asyncssh_password_login_is_refused(cluster):
    host_key = keys.load_private_key(cluster.paths.agent_host_key).convert_to_public()
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect("127.0.0.1", cluster.port, username="claude", password="claude", client_keys=None,
                               known_hosts=([host_key], [], []), agent_path=None, config=None)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_rsa_and_ecdsa_client_keys_are_refused_even_when_listed(cluster, tmp_path, kind):
    key = tmp_path / kind
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    auth = cluster.paths.agent_authorized_keys
    original = auth.read_text()
    auth.write_text(original + key.with_suffix(".pub").read_text())
    try:
        done = run_openssh(ssh_cmd(cluster, tmp_path, key=key) + ["-s", RPC_SUBSYSTEM], input=PING)
    finally:
        auth.write_text(original)
    assert done.returncode == 255 and b"Permission denied (publickey)" in done.stderr
    assert "not an ssh-ed25519 key; ignored" in cluster.log_text()


def test_agent_offers_only_an_ed25519_host_key(cluster, tmp_path):
    done = run_openssh(ssh_cmd(cluster, tmp_path, "-o", "HostKeyAlgorithms=rsa-sha2-512,ecdsa-sha2-nistp256")
                       + ["-s", RPC_SUBSYSTEM], input=PING)
    assert done.returncode == 255 and b"no matching host key type found" in done.stderr


async def test_authorized_keys_changes_apply_without_a_restart(cluster):
    newcomer = keys.generate_key()
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(cluster, key=newcomer):
            pass
    auth = cluster.paths.agent_authorized_keys
    original = auth.read_text()
    auth.write_text(original + keys.public_key_line(newcomer, "newcomer") + "\n")
    try:
        async with connect(cluster, key=newcomer) as conn:
            assert (await rpc_ok(conn, "ping"))["agent_id"] == cluster.agent_id
    finally:
        auth.write_text(original)
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(cluster, key=newcomer):
            pass
    assert f"caller={keys.fingerprint(newcomer)}" in cluster.log_text()  # ops are logged with the key


async def test_agent_and_x11_forwarding_requests_are_refused(ssh):
    # Neither OpenSSH nor asyncssh asks for a reply to these, so ask explicitly on a live channel.
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    chan = process.channel
    assert await chan._make_request(b"auth-agent-req@openssh.com") is False
    x11 = (b"\x00", asyncssh.packet.String(b"MIT-MAGIC-COOKIE-1"), asyncssh.packet.String(b"00" * 16),
           asyncssh.packet.UInt32(0))
    assert await chan._make_request(b"x11-req", *x11) is False
    process.stdin.write(PING)
    process.stdin.write_eof()
    assert b'"ok":true' in await asyncio.wait_for(process.stdout.read(), 10)


async def test_a_second_subsystem_on_the_same_channel_is_refused(ssh):
    process = await ssh.create_process(subsystem=RPC_SUBSYSTEM, encoding=None)
    assert await process.channel._make_request(b"subsystem", asyncssh.packet.String(b"convocate-agent-attach")) \
        is False
    process.close()
