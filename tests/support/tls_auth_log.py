"""A served log of plain, TLS and authenticated sessions, written with txlog/format.py.

For the report's TLS / AUTH counts (tests/unit/test_tracker_report_auth.py) and the equivalence
of its two paths (tests/unit/test_tracker_tally.py). Each session's docstring line below says
what the record path makes of it; EXPECTED sums that up. Every line is one mailferry writes
(inbound/session.py), plus one synthetic session whose TLS and login notes come before MAIL FROM
without an exchange, the shape tally._served reads.
"""

from __future__ import annotations

from mailferry.txlog import format as fmt

LOCAL_IP = "198.51.100.5"
HOST = "mail.example.com"

# What the record path counts on this log (checked by hand against the sessions below).
EXPECTED = {
    "messages_received": 11,
    "messages_tls": 7,
    "messages_authenticated": 6,
    "top_authenticated_users": [["alice@example.com", 3], ["bob@example.com", 2],
                                ["carol@example.com", 1]],
}


class _Session:
    def __init__(self, peer: str, sid: str, hour: int) -> None:
        self.peer, self.sid, self.hour, self.tick = peer, sid, hour, 0
        self.lines: list[str] = []

    def add(self, body: str) -> None:
        clock = f"{self.hour:02d}:{self.tick // 60:02d}:{self.tick % 60:02d}"
        self.tick += 1
        self.lines.append(fmt.line(self.peer, self.sid, clock, body) + "\n")

    def open(self, implicit_tls: bool = False) -> None:
        self.add(fmt.connected(LOCAL_IP))
        if implicit_tls:  # port 465: the handshake comes before the greeting
            self.add(fmt.tls_established("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
        self.add(fmt.sent(f"220 {HOST} ESMTP mailferry"))
        self.ehlo()

    def ehlo(self) -> None:
        self.add(fmt.received("EHLO client.example.org"))
        self.add(fmt.sent(f"250-{HOST} Hello client.example.org [{self.peer}]"))
        self.add(fmt.sent("250-STARTTLS"))
        self.add(fmt.sent("250 AUTH PLAIN LOGIN"))

    def starttls(self, code: str = "220", handshake: bool = True) -> None:
        self.add(fmt.received("STARTTLS"))
        if code != "220":
            self.add(fmt.sent(f"{code} 4.7.0 TLS not available"))
            return
        self.add(fmt.sent("220 2.0.0 Ready to start TLS"))
        if handshake:
            self.add(fmt.tls_established("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
            self.ehlo()
        else:
            self.add(fmt.tls_failed("unexpected eof while reading"))

    def auth(self, user: str, ok: bool = True) -> None:
        self.add(fmt.received("AUTH LOGIN"))
        self.add(fmt.sent("334 VXNlcm5hbWU6"))
        self.add(fmt.received(fmt.SECRET))
        self.add(fmt.sent("334 UGFzc3dvcmQ6"))
        self.add(fmt.received(fmt.SECRET))
        if ok:
            self.add(fmt.auth_succeeded(user, "LOGIN"))
            self.add(fmt.sent("235 2.7.0 Authentication successful"))
        else:
            self.add(fmt.auth_failed(user, "LOGIN"))
            self.add(fmt.sent("535 5.7.8 Authentication credentials invalid"))

    def message(self, sender: str, rcpt: str, msgid: str, accepted: bool = True) -> None:
        self.add(fmt.received(f"MAIL FROM:<{sender}>"))
        self.add(fmt.sent(f"250 2.1.0 <{sender}>... Sender ok"))
        self.add(fmt.received(f"RCPT TO:<{rcpt}>"))
        if not accepted:
            self.add(fmt.sent(f"550 5.1.1 <{rcpt}>... User unknown"))
            self.add(fmt.received("RSET"))
            self.add(fmt.sent("250 2.0.0 Reset state"))
            return
        self.add(fmt.sent(f"250 2.1.5 <{rcpt}>... Recipient ok"))
        self.add(fmt.received("DATA"))
        self.add(fmt.sent('354 Enter mail, end with "." on a line by itself'))
        self.add(fmt.data_bytes("<<<", 1200, 1))
        self.add(fmt.START_PROCESSING)
        self.add(fmt.summary(sender, rcpt, 1, 1195, "00:00:01", "OK", msgid))
        self.add(fmt.sent(f"250 2.6.0 1195 bytes received in 00:00:01; Message id {msgid} "
                          "accepted for delivery"))

    def close(self) -> list[str]:
        self.add(fmt.received("QUIT"))
        self.add(fmt.sent(f"221 2.0.0 {HOST} closing connection"))
        self.add(fmt.DISCONNECTED)
        return self.lines


def lines() -> list[str]:
    """The log's lines (each ending with a newline), sessions one after the other."""
    out: list[str] = []

    s = _Session("192.0.2.31", "2001", 12)  # plain: received, neither TLS nor AUTH
    s.open()
    s.message("zoe@example.org", "dave@example.com", "MFTA000001")
    out += s.close()

    s = _Session("192.0.2.32", "2002", 12)  # STARTTLS + AUTH, two messages: 2 TLS, 2 alice
    s.open()
    s.starttls()
    s.auth("alice@example.com")
    s.message("alice@example.com", "dave@example.com", "MFTA000002")
    s.message("alice@example.com", "erin@example.com", "MFTA000003")
    out += s.close()

    s = _Session("192.0.2.33", "2003", 12)  # plain, then STARTTLS: 1 plain, 1 TLS
    s.open()
    s.message("yann@example.org", "dave@example.com", "MFTA000004")
    s.starttls()
    s.message("yann@example.org", "erin@example.com", "MFTA000005")
    out += s.close()

    s = _Session("192.0.2.34", "2004", 12)  # STARTTLS refused (454): plain
    s.open()
    s.starttls(code="454")
    s.message("xavi@example.org", "dave@example.com", "MFTA000006")
    out += s.close()

    s = _Session("192.0.2.35", "2005", 12)  # the handshake failed: no mail, not counted
    s.open()
    s.starttls(handshake=False)
    s.add(fmt.DISCONNECTED)
    out += s.lines

    s = _Session("192.0.2.36", "2006", 13)  # TLS; a login refused, then bob's: 1 TLS, 1 bob
    s.open()
    s.starttls()
    s.auth("bob@example.com", ok=False)
    s.auth("bob@example.com")
    s.message("bob@example.com", "dave@example.com", "MFTA000007")
    out += s.close()

    s = _Session("192.0.2.37", "2007", 13)  # port 465: 1 TLS + bob, 1 refused (not received)
    s.open(implicit_tls=True)
    s.auth("bob@example.com")
    s.message("bob@example.com", "nobody@example.com", "MFTA000008", accepted=False)
    s.message("bob@example.com", "erin@example.com", "MFTA000009")
    out += s.close()

    s = _Session("192.0.2.38", "2008", 13)  # a refused login only: plain, not authenticated
    s.open()
    s.auth("mallory@example.com", ok=False)
    s.message("mallory@example.org", "dave@example.com", "MFTA000010")
    out += s.close()

    # Synthetic: TLS and login notes right after EHLO, no exchange (tally._served's shape).
    s = _Session("192.0.2.39", "2009", 14)
    s.open()
    s.add(fmt.tls_established("TLSv1.3", "TLS_AES_128_GCM_SHA256"))
    s.add(fmt.auth_succeeded("alice@example.com", "PLAIN"))
    s.message("alice@example.com", "erin@example.com", "MFTA000011")
    out += s.close()

    s = _Session("192.0.2.40", "2010", 14)  # STARTTLS + carol: 1 TLS, 1 carol
    s.open()
    s.starttls()
    s.auth("carol@example.com")
    s.message("carol@example.com", "dave@example.com", "MFTA000012")
    out += s.close()
    return out
