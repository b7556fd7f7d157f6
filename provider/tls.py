"""TLS for the mail listeners: the configured PEM pair, or a generated self-signed one."""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificate_paths(settings: dict[str, Any]) -> tuple[Path, Path]:
    """TLS_CERT/TLS_KEY when set; otherwise a self-signed pair kept in INSTANCE_DIR/tls/."""
    if settings["TLS_CERT"] and settings["TLS_KEY"]:
        return Path(settings["TLS_CERT"]), Path(settings["TLS_KEY"])
    directory = Path(settings["INSTANCE_DIR"]) / "tls"
    cert, key = directory / "selfsigned-cert.pem", directory / "selfsigned-key.pem"
    if not (cert.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        # Several processes start at once (submission runs one per core): one makes the
        # pair, the others wait and use it — never one's key with another's certificate.
        fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not (cert.exists() and key.exists()):
                _write_self_signed(cert, key, settings.get("HOSTNAME") or "localhost")
        finally:
            os.close(fd)
    return cert, key


def _write_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    # fetchmail (and other clients that hand OpenSSL the server name as a host name) compare
    # "127.0.0.1" with the DNS names only: name the address as a DNS name too.
    alt_names.append(x509.DNSName("127.0.0.1"))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    # Key first, private from the start; both written aside and renamed so a reader never
    # sees half a file.
    for path, data, mode in (
        (
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        ),
        (cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(draft, path)


def server_context(settings: dict[str, Any]) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) with the configured or generated certificate."""
    cert, key = certificate_paths(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    # No TLS 1.3 session tickets: they arrive after the handshake, and offlineimap's imaplib2
    # then hung in about one STARTTLS sync in two (its reader thread holds the TLS socket in a
    # blocking read while the next command waits; tests/clients/test_starttls_clients.py).
    # Mail clients reconnect rarely enough that a full handshake costs nothing noticeable.
    context.num_tickets = 0
    return context
