"""The log PKI's certificate profile: lifetimes, peer names, PEM parsing and the checks a re-run makes.

What :mod:`convocate_host.pki` issues is checked here against the profile it describes (RFC 5280:
issuer and signature, validity, SAN names, ``extendedKeyUsage``, the key pair): each ``*_problems``
function returns the reasons to reissue, an empty list meaning keep. Nothing here touches a file or
makes a key.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
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
