"""The cluster's log-forwarding PKI: the rsyslog CA, the shell host's server certificate, agent client certificates.

The session containers' logs travel from each agent host to the shell host over TLS (DESIGN §2, §5, §6):
the shell's rsyslog listens on one port per agent (from tcp/6514) with a server certificate, each agent's rsyslog connects with a client
certificate, and both trust only the cluster CA kept in ``/etc/convocate/rsyslog-ca/`` on the shell host.

Every key is ECDSA on NIST P-256 (secp256r1), every signature ECDSA with SHA-256, every file PEM (keys as
unencrypted PKCS #8, which GnuTLS, rsyslog's ``gtls`` driver, reads). The profile follows RFC 5280:

- CA: self-signed, ``basicConstraints`` CA:TRUE pathlen 0 (critical), ``keyUsage`` keyCertSign + cRLSign
  (critical), subject key identifier; valid :data:`CA_VALIDITY_DAYS`.
- shell host: CN and first SAN DNS name :data:`SHELL_PEER_NAME` (``shell.convocate``), then the DNS names and
  IP addresses it is reached by; ``extendedKeyUsage`` serverAuth, ``keyUsage`` digitalSignature; valid
  :data:`LEAF_VALIDITY_DAYS` (never past the CA). Agents check the fixed name, not the address they dial:
  rsyslog's ``x509/name`` check compares DNS names and the CN only, never iPAddress entries (observed with
  rsyslog 8.2302), so an agent told to reach the shell by IP address still authenticates it.
- agent: CN and the one SAN DNS name ``<agent-id>.agents.convocate`` (:func:`agent_peer_name`),
  ``extendedKeyUsage`` clientAuth; same validity.

The shell's listener accepts a client whose certificate chains to the CA, carries clientAuth and names a host
under :data:`AGENT_NAME_SUFFIX` (rsyslog ``x509/name`` with the permitted peer ``*.agents.convocate`` and
``CheckExtendedKeyPurpose``), so the shell's own server certificate, signed by the same CA, cannot send logs;
likewise an agent's certificate cannot pose as the shell.

Nothing here touches a file: certificates and keys go in and out as PEM bytes, so ``convocate-host`` reads and
writes them on the target hosts itself. Re-runs are idempotent through :func:`ensure_shell_pki` and
:func:`ensure_agent_cert`, which keep what is installed unless :func:`server_cert_problems` or
:func:`agent_cert_problems` give a reason to reissue (an empty list means keep). The profile's names, PEM
parsing and those checks live in :mod:`convocate_host.certprofile` and are re-exported here (``X as X``).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from convocate.common import messages
from convocate.common.errors import ConfigError
from convocate_host.certprofile import _ORGANIZATION, _now, _parse_ip
from convocate_host.certprofile import AGENT_ID_RE as AGENT_ID_RE
from convocate_host.certprofile import AGENT_NAME_SUFFIX as AGENT_NAME_SUFFIX
from convocate_host.certprofile import CA_COMMON_NAME as CA_COMMON_NAME
from convocate_host.certprofile import CA_VALIDITY_DAYS as CA_VALIDITY_DAYS
from convocate_host.certprofile import CLOCK_SKEW_S as CLOCK_SKEW_S
from convocate_host.certprofile import LEAF_VALIDITY_DAYS as LEAF_VALIDITY_DAYS
from convocate_host.certprofile import RENEW_WITHIN_DAYS as RENEW_WITHIN_DAYS
from convocate_host.certprofile import SHELL_PEER_NAME as SHELL_PEER_NAME
from convocate_host.certprofile import agent_cert_problems as agent_cert_problems
from convocate_host.certprofile import agent_peer_name as agent_peer_name
from convocate_host.certprofile import ca_problems as ca_problems
from convocate_host.certprofile import cert_names as cert_names
from convocate_host.certprofile import chains_to as chains_to
from convocate_host.certprofile import expires_within as expires_within
from convocate_host.certprofile import key_matches as key_matches
from convocate_host.certprofile import load_certificate as load_certificate
from convocate_host.certprofile import load_private_key as load_private_key
from convocate_host.certprofile import names_host as names_host
from convocate_host.certprofile import server_cert_problems as server_cert_problems
from convocate_host.certprofile import split_host_names as split_host_names
from convocate_host.certprofile import validate_agent_id as validate_agent_id


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, as PEM.

    Attributes:
        cert_pem: The certificate (``-----BEGIN CERTIFICATE-----``).
        key_pem: Its ECDSA P-256 key, unencrypted PKCS #8; write it mode 0600 (0640 for rsyslog's group).
    """

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


