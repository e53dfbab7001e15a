"""bench/tlsload.py, the submission load client, against real TLS + AUTH servers on loopback.

An aiosmtpd server (STARTTLS or implicit TLS, AUTH required, a trustme certificate) checks what
the client really sends; a private Postfix set up like bench/submission.py's checks that the
Postfix side of the benchmark works (marked ``postfix``: needs root, Postfix and Cyrus SASL).
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from bench.tlsload import run
from tests.support.postfix import free_port, wait_for_maildir
from tests.support.postfix_submission import (
    SubmissionPostfix,
    make_certificate,
    submission_unavailable,
)

pytestmark = pytest.mark.timeout(120)

LOGIN = "alice@example.test"
PASSWORD = "correct horse"


@dataclass
class Recorder:
    """aiosmtpd handler and authenticator: keeps every message and every login attempt."""

    messages: list[tuple[str, list[str], bytes, object]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos),
                                  bytes(envelope.content or b""), session.authenticated))
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: object) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        with self.lock:
            self.logins.append((mechanism, login))
        # handled=False: aiosmtpd itself answers 235 or 535 (its default assumes we did).
        return AuthResult(success=(login, password) == (LOGIN, PASSWORD), handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def starttls_server(ca: trustme.CA, recorder: Recorder) -> Iterator[Controller]:
    """aiosmtpd on 127.0.0.1: STARTTLS required before anything, then AUTH before MAIL."""
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_port(), tls_context=_server_context(ca),
        require_starttls=True, auth_required=True, auth_require_tls=True,
        authenticator=recorder.authenticate,
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtps_server(ca: trustme.CA, recorder: Recorder) -> Iterator[Controller]:
    """aiosmtpd on 127.0.0.1 with implicit TLS (the handshake first), AUTH required.

    auth_require_tls stays off: aiosmtpd only counts STARTTLS as TLS, and every byte of this
    server's sessions is encrypted anyway.
    """
    controller = Controller(
        recorder, hostname="127.0.0.1", port=free_port(), ssl_context=_server_context(ca),
        auth_required=True, auth_require_tls=False, authenticator=recorder.authenticate,
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def test_starttls_auth_plain_sends_every_message(
    starttls_server: Controller, recorder: Recorder, ca_file: str
) -> None:
    result = run(
        "127.0.0.1", starttls_server.port, messages=7, sessions=3, size=2000,
        username=LOGIN, password=PASSWORD, recipient="bob@example.test", cafile=ca_file,
        total_timeout=60,
    )

    assert result.errors == []
    assert (result.accepted, result.failed, result.session_errors) == (7, 0, 0)
    assert result.ok and not result.timed_out
    assert result.tls_version.startswith("TLSv1.")
    # One handshake, one EHLO after it and one AUTH per message: a fresh session each time.
    assert len(result.tls) == len(result.ehlo) == len(result.auth) == len(result.latency) == 7
    assert all(total > data > 0 for total, data in zip(result.latency, result.data, strict=True))
    assert result.rate > 0
    assert recorder.logins == [("PLAIN", LOGIN)] * 7
    assert len(recorder.messages) == 7
    subjects = set()
    for sender, recipients, content, authenticated in recorder.messages:
        assert (sender, recipients, authenticated) == (LOGIN, ["bob@example.test"], True)
        message = message_from_bytes(content)
        subjects.add(message["Subject"])
        assert len(message.get_payload()) >= 2000
    assert subjects == {f"load {n}" for n in range(1, 8)}


def test_implicit_tls_with_auth_login(
    smtps_server: Controller, recorder: Recorder, ca_file: str
) -> None:
    result = run(
        "127.0.0.1", smtps_server.port, messages=4, sessions=2, username=LOGIN,
        password=PASSWORD, smtps=True, auth="login", cafile=ca_file, total_timeout=60,
    )

    assert result.errors == []
    assert (result.accepted, result.failed) == (4, 0)
    assert recorder.logins == [("LOGIN", LOGIN)] * 4
    assert [m[1] for m in recorder.messages] == [["user@bench.test"]] * 4


def test_wrong_password_counts_every_message_as_failed(
    starttls_server: Controller, recorder: Recorder, ca_file: str
) -> None:
    result = run(
        "127.0.0.1", starttls_server.port, messages=3, sessions=2, username=LOGIN,
        password="wrong", cafile=ca_file, total_timeout=60,
    )

    assert (result.accepted, result.failed) == (0, 3)
    assert not result.ok
    assert any("AUTH PLAIN: expected 235, got 535" in e for e in result.errors), result.errors
    assert recorder.messages == []


def test_untrusted_certificate_fails_the_handshake(
    starttls_server: Controller, recorder: Recorder, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))

    result = run(
        "127.0.0.1", starttls_server.port, messages=2, sessions=1, username=LOGIN,
        password=PASSWORD, cafile=str(other_ca), total_timeout=60,
    )

    assert (result.accepted, result.failed) == (0, 2)
    assert any("SSL" in e or "certificate" in e for e in result.errors), result.errors
    assert recorder.logins == [] and recorder.messages == []


@pytest.fixture
def postfix_root() -> Iterator[Path]:
    """A folder for a private Postfix outside pytest's tmp_path.

    Postfix's daemons (user postfix) must search every folder above their files; PostfixInstance
    gives them o+x, but any other pytest process starting on the machine sets
    /tmp/pytest-of-<user> back to 0700, which breaks an instance running under it.
    """
    root = Path(tempfile.mkdtemp(prefix="mailferry-test-postfix-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postfix
def test_against_private_postfix_submission(postfix_root: Path) -> None:
    reason = submission_unavailable()
    if reason:
        pytest.skip(reason)
    cert, key, ca_pem = make_certificate(postfix_root / "tls")
    postfix = SubmissionPostfix(
        root=postfix_root / "postfix", port=free_port(), domain="bench.test",
        cert_file=cert, key_file=key, logins={"user@bench.test": "pw-for-postfix"},
    )
    with postfix:
        # The setup really demands TLS and AUTH: without them nothing gets through.
        with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
            client.ehlo()
            assert client.mail("user@bench.test")[0] == 530  # "Must issue a STARTTLS first"
        with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(ca_pem)))
            client.ehlo()
            client.mail("user@bench.test")
            assert client.rcpt("user@bench.test")[0] == 554  # not authenticated
        plain = run(postfix.host, postfix.port, messages=1, sessions=1,
                    username="user@bench.test", password="wrong", cafile=str(ca_pem),
                    total_timeout=60)
        assert plain.failed == 1 and "535" in " ".join(plain.errors)

        result = run(postfix.host, postfix.port, messages=6, sessions=3,
                     username="user@bench.test", password="pw-for-postfix",
                     recipient="user@bench.test", cafile=str(ca_pem), total_timeout=60)
        assert result.errors == [], postfix.maillog_tail()
        assert (result.accepted, result.failed) == (6, 0)
        delivered = wait_for_maildir(postfix.maildir("user"), 6, timeout=30)
        assert len(delivered) == 6
        log = postfix.maillog.read_text()
        assert log.count("sasl_method=PLAIN, sasl_username=user@bench.test") == 6


def test_submission_bench_setup_check(
    starttls_server: Controller, recorder: Recorder, ca: trustme.CA, ca_file: str
) -> None:
    """bench/submission.py refuses to compare a server that takes mail without TLS or AUTH."""
    from bench.submission import same_setup_problem

    assert same_setup_problem(starttls_server.port, Path(ca_file)) is None

    open_relay = Controller(recorder, hostname="127.0.0.1", port=free_port())
    open_relay.start()
    try:
        problem = same_setup_problem(open_relay.port, Path(ca_file))
    finally:
        open_relay.stop()
    assert problem is not None and "MAIL accepted before STARTTLS" in problem

    tls_without_auth = Controller(recorder, hostname="127.0.0.1", port=free_port(),
                                  tls_context=_server_context(ca), require_starttls=True)
    tls_without_auth.start()
    try:
        problem = same_setup_problem(tls_without_auth.port, Path(ca_file))
    finally:
        tls_without_auth.stop()
    assert problem == "MAIL and RCPT accepted after STARTTLS without AUTH"
    assert recorder.messages == []
