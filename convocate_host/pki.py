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
:func:`agent_cert_problems` give a reason to reissue (an empty list means keep).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from convocate.common import messages
from convocate.common.errors import ConfigError

#: Lifetime of the CA, in days (about 10 years).
CA_VALIDITY_DAYS = 3652
#: Lifetime of server and client certificates, in days (about 5 years); capped at the CA's end.
LEAF_VALIDITY_DAYS = 1826
#: A certificate expiring within this many days is reissued by a re-run of init-shell / init-agent.
RENEW_WITHIN_DAYS = 90
#: Back-dating of ``notBefore``, in seconds, so a host whose clock lags a little accepts a fresh certificate.
CLOCK_SKEW_S = 300
#: Subject common name of the CA.
CA_COMMON_NAME = "convocate rsyslog CA"
#: The name every agent's rsyslog requires in the shell host's server certificate (not a real domain).
SHELL_PEER_NAME = "shell.convocate"
#: DNS suffix of the agents' client certificate names: ``<agent-id>.agents.convocate`` (not a real domain).
AGENT_NAME_SUFFIX = "agents.convocate"
#: An agent ID (DESIGN §4; the rule ``convocate-agent install`` generates IDs by).
AGENT_ID_RE = re.compile(r"[a-z0-9]{8}")

_ORGANIZATION = "convocate"
_USAGE_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def agent_peer_name(agent_id: str) -> str:
    """The name an agent's client certificate carries (CN and SAN DNS name).

    Args:
        agent_id: The agent's 8-character ID (``/etc/convocate-agent/agent-id``).

    Returns:
        ``<agent-id>.agents.convocate``.

    Raises:
        ConfigError: ``agent_id`` is not 8 characters of ``[a-z0-9]``.
    """
    return f"{validate_agent_id(agent_id)}.{AGENT_NAME_SUFFIX}"


def validate_agent_id(agent_id: str) -> str:
    """Check an agent ID before it becomes a certificate name, a config constant or a file name.

    Returns:
        ``agent_id`` unchanged.

    Raises:
        ConfigError: it is not 8 characters of ``[a-z0-9]`` (DESIGN §4).
    """
    if not isinstance(agent_id, str) or not AGENT_ID_RE.fullmatch(agent_id):
        raise ConfigError(messages.BAD_AGENT_ID.format(value=agent_id))
    return agent_id


