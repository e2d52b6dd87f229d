"""ed25519 key helpers (convocate.common.keys)."""

import stat
import subprocess

import pytest

from convocate.common import keys
from convocate.common.errors import ConfigError


def test_ensure_private_key_generates_once_with_private_mode(tmp_path):
    path = tmp_path / "k"
    key, created = keys.ensure_private_key(path, comment="c")
    again, created_again = keys.ensure_private_key(path)
    assert created and not created_again
    assert keys.fingerprint(key) == keys.fingerprint(again)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("ssh-ed25519 ")


def test_openssh_reads_our_keys(tmp_path):
    path = tmp_path / "k"
    key, _ = keys.ensure_private_key(path)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert keys.fingerprint(key) in out


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_other_key_types_are_refused(tmp_path, kind):
    path = tmp_path / kind
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    with pytest.raises(ConfigError, match="ed25519 only"):
        keys.load_private_key(path)
    with pytest.raises(ConfigError, match="ed25519 only"):
        keys.load_public_key(path.with_suffix(".pub"))


def test_public_key_line_with_known_hosts_prefix_is_parsed():
    key = keys.generate_key()
    line = keys.public_key_line(key)
    assert keys.fingerprint(keys.parse_public_key(f"[127.0.0.1]:2222 {line}")) == keys.fingerprint(key)


def test_authorized_keys_keeps_only_ed25519_and_reports_the_rest(tmp_path):
    rsa = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", str(rsa)], check=True)
    good = keys.generate_key()
    path = tmp_path / "authorized_keys"
    path.write_text(f"# comment\n{rsa.with_suffix('.pub').read_text()}{keys.public_key_line(good, 'op')}\n")
    parsed = keys.read_authorized_keys(path)
    assert parsed.count == 1 and len(parsed.skipped) == 1 and "line 2" in parsed.skipped[0]
    assert parsed.keys is not None and parsed.keys.validate(good.convert_to_public(), "h", "127.0.0.1") is not None


def test_missing_authorized_keys_authorizes_nobody(tmp_path):
    assert keys.read_authorized_keys(tmp_path / "none").keys is None
