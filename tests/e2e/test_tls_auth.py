"""TLS and AUTH end to end (issue 5): real clients — smtplib, swaks, openssl s_client, raw
sockets wrapped in ssl — against the real daemon with trustme certificates.

One daemon for most tests: listeners smtp + submission + smtps, [relay] networks that do NOT
include loopback (so relaying needs AUTH), alice and bob with passwords, carol without a login,
alias sales → alice. Every attack of the issue has a test here, and every test checks the
transaction log for what must (and must not) be in it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mailferry.txlog.format import split_line
from tests.support.daemon import Daemon, TlsFiles, free_port, mailferry, wait_port
from tests.support.dialog import Dialog
from tests.support.smtp_peer import Peer

ALICE_PW = "correct horse battery staple"
BOB_PW = "hunter2-but-longer"
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    """The 'remote' server that relayed mail goes to ([relay] host)."""
    with Peer(HOST, free_port(HOST)) as p:
        yield p


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mta(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles, peer: Peer
        ) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("mf-tls")
    daemon = Daemon(root, tls=tls_files, kinds=("submission", "smtps"), overrides={
        "relay": {"networks": ["192.0.2.0/24"], "host": f"{HOST}:{peer.port}"},
        "queue": {"retry_schedule": [1], "retry_every": 1},
    })
    daemon.add_user("alice@example.test", ALICE_PW)
    daemon.add_user("bob@example.test", BOB_PW)
    daemon.add_user("carol@example.test")  # receives mail, cannot log in
    daemon.cli("alias", "add", "sales@example.test", "alice@example.test")
    with daemon:
        yield daemon


def submission(mta: Daemon, tls_files: TlsFiles) -> smtplib.SMTP:
    client = smtplib.SMTP(HOST, mta.ports["submission"], timeout=10)
    client.ehlo("laptop.example.test")
    client.starttls(context=tls_files.client_context())
    client.ehlo("laptop.example.test")
    return client


def session_of(mta: Daemon, *needles: str) -> list[str]:
    """The transaction-log lines of the session whose lines contain every one of ``needles``."""
    line = mta.wait_line(*needles)
    prefix = line[:line.index("]") + 1]  # "127.0.0.1       [SID]": SIDs are reused, so cut
    lines = mta.log_text().splitlines()  # from the last Connected before the line
    at = lines.index(line)
    start = next(i for i in range(at, -1, -1)
                 if lines[i].startswith(prefix) and " Connected" in lines[i])
    found = []
    for ln in lines[start:]:
        if ln.startswith(prefix):
            found.append(ln)
            if ln.endswith(" Disconnected"):
                break
    return found


def body(line: str) -> str:
    split = split_line(line)
    assert split is not None, line
    return split[3]


def secrets_of(user: str, password: str) -> list[str]:
    """Everything that would betray the password in a log: itself and its SASL encodings."""
    plain = f"\0{user}\0{password}".encode()
    return [password, base64.b64encode(plain).decode(),
            base64.b64encode(password.encode()).decode()]


def assert_no_secrets(mta: Daemon) -> None:
    text = mta.log_text() + (mta.root / "stderr.log").read_text(errors="replace")
    for user, pw in (("alice@example.test", ALICE_PW), ("bob@example.test", BOB_PW)):
        for secret in secrets_of(user, pw):
            assert secret not in text


# --- real clients ---------------------------------------------------------------------------------
def test_smtplib_starttls_login_and_send_to_a_local_user(mta: Daemon, tls_files: TlsFiles) -> None:
    before = len(mta.messages("bob@example.test"))
    with submission(mta, tls_files) as client:
        assert client.has_extn("auth") and not client.has_extn("starttls")
        client.login("alice@example.test", ALICE_PW)  # smtplib picks PLAIN
        refused = client.sendmail("alice@example.test", ["bob@example.test"],
                                  b"Subject: over TLS\r\n\r\nhello\r\n")
        assert refused == {}
    [*_, path] = mta.wait_messages("bob@example.test", before + 1)
    message = path.read_bytes()
    assert b"with ESMTPSA id" in message
    assert b"(using TLSv1.3 with cipher " in message
    assert b"alice@example.test" not in message.split(b"\r\n\r\n", 1)[0].split(b"Received:")[1]
    sess = session_of(mta, "Authenticated as alice@example.test (PLAIN)")
    bodies = [body(ln) for ln in sess]
    assert "<<< STARTTLS" in bodies and ">>> 220 2.0.0 Ready to start TLS" in bodies
    assert any(b.startswith("TLS established: TLSv1.") for b in bodies)
    assert "<<< AUTH PLAIN" in bodies  # the initial response (the password) removed
    assert ">>> 235 2.7.0 Authentication successful" in bodies
    assert_no_secrets(mta)


def test_smtplib_auth_login_shows_the_prompts_and_hides_the_answers(
        mta: Daemon, tls_files: TlsFiles) -> None:
    with submission(mta, tls_files) as client:
        client.user, client.password = "bob@example.test", BOB_PW
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
    sess = session_of(mta, "Authenticated as bob@example.test (LOGIN)")
    bodies = [body(ln) for ln in sess]
    i = bodies.index("<<< AUTH LOGIN")
    assert bodies[i:i + 6] == ["<<< AUTH LOGIN", ">>> 334 VXNlcm5hbWU6", "<<< ****",
                               ">>> 334 UGFzc3dvcmQ6", "<<< ****",
                               ">>> 235 2.7.0 Authentication successful"]
    assert_no_secrets(mta)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_tls_auth_relays_through_submission(mta: Daemon, tls_files: TlsFiles, peer: Peer,
                                                  mechanism: str) -> None:
    rcpt = f"swaks-{mechanism.lower()}@example.net"
    result = subprocess.run(
        ["swaks", "--server", f"{HOST}:{mta.ports['submission']}", "--tls", "--tls-verify",
         "--tls-ca-path", str(tls_files.ca_file), "--auth", mechanism,
         "--auth-user", "alice@example.test", "--auth-password", ALICE_PW,
         "--from", "alice@example.test", "--to", rcpt, "--helo", "laptop.example.test",
         "--timeout", "15"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    assert f"<{rcpt}>... Recipient ok; will forward" in result.stdout
    # Relayed for real: the remote peer got it.
    mta.wait_line("*** <alice@example.test>", f"<{rcpt}>", "OK")
    deadline = time.monotonic() + 20
    while rcpt not in peer.recipients() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rcpt in peer.recipients()
    assert_no_secrets(mta)


def test_smtps_implicit_tls_with_smtplib(mta: Daemon, tls_files: TlsFiles) -> None:
    before = len(mta.messages("carol@example.test"))
    with smtplib.SMTP_SSL(HOST, mta.ports["smtps"], context=tls_files.client_context(),
                          timeout=10) as client:
        client.ehlo("laptop.example.test")
        assert not client.has_extn("starttls")  # already encrypted (RFC 8314)
        assert "PLAIN" in client.esmtp_features["auth"]
        client.login("bob@example.test", BOB_PW)
        client.sendmail("bob@example.test", ["carol@example.test"], b"Subject: 465\r\n\r\nhi\r\n")
    [*_, path] = mta.wait_messages("carol@example.test", before + 1)
    assert b"with ESMTPSA id" in path.read_bytes()


def test_smtps_with_openssl_s_client(mta: Daemon, tls_files: TlsFiles) -> None:
    auth = base64.b64encode(f"\0alice@example.test\0{ALICE_PW}".encode()).decode()
    script = f"EHLO openssl.example.test\r\nAUTH PLAIN {auth}\r\nQUIT\r\n"
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{mta.ports['smtps']}", "-crlf", "-quiet",
         "-CAfile", str(tls_files.ca_file), "-verify_return_error", "-verify_hostname",
         "localhost", "-ign_eof"],
        input=script.replace("\r\n", "\n"), capture_output=True, text=True, timeout=30)
    assert "220 mx.example.test ESMTP" in result.stdout, result.stdout + result.stderr
    assert "250-AUTH PLAIN LOGIN" in result.stdout or "250 AUTH PLAIN LOGIN" in result.stdout
    assert "235 2.7.0" in result.stdout
    assert_no_secrets(mta)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused_and_logged(mta: Daemon) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.0/1.1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with (socket.create_connection((HOST, mta.ports["smtps"]), timeout=10) as raw,
          pytest.raises((ssl.SSLError, ConnectionError))):
        ctx.wrap_socket(raw).recv(100)
    # The server refused it (not the client declining to try): OpenSSL's reason is logged.
    line = mta.wait_line("TLS handshake failed: UNSUPPORTED_PROTOCOL")
    assert body(line) == "TLS handshake failed: UNSUPPORTED_PROTOCOL"
    assert "Traceback" not in (mta.root / "stderr.log").read_text()


def test_plain_text_on_the_smtps_port_is_a_logged_handshake_failure(mta: Daemon) -> None:
    with socket.create_connection((HOST, mta.ports["smtps"]), timeout=10) as s:
        s.sendall(b"EHLO plain.example.test\r\nMAIL FROM:<x@example.net>\r\n")
        s.settimeout(10)
        try:
            data = s.recv(1000)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"2")  # no SMTP reply in the clear, ever
    mta.wait_line("TLS handshake failed:")
    assert "<<< EHLO plain.example.test" not in mta.log_text()
    assert "Traceback" not in (mta.root / "stderr.log").read_text()


# --- attacks: STARTTLS injection ------------------------------------------------------------------
def _tls_dialog(dialog: Dialog, tls_files: TlsFiles) -> Dialog:
    dialog.sock = tls_files.client_context().wrap_socket(dialog.sock,
                                                          server_hostname="localhost")
    dialog.buf = b""
    return dialog


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_commands_pipelined_with_starttls_in_one_packet_never_run(
        mta: Daemon, tls_files: TlsFiles, kind: str) -> None:
    d = Dialog(HOST, mta.ports[kind])
    assert d.code("EHLO injector.example.test") == 250
    # One send, one packet: STARTTLS and, behind it in the clear, a whole transaction.
    d.send(b"STARTTLS\r\nMAIL FROM:<inject@example.net>\r\nRCPT TO:<carol@example.test>\r\n"
           b"DATA\r\n")
    assert d.reply()[0] == 220
    assert d.buf == b""  # nothing else was answered in the clear
    _tls_dialog(d, tls_files)
    # Had the injected commands run, this MAIL would be "nested" (503) or RCPT would already
    # be accepted; instead the session starts over and needs EHLO again.
    assert d.code("MAIL FROM:<alice@example.test>") == 503
    assert d.code("EHLO injector.example.test") == 250
    assert d.code("QUIT") == 221
    d.close()
    sess = session_of(mta, "<<< EHLO injector.example.test")
    assert "inject@example.net" not in "\n".join(sess) and "inject@" not in mta.log_text()
    assert sum(1 for ln in sess if ln.endswith("<<< EHLO injector.example.test")) == 2


def test_bytes_after_starttls_in_a_later_packet_break_the_handshake_not_the_server(
        mta: Daemon, tls_files: TlsFiles) -> None:
    d = Dialog(HOST, mta.ports["submission"])
    d.code("EHLO late.example.test")
    assert d.code("STARTTLS") == 220
    d.send(b"MAIL FROM:<late-inject@example.net>\r\n")  # in the clear, where TLS must be
    assert d.closed()
    d.close()
    mta.wait_line("TLS handshake failed:")
    assert "late-inject@example.net" not in mta.log_text()


def test_ehlo_after_tls_offers_no_starttls_and_a_second_starttls_is_refused(
        mta: Daemon, tls_files: TlsFiles) -> None:
    d = Dialog(HOST, mta.ports["smtp"])
    code, lines = d.cmd("EHLO twice.example.test")
    assert "STARTTLS" in lines
    assert not any(ln.startswith("AUTH") for ln in lines)
    assert d.code("STARTTLS") == 220
    _tls_dialog(d, tls_files)
    code, lines = d.cmd("EHLO twice.example.test")
    assert code == 250 and "STARTTLS" not in lines
    # [auth] on_smtp is false: no AUTH on the smtp listener, even over TLS.
    assert not any(ln.startswith("AUTH") for ln in lines)
    assert d.code("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0x").decode()) == 502
    assert d.code("STARTTLS") == 503
    d.close()


# --- attacks: AUTH in the clear, relay, MAIL before AUTH, sender mismatch -------------------------
def test_auth_is_never_offered_or_accepted_in_the_clear(mta: Daemon) -> None:
    d = Dialog(HOST, mta.ports["submission"])
    code, lines = d.cmd("EHLO clear.example.test")
    assert code == 250 and "STARTTLS" in lines
    assert not any(ln.startswith("AUTH") for ln in lines)
    secret = base64.b64encode(f"\0alice@example.test\0{ALICE_PW}".encode()).decode()
    code, lines = d.cmd(f"AUTH PLAIN {secret}")
    assert (code, lines[0].split()[0]) == (538, "5.7.11")
    assert d.cmd("AUTH LOGIN")[0] == 538
    assert d.code("QUIT") == 221
    d.close()
    assert_no_secrets(mta)


def test_unauthenticated_relay_on_submission_is_refused(mta: Daemon, tls_files: TlsFiles) -> None:
    d = Dialog(HOST, mta.ports["submission"])
    d.code("EHLO relay.example.test")
    code, lines = d.cmd("MAIL FROM:<spammer@example.net>")
    assert (code, lines[0]) == (530, "5.7.0 Must issue a STARTTLS command first")
    assert d.cmd("RCPT TO:<victim@example.org>")[0] == 503
    assert d.code("STARTTLS") == 220
    _tls_dialog(d, tls_files)
    d.code("EHLO relay.example.test")
    code, lines = d.cmd("MAIL FROM:<spammer@example.net>")
    assert (code, lines[0]) == (530, "5.7.0 Authentication required")
    assert d.code("RCPT TO:<victim@example.org>") >= 500
    assert d.code("DATA") >= 500
    d.close()


def test_unauthenticated_relay_on_smtp_is_refused(mta: Daemon) -> None:
    d = Dialog(HOST, mta.ports["smtp"])
    d.code("EHLO relay.example.test")
    assert d.code("MAIL FROM:<spammer@example.net>") == 250
    code, lines = d.cmd("RCPT TO:<victim@example.org>")
    assert (code, lines[0].split()[0]) == (554, "5.7.1")
    d.close()


def test_mail_before_auth_on_submission_is_530(mta: Daemon, tls_files: TlsFiles) -> None:
    with submission(mta, tls_files) as client:
        code, text = client.mail("alice@example.test")
        assert (code, text) == (530, b"5.7.0 Authentication required")


def test_bad_credentials_are_535_and_the_session_stays_usable(mta: Daemon, tls_files: TlsFiles
                                                              ) -> None:
    with submission(mta, tls_files) as client:
        for user, pw in (("alice@example.test", "wrong"), ("nobody@example.test", "x"),
                         ("carol@example.test", "no login")):
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login(user, pw)
            assert info.value.smtp_code == 535
            assert info.value.smtp_error.startswith(b"5.7.8")
        client.login("alice@example.test", ALICE_PW)
        assert client.noop()[0] == 250
    mta.wait_line("Authentication failed for alice@example.test (PLAIN)")
    mta.wait_line("Authentication failed for nobody@example.test (PLAIN)")
    assert "wrong" not in " ".join(ln for ln in mta.log_text().splitlines() if "<<<" in ln)


def test_plain_for_someone_else_is_refused(mta: Daemon, tls_files: TlsFiles) -> None:
    """PLAIN's authorization identity: alice's password must not make her bob."""
    with submission(mta, tls_files) as client:
        token = base64.b64encode(f"bob@example.test\0alice@example.test\0{ALICE_PW}".encode())
        assert client.docmd("AUTH", "PLAIN " + token.decode())[0] == 535


def test_cancel_and_bad_base64(mta: Daemon, tls_files: TlsFiles) -> None:
    with submission(mta, tls_files) as client:
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd("*") == (501, b"5.0.0 Authentication cancelled")
        assert client.docmd("AUTH", "PLAIN")[0] == 334
        assert client.docmd("not base64!!")[0:1] == (501,)
        assert client.noop()[0] == 250


@pytest.mark.parametrize(("sender", "code"), [
    ("alice@example.test", 250), ("Alice@Example.TEST", 250), ("sales@example.test", 250),
    ("", 250), ("bob@example.test", 553), ("ceo@example.net", 553),
])
def test_sender_must_match_the_authenticated_user(mta: Daemon, tls_files: TlsFiles, sender: str,
                                                  code: int) -> None:
    with submission(mta, tls_files) as client:
        client.login("alice@example.test", ALICE_PW)
        got, text = client.mail(sender)
        assert got == code
        if code == 553:
            assert text.startswith(b"5.7.1 ")
    if code == 553:
        mta.wait_line("is not an address of the authenticated user alice@example.test")


# --- what the log and the tracker show ------------------------------------------------------------
def test_tracker_shows_the_authenticated_user_on_the_transaction(mta: Daemon, tls_files: TlsFiles
                                                                 ) -> None:
    with submission(mta, tls_files) as client:
        client.login("alice@example.test", ALICE_PW)
        client.sendmail("alice@example.test", ["carol@example.test"],
                        b"Subject: tracked\r\nX-Track: yes\r\n\r\nhi\r\n")
    line = mta.wait_line(">>> 250 2.6.0", "accepted for delivery")
    msgid = line.split("Message id ")[1].split()[0]
    mta.wait_line("***", msgid)
    out = mailferry("trace", "--json", "--id", msgid, str(mta.log_dir)).stdout
    [record] = [json.loads(x) for x in out.splitlines()]
    assert record["auth_user"] == "alice@example.test"
    assert record["tls"] is True
    assert record["session"]["tls"] is True
    assert record["session"]["auth"] == {"mechanism": "PLAIN", "user": "alice@example.test",
                                         "ok": True}
    text = mailferry("trace", "--id", msgid, str(mta.log_dir)).stdout
    assert "alice@example.test" in text and "TLS" in text


def test_report_reads_tls_and_auth_sessions_as_the_records_do(mta: Daemon) -> None:
    """`report`'s fast reader (tracker/tally.py) against the record path, on this real log of
    STARTTLS, failed handshakes, AUTH exchanges and refused logins."""
    from tests.unit.test_tracker_tally import _assert_same, _both

    old, new = _both([mta.log_dir])
    _assert_same(old, new)
    assert old["log"]["unparsed"] == 0
    # The submissions above: over TLS, logged in, and who submitted them.
    t = old["totals"]
    assert 0 < t["messages_authenticated"] <= t["messages_tls"] <= t["messages_received"]
    users = dict(old["top_authenticated_users"])
    assert users.get("alice@example.test", 0) >= 1
    assert sum(users.values()) == t["messages_authenticated"]


def test_no_secret_anywhere_after_all_of_the_above(mta: Daemon) -> None:
    assert_no_secrets(mta)
    assert "Traceback" not in (mta.root / "stderr.log").read_text()


# --- certificates ---------------------------------------------------------------------------------
def _peer_serial(port: int, ca_file: Path, *, starttls: bool) -> int:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if starttls:
        with smtplib.SMTP(HOST, port, timeout=10) as client:
            client.starttls(context=ctx)
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    else:
        with smtplib.SMTP_SSL(HOST, port, context=ctx, timeout=10) as client:
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    files = TlsFiles.make(tmp_path / "tls")
    daemon = Daemon(tmp_path / "mf", tls=files, kinds=("smtps",))
    with daemon:
        old = {_peer_serial(daemon.port, files.ca_file, starttls=True),
               _peer_serial(daemon.ports["smtps"], files.ca_file, starttls=False)}
        assert len(old) == 1
        files.issue("mx.example.test", "localhost", "127.0.0.1")  # the renewal
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        daemon.wait_log("TLS certificate reloaded")
        new = {_peer_serial(daemon.port, files.ca_file, starttls=True),
               _peer_serial(daemon.ports["smtps"], files.ca_file, starttls=False)}
        assert len(new) == 1 and new != old
        # A broken renewal (key of another certificate) keeps the old one and says so.
        other = TlsFiles.make(tmp_path / "other")
        files.key.write_bytes(other.key.read_bytes())
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        daemon.wait_log("TLS reload failed, keeping the old certificate")
        assert _peer_serial(daemon.port, files.ca_file, starttls=True) in new


def test_auth_on_smtp_after_starttls_when_enabled(tmp_path: Path) -> None:
    files = TlsFiles.make(tmp_path / "tls")
    daemon = Daemon(tmp_path / "mf", tls=files, overrides={
        "auth": {"on_smtp": True}, "relay": {"networks": []}})
    daemon.add_user("alice@example.test", ALICE_PW)
    with daemon:
        d = Dialog(HOST, daemon.port)
        assert not any(ln.startswith("AUTH") for ln in d.cmd("EHLO x.example.test")[1])
        assert d.code("AUTH LOGIN") == 538  # would be offered after TLS: encryption first
        d.close()
        with smtplib.SMTP(HOST, daemon.port, timeout=10) as client:
            client.starttls(context=files.client_context())
            client.ehlo("x.example.test")
            assert client.has_extn("auth")
            # Unauthenticated on port-25 style: MAIL is fine, relaying is not.
            client.mail("alice@example.test")
            assert client.rcpt("someone@example.org")[0] == 554
            client.rset()
            client.login("alice@example.test", ALICE_PW)
            client.mail("alice@example.test")
            assert client.rcpt("someone@example.org")[0] == 250


def test_submission_without_tls_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "mf.toml"
    cfg.write_text('[[listener]]\naddress = "127.0.0.1:2587"\nkind = "submission"\n')
    result = mailferry("config", "check", "--config", str(cfg), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{cfg}:3: listener.kind: \"submission\" needs TLS")


def test_tls_selfsigned_command(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = mailferry("tls", "selfsigned", "--hostname", "mail.example.test", "--out", str(out),
                       "--days", "30")
    assert "[tls]" in result.stdout
    key_mode = stat.S_IMODE(os.stat(out / "key.pem").st_mode)
    assert key_mode == 0o600
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.test" in names.get_values_for_type(x509.DNSName)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 29 <= days <= 30
    # And a daemon serves with it: smtplib verifies it against itself as the CA.
    daemon = Daemon(tmp_path / "mf", kinds=("submission",), overrides={
        "tls": {"certificate": str(out / "cert.pem"), "key": str(out / "key.pem")}})
    daemon.add_user("alice@example.test", ALICE_PW)
    with daemon, smtplib.SMTP(HOST, daemon.ports["submission"], timeout=10) as client:
        ctx = ssl.create_default_context(cafile=str(out / "cert.pem"))
        ctx.check_hostname = False  # the certificate names mail.example.test, we dial an IP
        client.starttls(context=ctx)
        client.login("alice@example.test", ALICE_PW)


def test_embedded_default_serves_submission_out_of_the_box(tmp_path: Path) -> None:
    """No config file at all: `mailferry serve` makes its certificate and takes mail clients on
    127.0.0.1:2587 (STARTTLS) and :2465 (implicit TLS). Fixed ports: if something else holds
    them on this machine, this test fails saying so."""
    for port in (2525, 2587, 2465):
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                pytest.fail(f"port {port} is in use: the embedded default needs it")
    subprocess.run([sys.executable, "-m", "mailferry.cli", "user", "add", "alice@example.test",
                    "--password-stdin"], input=ALICE_PW + "\n", text=True, cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([sys.executable, "-m", "mailferry.cli", "serve"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_port(HOST, 2587, proc=proc)
        wait_port(HOST, 2465, proc=proc, implicit_tls=True)
        cert = tmp_path / "var" / "tls" / "cert.pem"
        assert stat.S_IMODE(os.stat(tmp_path / "var" / "tls" / "key.pem").st_mode) == 0o600
        ctx = ssl.create_default_context(cafile=str(cert))  # names 127.0.0.1 and localhost
        with smtplib.SMTP(HOST, 2587, timeout=10) as client:
            client.starttls(context=ctx)
            client.login("alice@example.test", ALICE_PW)
            assert client.mail("alice@example.test")[0] == 250
        with smtplib.SMTP_SSL(HOST, 2465, context=ctx, timeout=10) as client:
            client.login("alice@example.test", ALICE_PW)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert "submission       127.0.0.1:2587 (STARTTLS, then AUTH PLAIN/LOGIN)" in out
    assert "smtps            127.0.0.1:2465 (implicit TLS, then AUTH PLAIN/LOGIN)" in out
    assert "Traceback" not in err


def test_serve_with_a_missing_certificate_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "mf.toml"
    cfg.write_text(f'[server]\ndata_dir = "data"\n[[listener]]\naddress = "{HOST}:{free_port()}"\n'
                   '[tls]\ncertificate = "missing.pem"\nkey = "missing.key"\n')
    result = subprocess.run([sys.executable, "-m", "mailferry.cli", "serve", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"mailferry: error: [tls] {tmp_path / 'missing.pem'}: no such file\n"
