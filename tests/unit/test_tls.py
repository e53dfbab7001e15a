"""mailferry.tls: the server context, its reload, self-signed certificates; and the embedded
default's listeners. Real handshakes over a loopback socket pair, no mocks."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from mailferry.config import TlsConfig, default_config
from mailferry.tls import (
    TlsError,
    ensure_self_signed,
    reload,
    server_context,
    write_self_signed,
)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, bytes]:
    """One TLS handshake over a socket pair: (version, server certificate DER)."""
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.sendall(b"ok")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname="localhost") as c:
            assert c.recv(2) == b"ok"
            version, der = c.version(), c.getpeercert(binary_form=True)
    finally:
        t.join(10)
        a.close()
    assert not errors, errors
    assert version is not None and der is not None
    return version, der


def _client_trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_self_signed_files_and_modes(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path / "out", "mx.example.test", days=10)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_server_context_is_tls12_or_better(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, "mx.example.test")
    ctx = server_context(TlsConfig(cert, key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    version, _ = _handshake(ctx, _client_trusting(cert))
    assert version in ("TLSv1.2", "TLSv1.3")
    # Only forward-secret AEAD ciphers for TLS 1.2.
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(("ECDHE" in n or "DHE" in n) and ("GCM" in n or "CHACHA20" in n)
                         for n in tls12)


def test_reload_swaps_the_certificate_in_the_live_context(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, "mx.example.test")
    tls = TlsConfig(cert, key)
    ctx = server_context(tls)
    _, first = _handshake(ctx, _client_trusting(cert))
    write_self_signed(tmp_path, "mx.example.test")  # renewed in place
    reload(ctx, tls)
    _, second = _handshake(ctx, _client_trusting(cert))
    assert first != second


def test_reload_with_a_mismatched_key_keeps_the_old_certificate(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path / "a", "mx.example.test")
    _, other_key = write_self_signed(tmp_path / "b", "mx.example.test")
    tls = TlsConfig(cert, key)
    ctx = server_context(tls)
    key.write_bytes(other_key.read_bytes())
    with pytest.raises(TlsError, match="cannot load"):
        reload(ctx, tls)
    _handshake(ctx, _client_trusting(cert))  # still serves the old, consistent pair


def test_missing_files_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TlsError) as info:
        server_context(TlsConfig(tmp_path / "nope.pem", tmp_path / "nokey.pem"))
    assert "no such file" in str(info.value)
    assert "\n" not in str(info.value)


def test_embedded_default_listens_for_clients_with_a_self_signed_certificate(tmp_path: Path
                                                                          ) -> None:
    config = default_config(tmp_path)
    assert [(li.host, li.port, li.kind) for li in config.listeners] == [
        ("127.0.0.1", 2525, "smtp"), ("127.0.0.1", 2587, "submission"),
        ("127.0.0.1", 2465, "smtps")]
    assert config.tls.self_signed and config.tls.certificate == tmp_path / "var/tls/cert.pem"
    assert ensure_self_signed(config.tls, config.server.hostname)
    assert not ensure_self_signed(config.tls, config.server.hostname)  # only on the first start
    assert config.tls.key is not None and config.tls.certificate is not None
    assert stat.S_IMODE(os.stat(config.tls.key).st_mode) == 0o600
    _handshake(server_context(config.tls), _client_trusting(config.tls.certificate))


def test_a_configured_certificate_is_never_overwritten(tmp_path: Path) -> None:
    tls = TlsConfig(tmp_path / "cert.pem", tmp_path / "key.pem")  # from a file: not self_signed
    assert not ensure_self_signed(tls, "mx.example.test")
    assert not tls.certificate.exists()  # type: ignore[union-attr]