class CertificateAuthority:
    """The cluster CA: issues the shell host's server certificate and the agents' client certificates.

    Build it with :meth:`create` (the first ``init-shell``) or :meth:`load` (every later run and every
    ``init-agent``, from ``ca.pem`` and ``ca.key`` in ``/etc/convocate/rsyslog-ca/``).
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = certificate
        self._key = key

    @classmethod
    def create(cls, *, common_name: str = CA_COMMON_NAME, validity_days: int = CA_VALIDITY_DAYS,
               now: datetime.datetime | None = None) -> CertificateAuthority:
        """Make a new self-signed CA with a fresh P-256 key.

        Args:
            common_name: Subject CN.
            validity_days: Lifetime in days from ``now``.
            now: The issue time (timezone-aware); the current time when ``None``.

        Returns:
            The new CA.

        Raises:
            ConfigError: ``validity_days`` is not positive or ``now`` is naive.
        """
        if validity_days <= 0:
            raise ConfigError(messages.BAD_CERT_VALIDITY.format(value=validity_days))
        start = _now(now)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(start + datetime.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """Load an existing CA back, checking it is one and that the key is its key.

        Args:
            cert_pem: ``ca.pem``.
            key_pem: ``ca.key``.

        Returns:
            The CA.

        Raises:
            ConfigError: either is unreadable, the key is not P-256, the certificate is not a CA
                (``basicConstraints`` CA:TRUE, self-signed), or the key does not belong to it.
        """
        cert = load_certificate(cert_pem, what="the rsyslog CA certificate")
        key = load_private_key(key_pem, what="the rsyslog CA key")
        if not key_matches(cert, key):
            raise ConfigError(messages.CA_KEY_MISMATCH)
        problems = ca_problems(cert)
        if problems:
            raise ConfigError(messages.CA_INVALID.format(problems="; ".join(problems)))
        return cls(cert, key)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """``ca.pem``: installed on the shell and on every agent as the trust anchor."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """``ca.key``: stays on the shell host, mode 0600 root; rsyslog never reads it."""
        return _key_pem(self._key)

    def _issue(self, subject_cn: str, san: list[x509.GeneralName], usage: x509.ObjectIdentifier,
               validity_days: int, now: datetime.datetime | None) -> IssuedCert:
        if validity_days <= 0:
            raise ConfigError(messages.BAD_CERT_VALIDITY.format(value=validity_days))
        start = _now(now)
        end = min(start + datetime.timedelta(days=validity_days), self._cert.not_valid_after_utc)
        if end <= start:
            raise ConfigError(messages.CA_EXPIRED.format(when=self._cert.not_valid_after_utc.isoformat()))
        key = _new_key()
        public = key.public_key()
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                                     x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(seconds=CLOCK_SKEW_S))
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_server(self, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (), *,
                     validity_days: int = LEAF_VALIDITY_DAYS, now: datetime.datetime | None = None) -> IssuedCert:
        """Issue the shell host's TLS server certificate (serverAuth) with a new key.

        Args:
            dns_names: DNS names agents reach the shell by, added after :data:`SHELL_PEER_NAME` (the CN, and
                the name agents check). An IP address given here is moved to ``ip_addresses``.
            ip_addresses: IPv4/IPv6 addresses to put in the SAN as well (iPAddress entries; rsyslog's name
                check does not look at them, see :mod:`convocate_host.rsyslog`).
            validity_days: Lifetime in days, capped at the CA's own end.
            now: The issue time (timezone-aware); the current time when ``None``.

        Returns:
            The certificate and key (``server.pem``, ``server.key``).

        Raises:
            ConfigError: a malformed DNS name or address, or the CA has expired.
        """
        dns, ips = split_host_names([SHELL_PEER_NAME, *dns_names])
        for address in ip_addresses:
            if (ip := _parse_ip(address)) not in ips:
                ips.append(ip)
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(SHELL_PEER_NAME, san, ExtendedKeyUsageOID.SERVER_AUTH, validity_days, now)

    def issue_agent(self, agent_id: str, *, validity_days: int = LEAF_VALIDITY_DAYS,
                    now: datetime.datetime | None = None) -> IssuedCert:
        """Issue an agent's TLS client certificate (clientAuth) with a new key.

        Args:
            agent_id: The agent's 8-character ID; the certificate names ``<agent-id>.agents.convocate``.
            validity_days: Lifetime in days, capped at the CA's own end.
            now: The issue time (timezone-aware); the current time when ``None``.

        Returns:
            The certificate and key (the agent's ``client.pem``, ``client.key``).

        Raises:
            ConfigError: a malformed agent ID, or the CA has expired.
        """
        name = agent_peer_name(agent_id)
        return self._issue(name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH, validity_days, now)


# --- what init-shell and init-agent call ----------------------------------------------------------------

@dataclass(frozen=True)
class ShellPKI:
    """The shell host's rsyslog PKI after :func:`ensure_shell_pki`.

    Attributes:
        ca: The cluster CA (kept or new).
        ca_created: True when there was no CA and one was made (write ``ca.pem`` and ``ca.key``).
        server: The server certificate and key: the installed pair when kept, a new one when reissued.
        server_reasons: Why the server certificate was (re)issued; empty when the installed pair is kept.
        ca_warnings: Problems of a kept CA that a re-run cannot fix by itself (it expires soon).
    """

    ca: CertificateAuthority
    ca_created: bool
    server: IssuedCert
    server_reasons: list[str]
    ca_warnings: list[str]


def ensure_shell_pki(ca_cert_pem: bytes | None, ca_key_pem: bytes | None, server_cert_pem: bytes | None,
                     server_key_pem: bytes | None, *, dns_names: Sequence[str] = (),
                     ip_addresses: Sequence[str] = (), renew_within_days: float = RENEW_WITHIN_DAYS,
                     now: datetime.datetime | None = None) -> ShellPKI:
    """Keep or make the CA and keep or reissue the shell's server certificate (idempotent init-shell).

    A CA is created only when neither of its files exists; one that exists is never replaced, because
    every agent's client certificate chains to it.

    Args:
        ca_cert_pem: The installed ``ca.pem``, or ``None`` when absent.
        ca_key_pem: The installed ``ca.key``, or ``None`` when absent.
        server_cert_pem: The installed ``server.pem``, or ``None`` when absent.
        server_key_pem: The installed ``server.key``, or ``None`` when absent.
        dns_names: DNS names agents reach the shell by (besides :data:`SHELL_PEER_NAME`).
        ip_addresses: Its IP addresses, for the SAN.
        renew_within_days: Reissue a server certificate that expires within this many days.
        now: The reference time (timezone-aware); the current time when ``None``.

    Returns:
        What to install and what changed.

    Raises:
        ConfigError: only one of the CA's two files exists, the CA is unusable (see
            :meth:`CertificateAuthority.load`), or a name is malformed.
    """
    if not ca_cert_pem and not ca_key_pem:
        ca, created, warnings = CertificateAuthority.create(now=now), True, []
    elif not ca_cert_pem or not ca_key_pem:
        raise ConfigError(messages.CA_HALF_PRESENT.format(missing="ca.pem" if not ca_cert_pem else "ca.key"))
    else:
        ca, created = CertificateAuthority.load(ca_cert_pem, ca_key_pem), False
        warnings = ca_problems(ca.certificate, renew_within_days=renew_within_days, now=now)
    if created:
        reasons = [messages.CERT_NEW_CA]
    else:
        reasons = server_cert_problems(server_cert_pem, server_key_pem, ca.certificate, dns_names=dns_names,
                                       ip_addresses=ip_addresses, renew_within_days=renew_within_days, now=now)
    if reasons:
        server = ca.issue_server(dns_names, ip_addresses, now=now)
    else:
        server = IssuedCert(bytes(server_cert_pem or b""), bytes(server_key_pem or b""))
    return ShellPKI(ca, created, server, reasons, warnings)


def ensure_agent_cert(ca: CertificateAuthority, agent_id: str, cert_pem: bytes | None, key_pem: bytes | None, *,
                      renew_within_days: float = RENEW_WITHIN_DAYS,
                      now: datetime.datetime | None = None) -> tuple[IssuedCert, list[str]]:
    """Keep or reissue an agent's client certificate (idempotent init-agent).

    Args:
        ca: The cluster CA, loaded from the shell host.
        agent_id: The agent's ID.
        cert_pem: The agent's installed ``client.pem``, or ``None`` when absent.
        key_pem: The agent's installed ``client.key``, or ``None`` when absent.
        renew_within_days: Reissue when it expires within this many days.
        now: The reference time (timezone-aware); the current time when ``None``.

    Returns:
        ``(pair, reasons)``: the installed pair and ``[]`` when kept, a new pair and why otherwise.

    Raises:
        ConfigError: ``agent_id`` is malformed or the CA has expired.
    """
    reasons = agent_cert_problems(cert_pem, key_pem, ca.certificate, agent_id,
                                  renew_within_days=renew_within_days, now=now)
    if reasons:
        return ca.issue_agent(agent_id, now=now), reasons
    return IssuedCert(bytes(cert_pem or b""), bytes(key_pem or b"")), []
