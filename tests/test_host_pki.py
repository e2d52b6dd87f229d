"""The log-forwarding PKI (convocate_host.pki): the CA, the shell's server certificate, agent client certificates."""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate_host import pki

AGENT = "ab12cd34"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create(now=NOW)


@pytest.fixture(scope="module")
def server(ca: pki.CertificateAuthority) -> pki.IssuedCert:
    return ca.issue_server(["shell.example.net", "Logs.Example.Net."], ["192.0.2.7", "2001:db8::7"], now=NOW)


@pytest.fixture(scope="module")
def agent(ca: pki.CertificateAuthority) -> pki.IssuedCert:
    return ca.issue_agent(AGENT, now=NOW)


def _ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_ca_is_a_self_signed_p256_ca_with_pathlen_0_for_ten_years(ca):
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert cert.issuer == cert.subject
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    lifetime = cert.not_valid_after_utc - NOW
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3653)
    assert pki.ca_problems(cert, now=NOW) == []
    assert pki.chains_to(cert, cert)


def test_server_cert_names_the_shell_and_is_for_server_auth(ca, server):
    cert = server.certificate
    assert pki.chains_to(server.cert_pem, ca.cert_pem)
    dns, ips = pki.cert_names(cert)
    assert dns == [pki.SHELL_PEER_NAME, "shell.example.net", "logs.example.net"]
    assert ips == ["192.0.2.7", "2001:db8::7"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == pki.SHELL_PEER_NAME
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    assert pki.names_host(cert, ["SHELL.example.net"], ["192.0.2.7"])
    assert not pki.names_host(cert, ["other.example.net"])
    assert not pki.names_host(cert, [], ["192.0.2.8"])
    assert pki.key_matches(server.cert_pem, server.key_pem)
    assert isinstance(pki.load_private_key(server.key_pem).curve, ec.SECP256R1)


def test_agent_cert_names_the_agent_and_is_for_client_auth(ca, agent):
    cert = agent.certificate
    name = f"{AGENT}.agents.convocate"
    assert pki.agent_peer_name(AGENT) == name
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert pki.cert_names(cert) == ([name], [])
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.agent_cert_problems(agent.cert_pem, agent.key_pem, ca.cert_pem, AGENT, now=NOW) == []


def test_every_certificate_has_its_own_key(ca, server, agent):
    other = ca.issue_agent(AGENT, now=NOW)
    keys = {server.key_pem, agent.key_pem, other.key_pem, ca.key_pem}
    assert len(keys) == 4
    assert not pki.key_matches(agent.cert_pem, other.key_pem)


def test_openssl_verifies_the_chain_and_the_purposes(tmp_path: Path, ca, server, agent):
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "server.pem").write_bytes(server.cert_pem)
    (tmp_path / "client.pem").write_bytes(agent.cert_pem)
    at = str(int(NOW.timestamp()) + 3600)
    for purpose, leaf, ok in (("sslserver", "server.pem", True), ("sslclient", "client.pem", True),
                              ("sslclient", "server.pem", False), ("sslserver", "client.pem", False)):
        result = subprocess.run(["openssl", "verify", "-attime", at, "-purpose", purpose, "-CAfile",
                                 str(tmp_path / "ca.pem"), str(tmp_path / leaf)], capture_output=True, text=True)
        assert (result.returncode == 0) is ok, (purpose, leaf, result.stdout, result.stderr)


def test_a_loaded_ca_is_the_same_ca(ca, agent):
    again = pki.CertificateAuthority.load(ca.cert_pem, ca.key_pem)
    assert again.cert_pem == ca.cert_pem
    assert pki.chains_to(again.issue_agent(AGENT, now=NOW).cert_pem, ca.cert_pem)


def test_load_refuses_a_key_that_is_not_the_cas(ca):
    other = pki.CertificateAuthority.create(now=NOW)
    with pytest.raises(ConfigError) as e:
        pki.CertificateAuthority.load(ca.cert_pem, other.key_pem)
    assert str(e.value) == messages.CA_KEY_MISMATCH


def test_load_refuses_a_leaf_posing_as_the_ca(server):
    with pytest.raises(ConfigError, match=re.escape(messages.CA_NOT_A_CA)):
        pki.CertificateAuthority.load(server.cert_pem, server.key_pem)


