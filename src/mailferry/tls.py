"""Server-side TLS: the SSL context the listeners share, its reload on HUP, and self-signed
certificates for a first run (``mailferry tls selfsigned``, and the embedded default's).

Where: built once by ``daemon`` from ``[tls]``; sessions only receive the context. Reloading
loads the new files into the *same* context object (after trying them in a scratch one), so the
listeners and the sessions need not be told: new handshakes use the new certificate, running
sessions keep theirs.

Must not: weaken the protocol for old clients (TLS 1.2 is the minimum, RFC 8996 / RFC 9325) or
leave a private key readable by others.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailferry.config import TlsConfig

# Mozilla's "intermediate" set for TLS 1.2 (forward secrecy, AEAD only); TLS 1.3 suites are
# OpenSSL's defaults and all sound.
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


class TlsError(Exception):
    """A certificate or key that cannot be used; the message names the file and why."""


def _load_into(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    assert tls.certificate is not None and tls.key is not None
    for path in (tls.certificate, tls.key):
        # load_cert_chain's own errors do not name the file: say which one is the problem.
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise TlsError(f"{path}: no such file") from None
        except OSError as err:
            raise TlsError(f"{path}: {err.strerror or err}") from None
    try:
        ctx.load_cert_chain(str(tls.certificate), str(tls.key))
    except (ssl.SSLError, OSError) as err:
        why = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)
        raise TlsError(f"{tls.certificate} / {tls.key}: cannot load the certificate and key "
                       f"({why})") from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context with the configured certificate. Raises TlsError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
    _load_into(ctx, tls)
    return ctx


def reload(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    """Load the certificate and key again (after a renewal) into the live context.

    Tried in a scratch context first: a half-written or mismatched pair raises TlsError and the
    live context keeps the old certificate."""
    server_context(tls)
    _load_into(ctx, tls)


def self_signed(hostname: str, days: int = 365) -> tuple[bytes, bytes]:
    """A throwaway certificate for ``hostname`` (and localhost, 127.0.0.1, ::1): (cert, key) PEM.

    An EC P-256 key: small, fast, and accepted by every client that speaks TLS 1.2."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        names.append(x509.DNSName("localhost"))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_self_signed(out: Path, hostname: str, days: int = 365) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (mode 0600, created so: never readable by others)."""
    cert_pem, key_pem = self_signed(hostname, days)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask, and ignored for an old file
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # a reader (HUP reload) never sees half a file


def ensure_self_signed(tls: TlsConfig, hostname: str) -> bool:
    """The embedded default: make its certificate on the first start. True when one was made."""
    if not tls.self_signed or tls.certificate is None or tls.key is None:
        return False
    if tls.certificate.exists() and tls.key.exists():
        return False
    cert_pem, key_pem = self_signed(hostname)
    tls.key.parent.mkdir(parents=True, exist_ok=True)
    _write(tls.key, key_pem, 0o600)
    _write(tls.certificate, cert_pem, 0o644)
    return True