def split_host_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort the names a host is reached by into DNS names and IP addresses (for a server certificate).

    Args:
        names: Host names (RFC 1123, any case, an optional trailing dot) and IPv4/IPv6 addresses.

    Returns:
        ``(dns_names, ip_addresses)``: DNS names lowercased without the trailing dot, addresses in their
        compressed form; duplicates removed, order kept.

    Raises:
        ConfigError: a name is neither an IP address nor a valid DNS name.
    """
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ip = str(ipaddress.ip_address(name))
        except ValueError:
            host = _validate_dns_name(name)
            if host not in dns:
                dns.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _validate_dns_name(name: str) -> str:
    host = name.lower().removesuffix(".") if isinstance(name, str) else ""
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(messages.BAD_CERT_HOST_NAME.format(value=name))
    return host


def _now(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        raise ConfigError(messages.BAD_CERT_TIME.format(value=now))
    return now.astimezone(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_certificate(pem: bytes, *, what: str = "certificate") -> x509.Certificate:
    """Parse one PEM certificate (the first one when the data holds a chain).

    Args:
        pem: PEM data (``-----BEGIN CERTIFICATE-----``).
        what: Name of the file or object, for the error message.

    Returns:
        The certificate.

    Raises:
        ConfigError: ``pem`` holds no parseable certificate.
    """
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as e:
        raise ConfigError(messages.BAD_PEM.format(what=what, kind="certificate", detail=e)) from e


def load_private_key(pem: bytes, *, what: str = "key") -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM private key and require ECDSA P-256.

    Args:
        pem: PEM data (PKCS #8 ``PRIVATE KEY`` or SEC 1 ``EC PRIVATE KEY``).
        what: Name of the file or object, for the error message.

    Returns:
        The private key.

    Raises:
        ConfigError: ``pem`` is not a readable unencrypted key, or not an ECDSA P-256 key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(messages.BAD_PEM.format(what=what, kind="private key", detail=e)) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(messages.NOT_P256.format(what=what))
    return key


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


def _parse_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as e:
        raise ConfigError(messages.BAD_CERT_IP.format(value=value)) from e


# --- validation: what a re-run uses to decide "kept" or "reissued" ---------------------------------------

def _as_cert(cert: x509.Certificate | bytes, what: str) -> x509.Certificate:
    return cert if isinstance(cert, x509.Certificate) else load_certificate(cert, what=what)


def chains_to(cert: x509.Certificate | bytes, ca_cert: x509.Certificate | bytes) -> bool:
    """Whether ``cert`` was issued by ``ca_cert``: issuer name matches and the signature verifies with its key.

    Args:
        cert: The certificate (object or PEM).
        ca_cert: The CA certificate (object or PEM).

    Raises:
        ConfigError: either PEM is unreadable.
    """
    leaf = _as_cert(cert, "certificate")
    ca = _as_cert(ca_cert, "CA certificate")
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def expires_within(cert: x509.Certificate | bytes, days: float, *, now: datetime.datetime | None = None) -> bool:
    """Whether ``cert`` is no longer valid ``days`` days from ``now`` (already expired counts; not yet valid too).

    Args:
        cert: The certificate (object or PEM).
        days: The margin in days (0: is it expired right now).
        now: The reference time (timezone-aware); the current time when ``None``.

    Raises:
        ConfigError: the PEM is unreadable or ``now`` is naive.
    """
    c = _as_cert(cert, "certificate")
    at = _now(now)
    return c.not_valid_before_utc > at or c.not_valid_after_utc <= at + datetime.timedelta(days=days)


def cert_names(cert: x509.Certificate | bytes) -> tuple[list[str], list[str]]:
    """The SAN of ``cert``: ``(dns_names, ip_addresses)``, both as strings (lowercased DNS names).

    Raises:
        ConfigError: the PEM is unreadable.
    """
    c = _as_cert(cert, "certificate")
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ([n.lower() for n in san.get_values_for_type(x509.DNSName)],
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def names_host(cert: x509.Certificate | bytes, dns_names: Iterable[str] = (),
               ip_addresses: Iterable[str] = ()) -> bool:
    """Whether the SAN of ``cert`` holds every wanted DNS name and IP address (extra names are fine).

    Args:
        cert: The certificate (object or PEM).
        dns_names: Wanted DNS names (any case).
        ip_addresses: Wanted addresses.

    Raises:
        ConfigError: the PEM is unreadable or a wanted name is malformed.
    """
    have_dns, have_ips = cert_names(cert)
    want_dns, _ = split_host_names(dns_names)
    want_ips = [_parse_ip(a) for a in ip_addresses]
    return set(want_dns) <= set(have_dns) and set(want_ips) <= set(have_ips)


def key_matches(cert: x509.Certificate | bytes, key: ec.EllipticCurvePrivateKey | bytes) -> bool:
    """Whether ``key`` is the private key of ``cert``.

    Raises:
        ConfigError: either PEM is unreadable or the key is not P-256.
    """
    c = _as_cert(cert, "certificate")
    k = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_private_key(key)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return c.public_key().public_bytes(*fmt) == k.public_key().public_bytes(*fmt)


def _has_usage(cert: x509.Certificate, usage: x509.ObjectIdentifier) -> bool:
    try:
        return usage in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False


def ca_problems(ca_cert: x509.Certificate | bytes, *, renew_within_days: float = 0,
                now: datetime.datetime | None = None) -> list[str]:
    """What is wrong with a CA certificate, if anything.

    Args:
        ca_cert: The CA certificate (object or PEM).
        renew_within_days: Also report an expiry within this many days.
        now: The reference time (timezone-aware); the current time when ``None``.

    Returns:
        Human-readable problems; empty when it is a usable CA.

    Raises:
        ConfigError: the PEM is unreadable.
    """
    c = _as_cert(ca_cert, "CA certificate")
    problems = []
    try:
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(messages.CA_NOT_A_CA)
    if not isinstance(c.public_key(), ec.EllipticCurvePublicKey) or not isinstance(c.public_key().curve,
                                                                                   ec.SECP256R1):
        problems.append(messages.CA_NOT_P256)
    if c.issuer != c.subject or not chains_to(c, c):
        problems.append(messages.CA_NOT_SELF_SIGNED)
    if expires_within(c, renew_within_days, now=now):
        problems.append(messages.CERT_VALIDITY.format(start=c.not_valid_before_utc.isoformat(),
                                                      end=c.not_valid_after_utc.isoformat()))
    return problems


def _leaf_problems(cert_pem: bytes | None, key_pem: bytes | None, ca_cert: x509.Certificate | bytes,
                   usage: x509.ObjectIdentifier, renew_within_days: float,
                   now: datetime.datetime | None) -> tuple[x509.Certificate | None, list[str]]:
    if not cert_pem:
        return None, [messages.CERT_MISSING]
    try:
        cert = load_certificate(cert_pem)
    except ConfigError as e:
        return None, [str(e)]
    problems = []
    if not chains_to(cert, ca_cert):
        problems.append(messages.CERT_NOT_FROM_CA)
    if expires_within(cert, renew_within_days, now=now):
        problems.append(messages.CERT_EXPIRES.format(date=cert.not_valid_after_utc.date().isoformat(),
                                                     days=renew_within_days))
    if not _has_usage(cert, usage):
        problems.append(messages.CERT_LACKS_USAGE.format(usage=_USAGE_NAMES[usage]))
    if not key_pem:
        problems.append(messages.CERT_KEY_MISSING)
    else:
        try:
            if not key_matches(cert, key_pem):
                problems.append(messages.CERT_KEY_MISMATCH)
        except ConfigError as e:
            problems.append(str(e))
    return cert, problems


def server_cert_problems(cert_pem: bytes | None, key_pem: bytes | None, ca_cert: x509.Certificate | bytes, *,
                         dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
                         renew_within_days: float = RENEW_WITHIN_DAYS,
                         now: datetime.datetime | None = None) -> list[str]:
    """Why the shell host's server certificate must be reissued, if it must.

    Args:
        cert_pem: The installed ``server.pem``, or ``None``/empty when absent.
        key_pem: The installed ``server.key``, or ``None``/empty when absent.
        ca_cert: The cluster CA certificate (object or PEM).
        dns_names: DNS names it must carry besides :data:`SHELL_PEER_NAME`.
        ip_addresses: IP addresses it must carry.
        renew_within_days: Reissue when it expires within this many days.
        now: The reference time (timezone-aware); the current time when ``None``.

    Returns:
        Human-readable reasons; an empty list means the installed pair is fine and is kept.

    Raises:
        ConfigError: ``ca_cert`` is unreadable or a wanted name is malformed.
    """
    cert, problems = _leaf_problems(cert_pem, key_pem, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                                    renew_within_days, now)
    wanted = [SHELL_PEER_NAME, *dns_names]
    if cert is not None and not names_host(cert, wanted, ip_addresses):
        have_dns, have_ips = cert_names(cert)
        problems.append(messages.CERT_NAMES.format(have=", ".join(have_dns + have_ips) or "nothing",
                                                   want="all of " + ", ".join(wanted + list(ip_addresses))))
    return problems


def agent_cert_problems(cert_pem: bytes | None, key_pem: bytes | None, ca_cert: x509.Certificate | bytes,
                        agent_id: str, *, renew_within_days: float = RENEW_WITHIN_DAYS,
                        now: datetime.datetime | None = None) -> list[str]:
    """Why an agent's client certificate must be reissued, if it must.

    Args:
        cert_pem: The agent's installed ``client.pem``, or ``None``/empty when absent.
        key_pem: The agent's installed ``client.key``, or ``None``/empty when absent.
        ca_cert: The cluster CA certificate (object or PEM).
        agent_id: The agent's ID; the certificate must name ``<agent-id>.agents.convocate``.
        renew_within_days: Reissue when it expires within this many days.
        now: The reference time (timezone-aware); the current time when ``None``.

    Returns:
        Human-readable reasons; an empty list means the installed pair is fine and is kept.

    Raises:
        ConfigError: ``ca_cert`` is unreadable or ``agent_id`` is malformed.
    """
    name = agent_peer_name(agent_id)
    cert, problems = _leaf_problems(cert_pem, key_pem, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH,
                                    renew_within_days, now)
    if cert is not None:
        dns, _ = cert_names(cert)
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if dns != [name] or cns != [name]:
            problems.append(messages.CERT_NAMES.format(have=", ".join(dict.fromkeys(dns + cns)) or "nothing",
                                                       want=name))
    return problems


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