def test_load_refuses_garbage_with_the_cause_chained(ca):
    with pytest.raises(ConfigError, match="not a readable PEM certificate") as e:
        pki.CertificateAuthority.load(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", ca.key_pem)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(ConfigError, match="not a readable PEM private key"):
        pki.CertificateAuthority.load(ca.cert_pem, b"not a key")


def test_load_refuses_a_non_p256_key(ca):
    from cryptography.hazmat.primitives import serialization

    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ConfigError, match="not an ECDSA P-256 private key"):
        pki.CertificateAuthority.load(ca.cert_pem, p384)


@pytest.mark.parametrize("bad", ["", "ab12cd3", "ab12cd345", "AB12CD34", "ab12cd3_", "../../x", "ab12 cd3", None])
def test_agent_id_must_be_8_of_a_to_z_and_digits(ca, bad):
    with pytest.raises(ConfigError) as e:
        ca.issue_agent(bad, now=NOW)
    assert str(e.value) == messages.BAD_AGENT_ID.format(value=bad)


@pytest.mark.parametrize("bad", ["-bad.example", "a..b", "under_score.example", "x" * 64, "a b", ""])
def test_server_names_are_checked(ca, bad):
    with pytest.raises(ConfigError):
        ca.issue_server([bad], now=NOW)


def test_server_ip_addresses_are_checked(ca):
    with pytest.raises(ConfigError, match="not an IPv4 or IPv6 address") as e:
        ca.issue_server(["shell.example.net"], ["192.0.2.300"], now=NOW)
    assert isinstance(e.value.__cause__, ValueError)


def test_an_address_among_the_dns_names_goes_to_the_ip_entries(ca):
    issued = ca.issue_server(["10.0.0.1", "shell.example.net"], now=NOW)
    assert pki.cert_names(issued.cert_pem) == ([pki.SHELL_PEER_NAME, "shell.example.net"], ["10.0.0.1"])


def test_a_certificate_never_outlives_its_ca():
    short = pki.CertificateAuthority.create(validity_days=30, now=NOW)
    leaf = short.issue_agent(AGENT, validity_days=pki.LEAF_VALIDITY_DAYS, now=NOW).certificate
    assert leaf.not_valid_after_utc == short.certificate.not_valid_after_utc
    with pytest.raises(ConfigError, match="expired"):
        short.issue_agent(AGENT, now=NOW + datetime.timedelta(days=31))


def test_naive_times_and_bad_validity_are_refused():
    with pytest.raises(ConfigError, match="no time zone"):
        pki.CertificateAuthority.create(now=datetime.datetime(2026, 1, 1))
    with pytest.raises(ConfigError, match="positive number of days"):
        pki.CertificateAuthority.create(validity_days=0, now=NOW)


def test_expires_within(agent):
    end = agent.certificate.not_valid_after_utc
    assert not pki.expires_within(agent.cert_pem, 90, now=NOW)
    assert pki.expires_within(agent.cert_pem, 90, now=end - datetime.timedelta(days=89))
    assert pki.expires_within(agent.cert_pem, 0, now=end)
    assert pki.expires_within(agent.cert_pem, 0, now=NOW - datetime.timedelta(days=1)), "not yet valid"


