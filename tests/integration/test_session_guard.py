"""Session hooks of intrusion prevention that the daemon cannot reach on this branch yet.

AUTH and the submission/smtps listeners arrive with the tls-auth branch: until then the daemon
has neither an ``auth_user`` nor a listener of kind "submission". These tests run the real
Session over real loopback sockets in-process (the same ServerContext the daemon builds), and
stand in for AUTH exactly where it plugs in: ``Session.auth_user`` (set by a successful AUTH) and
``Session._auth_failed()`` (called by AUTH after each failed attempt).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailferry.config import Config, ListenerConfig, ProtectionConfig, RelayConfig
from mailferry.dns.resolver import Resolver
from mailferry.inbound.blocks import BlockStore
from mailferry.inbound.guard import Guard
from mailferry.inbound.listener import ServerContext
from mailferry.inbound.policy import Policy
from mailferry.inbound.session import Session
from mailferry.queue.runner import Runner
from mailferry.queue.store import QueueStore
from mailferry.txlog.writer import TxLog
from mailferry.verify.users import Directory
from tests.support.dialog import Dialog

HOST = "127.0.0.1"


class AuthenticatedSession(Session):
    """A session in which the client has authenticated (what AUTH PLAIN will set)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.auth_user = "alice@example.test"


def run_server(tmp: Path, protection: ProtectionConfig, kind: str,
               session: type[Session], client: Callable[[ServerContext, int],
                                                        Awaitable[None]]) -> str:
    """Serve on a free loopback port while ``client(ctx, port)`` runs; returns the log text."""
    config = dataclasses.replace(
        Config(), protection=protection, relay=RelayConfig(networks=()))  # nobody is trusted
    config = dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, sender_domain_check=False, client_rdns="off"))
    directory = Directory(tmp / "users.db", ("example.test",))
    directory.add_user("alice@example.test", None)
    txlog = TxLog(tmp / "log", flush_interval=0.1)
    store = QueueStore(tmp / "queue")
    blocks = BlockStore(tmp / "blocks.db")

    async def main() -> None:
        runner = Runner(store, tmp / "mail", config.server.hostname, txlog)
        ctx = ServerContext(config=config, txlog=txlog,
                            policy=Policy(config, directory, Resolver((), 1.0)), store=store,
                            runner=runner, guard=Guard(protection), blocks=blocks)
        runner.start()
        listener = ListenerConfig(HOST, 0, kind)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: session(ctx, listener), HOST, 0)
        try:
            await asyncio.wait_for(client(ctx, server.sockets[0].getsockname()[1]), 60)
        finally:
            server.close()
            await runner.wait_idle()
            await runner.stop()

    try:
        asyncio.run(main())
    finally:
        txlog.close()
        store.close()
        blocks.close()
        directory.close()
    return "".join(p.read_text() for p in sorted((tmp / "log" / "smtp").glob("*.log")))


def send_message(d: Dialog, sender: str) -> int:
    """One message; the reply code of MAIL FROM if refused, else of the end of data."""
    code = d.code(f"MAIL FROM:<{sender}>")
    if code != 250:
        return code
    assert d.code("RCPT TO:<alice@example.test>") == 250
    assert d.code("DATA") == 354
    return d.code("Subject: hi\r\n\r\nhello\r\n.")


def test_auth_failures_block_through_the_session_hook(tmp_path: Path) -> None:
    async def client(ctx: ServerContext, port: int) -> None:
        d = await asyncio.to_thread(Dialog, HOST, port, source="127.0.0.61")
        assert d.banner[0] == 220
        (session,) = ctx.sessions
        for _ in range(3):  # what AUTH does after each failed attempt
            session._auth_failed()
        assert await asyncio.to_thread(d.reply) == (
            421, ["4.7.0 Your address is now blocked (AUTHFAIL), closing connection"])
        assert await asyncio.to_thread(d.closed)
        d.close()
        again = await asyncio.to_thread(Dialog, HOST, port, source="127.0.0.61")
        assert again.banner == (554, ["5.7.1 Access denied: your address is blocked (AUTHFAIL)"])
        again.close()
        assert ctx.blocks.get("127.0.0.61") is not None

    log = run_server(tmp_path, ProtectionConfig(max_auth_failures=3), "smtp", Session, client)
    assert "Blocked 127.0.0.61 for 3600 s: AUTHFAIL (3 failed AUTH attempts in 600 s)" in log
    with BlockStore(tmp_path / "blocks.db") as store:  # written to the file too
        assert [(b.ip, b.reason) for b in store.list()] == [("127.0.0.61", "AUTHFAIL")]


def test_authenticated_sessions_are_not_counted_for_rcpt_and_rset(tmp_path: Path) -> None:
    async def client(ctx: ServerContext, port: int) -> None:
        def dialog() -> None:
            with Dialog(HOST, port, source="127.0.0.62") as d:
                assert d.code("EHLO client.test") == 250
                assert d.code("MAIL FROM:<alice@example.test>") == 250
                for i in range(5):
                    assert d.code(f"RCPT TO:<nobody{i}@example.test>") == 550
                    assert d.code("RSET") == 250
                    assert d.code("MAIL FROM:<alice@example.test>") == 250
                assert d.code("NOOP") == 250

        await asyncio.to_thread(dialog)

    protection = ProtectionConfig(max_unknown_recipients=2, max_rsets=2, max_relay_attempts=2)
    log = run_server(tmp_path, protection, "smtp", AuthenticatedSession, client)
    assert "Blocked" not in log


def test_messages_per_user_are_limited_with_450(tmp_path: Path) -> None:
    async def client(ctx: ServerContext, port: int) -> None:
        def dialog() -> list[int]:
            with Dialog(HOST, port, source="127.0.0.63") as d:
                assert d.code("EHLO client.test") == 250
                return [send_message(d, f"alias{i}@example.test") for i in range(4)]

        codes = await asyncio.to_thread(dialog)
        assert codes == [250, 250, 250, 450]

    protection = ProtectionConfig(max_messages_per_user=3)
    log = run_server(tmp_path, protection, "smtp", AuthenticatedSession, client)
    assert ">>> 450 4.7.1 Too many messages from you, try again later" in log
    assert ("Message rate limit: user alice@example.test sent 3 messages in 600 s"
            " - try again later") in log
    assert "Blocked" not in log  # a rate limit refuses for now; it never blocks


def test_messages_per_sender_on_submission(tmp_path: Path) -> None:
    async def client(ctx: ServerContext, port: int) -> None:
        def dialog() -> list[int]:
            with Dialog(HOST, port, source="127.0.0.64") as d:
                assert d.code("EHLO client.test") == 250
                sent = [send_message(d, "news@example.test") for _ in range(3)]
                sent.append(send_message(d, "other@example.test"))  # per sender
                return sent

        assert await asyncio.to_thread(dialog) == [250, 250, 450, 250]

    protection = ProtectionConfig(max_messages_per_sender=2)
    log = run_server(tmp_path, protection, "submission", Session, client)
    assert "Message rate limit: sender news@example.test sent 2 messages in 600 s" in log


def test_messages_per_sender_do_not_apply_on_port_25(tmp_path: Path) -> None:
    async def client(ctx: ServerContext, port: int) -> None:
        def dialog() -> list[int]:
            with Dialog(HOST, port, source="127.0.0.65") as d:
                assert d.code("EHLO client.test") == 250
                return [send_message(d, "news@remote.test") for _ in range(4)]

        assert await asyncio.to_thread(dialog) == [250] * 4

    run_server(tmp_path, ProtectionConfig(max_messages_per_sender=2), "smtp", Session, client)