def test_problems_name_every_reason_to_reissue(ca, server, agent):
    other = pki.CertificateAuthority.create(now=NOW)
    foreign = other.issue_agent(AGENT, now=NOW)
    assert pki.agent_cert_problems(None, None, ca.cert_pem, AGENT, now=NOW) == [messages.CERT_MISSING]
    assert pki.agent_cert_problems(foreign.cert_pem, foreign.key_pem, ca.cert_pem, AGENT, now=NOW) == [
        messages.CERT_NOT_FROM_CA]
    assert pki.agent_cert_problems(agent.cert_pem, foreign.key_pem, ca.cert_pem, AGENT, now=NOW) == [
        messages.CERT_KEY_MISMATCH]
    assert pki.agent_cert_problems(agent.cert_pem, None, ca.cert_pem, AGENT, now=NOW) == [messages.CERT_KEY_MISSING]
    assert pki.agent_cert_problems(agent.cert_pem, agent.key_pem, ca.cert_pem, "zz99yy88", now=NOW) == [
        messages.CERT_NAMES.format(have=f"{AGENT}.agents.convocate", want="zz99yy88.agents.convocate")]
    end = agent.certificate.not_valid_after_utc
    assert pki.agent_cert_problems(agent.cert_pem, agent.key_pem, ca.cert_pem, AGENT,
                                   now=end - datetime.timedelta(days=10)) == [
        messages.CERT_EXPIRES.format(date=end.date().isoformat(), days=90)]
    # The shell's certificate cannot pass for an agent's, nor an agent's for the shell's.
    assert messages.CERT_LACKS_USAGE.format(usage="clientAuth") in pki.agent_cert_problems(
        server.cert_pem, server.key_pem, ca.cert_pem, AGENT, now=NOW)
    assert messages.CERT_LACKS_USAGE.format(usage="serverAuth") in pki.server_cert_problems(
        agent.cert_pem, agent.key_pem, ca.cert_pem, now=NOW)
    assert pki.server_cert_problems(server.cert_pem, server.key_pem, ca.cert_pem, dns_names=["shell.example.net"],
                                    ip_addresses=["192.0.2.7"], now=NOW) == []
    (reason,) = pki.server_cert_problems(server.cert_pem, server.key_pem, ca.cert_pem,
                                         dns_names=["new.example.net"], now=NOW)
    assert reason.startswith("names shell.convocate, shell.example.net") and "new.example.net" in reason


def test_ensure_shell_pki_creates_once_then_keeps_everything():
    first = pki.ensure_shell_pki(None, None, None, None, dns_names=["shell.example.net"], now=NOW)
    assert first.ca_created and first.server_reasons == [messages.CERT_NEW_CA] and first.ca_warnings == []
    again = pki.ensure_shell_pki(first.ca.cert_pem, first.ca.key_pem, first.server.cert_pem, first.server.key_pem,
                                 dns_names=["shell.example.net"], now=NOW)
    assert not again.ca_created and again.server_reasons == []
    assert again.ca.cert_pem == first.ca.cert_pem
    assert again.server == first.server


def test_ensure_shell_pki_reissues_the_server_cert_for_a_new_name_but_keeps_the_ca():
    first = pki.ensure_shell_pki(None, None, None, None, dns_names=["shell.example.net"], now=NOW)
    moved = pki.ensure_shell_pki(first.ca.cert_pem, first.ca.key_pem, first.server.cert_pem, first.server.key_pem,
                                 dns_names=["shell.example.net"], ip_addresses=["192.0.2.9"], now=NOW)
    assert moved.ca.cert_pem == first.ca.cert_pem
    assert moved.server_reasons and moved.server != first.server
    assert pki.names_host(moved.server.cert_pem, ["shell.example.net"], ["192.0.2.9"])


def test_ensure_shell_pki_warns_about_a_ca_near_its_end():
    first = pki.ensure_shell_pki(None, None, None, None, now=NOW)
    late = first.ca.certificate.not_valid_after_utc - datetime.timedelta(days=30)
    again = pki.ensure_shell_pki(first.ca.cert_pem, first.ca.key_pem, None, None, now=late)
    assert again.ca_warnings and again.server_reasons == [messages.CERT_MISSING]


@pytest.mark.parametrize("missing", ["ca.pem", "ca.key"])
def test_ensure_shell_pki_never_replaces_half_a_ca(ca, missing):
    cert, key = (None, ca.key_pem) if missing == "ca.pem" else (ca.cert_pem, None)
    with pytest.raises(ConfigError) as e:
        pki.ensure_shell_pki(cert, key, None, None, now=NOW)
    assert str(e.value) == messages.CA_HALF_PRESENT.format(missing=missing)


def test_ensure_agent_cert_keeps_a_good_one_and_reissues_otherwise(ca, agent):
    kept, reasons = pki.ensure_agent_cert(ca, AGENT, agent.cert_pem, agent.key_pem, now=NOW)
    assert kept == agent and reasons == []
    fresh, reasons = pki.ensure_agent_cert(ca, AGENT, None, None, now=NOW)
    assert reasons == [messages.CERT_MISSING]
    assert pki.agent_cert_problems(fresh.cert_pem, fresh.key_pem, ca.cert_pem, AGENT, now=NOW) == []
