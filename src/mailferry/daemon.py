"""The composition root: config → concrete objects → running tasks. Signals live here too.

Only this module builds concrete collaborators (resolver, directory, store, txlog, runner);
everything else receives them. SIGTERM/SIGINT: stop listening, tell open sessions 421, finish
local deliveries in flight, flush the transaction log. SIGHUP: reopen the transaction log (after
an outside rotation) and load the TLS certificate and key again (after a renewal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mailferry.config import Config
from mailferry.control.paths import socket_path
from mailferry.control.server import ControlServer, replace_stale
from mailferry.control.service import QueueControl
from mailferry.delivery.outbound import Outbound
from mailferry.dns.resolver import Resolver
from mailferry.ids import MessageIdFactory, SessionIdPool
from mailferry.inbound.blocks import BlockStore
from mailferry.inbound.guard import Guard
from mailferry.inbound.listener import ServerContext, start_listener
from mailferry.inbound.policy import Policy
from mailferry.metrics import Metrics
from mailferry.queue.remote import RemoteRunner
from mailferry.queue.runner import Runner
from mailferry.queue.state import StateStore
from mailferry.queue.store import QueueStore
from mailferry.tls import TlsError, ensure_self_signed, reload, server_context
from mailferry.txlog.writer import TxLog
from mailferry.verify.users import Directory

if TYPE_CHECKING:
    from mailferry.web.server import HttpServer

log = logging.getLogger("mailferry")


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def serve(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT. Returns the process exit code."""
    logging.basicConfig(level=os.environ.get("MAILFERRY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    loop_name = _install_uvloop()
    try:
        return asyncio.run(_main(config, loop_name))
    except KeyboardInterrupt:
        return 0


def _tls_context(config: Config) -> ssl.SSLContext | None:
    """[tls] → the listeners' context; the embedded default makes its certificate first."""
    if not config.tls.enabled:
        return None
    if ensure_self_signed(config.tls, config.server.hostname):
        print(f"mailferry: made a self-signed certificate for {config.server.hostname}: "
              f"{config.tls.certificate}", file=sys.stderr)
    return server_context(config.tls)


def _reload_tls(config: Config, ctx: ssl.SSLContext | None, txlog: TxLog) -> None:
    if ctx is None:
        return
    try:
        reload(ctx, config.tls)
    except TlsError as err:
        # Keep serving with the certificate we have: a botched renewal must not stop mail.
        log.error("TLS reload failed, keeping the old certificate: %s", err)
        txlog.system(f"TLS reload failed, keeping the old certificate: {err}")
        return
    txlog.system(f"TLS certificate reloaded from {config.tls.certificate}")


def _on_hup(config: Config, tls: ssl.SSLContext | None, txlog: TxLog) -> None:
    txlog.reopen()
    _reload_tls(config, tls, txlog)


async def _main(config: Config, loop_name: str, *, metrics: Metrics | None = None,
                stop: asyncio.Event | None = None) -> int:
    """``metrics`` and ``stop`` (set it to stop, as SIGTERM does) let a test run the daemon in
    its own event loop and read the metrics of real traffic."""
    started_at = time.time()
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        metrics = Metrics(lc.kind for lc in config.listeners)
    try:
        # Before anything touches the queue: a second server on the same data directory would
        # recover (and deliver) messages the first one is delivering.
        replace_stale(socket_path(data))
    except OSError as exc:
        print(f"mailferry: error: control socket: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        tls = _tls_context(config)
    except TlsError as err:
        print(f"mailferry: error: [tls] {err}", file=sys.stderr)
        return 1
    txlog = TxLog(config.log_dir, flush_interval=config.log.flush_interval)
    directory = Directory(data / "users.db", config.domains.local,
                          login_cache_ttl=config.auth.login_cache_ttl)
    resolver = Resolver(config.dns.nameservers, config.dns.timeout, metrics=metrics)
    store = QueueStore(data / "queue", commit_window=config.queue.commit_window_ms / 1000)
    runner = Runner(store, data / "mail", config.server.hostname, txlog, metrics=metrics)
    policy = Policy(config, directory, resolver)
    ids, sids = MessageIdFactory(), SessionIdPool()
    states = StateStore(data / "queue" / "state")
    remote = RemoteRunner(config, store, states,
                          Outbound(config, txlog, sids, resolver, metrics=metrics), txlog, ids,
                          is_local=policy.is_local, enqueue_local=runner.submit, metrics=metrics)
    runner.on_remote = remote.submit
    blocks = BlockStore.for_data_dir(data)
    ctx = ServerContext(config=config, txlog=txlog, policy=policy, store=store, runner=runner,
                        guard=Guard(config.protection), blocks=blocks, tls=tls, ids=ids,
                        sids=sids, metrics=metrics)
    metrics.watch_queue(lambda: _queue_states(runner, remote))
    metrics.watch_sessions(lambda: [session.listener.kind for session in tuple(ctx.sessions)])
    recovered = runner.recover()
    states.prune(set(store.queued()))
    runner.start()
    remote.start()
    servers = []
    queue_control = QueueControl(config=config, store=store, states=states, remote=remote,
                                 txlog=txlog, sessions=lambda: ctx.sessions,
                                 started_at=started_at)
    control = ControlServer(queue_control, socket_path(data))
    http: HttpServer | None = None

    async def close_stores(last_line: str | None = None) -> None:
        """The last steps of every stop: workers first, then what they write to."""
        await runner.stop()
        await remote.stop()
        store.close()
        if last_line is not None:
            txlog.system(last_line)
        txlog.close()
        directory.close()
        blocks.close()

    where, control_started = "control socket", False
    try:
        for listener in config.listeners:
            where = f"cannot listen on {listener.host}:{listener.port}"
            servers.append(await start_listener(ctx, listener))
        where = f"control socket {control.path}"
        await control.start()
        control_started = True
        if config.http.address is not None:
            host, port = config.http.address
            where = f"cannot listen on {host}:{port} (http)"
            http = await _start_http(config, directory, ctx, queue=queue_control,
                                     metrics_registry=metrics.registry)
    except OSError as exc:
        print(f"mailferry: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        if control_started:
            await control.close()  # removes its socket file
        for server in servers:
            server.close()
        await close_stores()
        return 1

    addresses = ", ".join(f"{lc.host}:{lc.port} ({lc.kind})" for lc in config.listeners)
    txlog.system(f"mailferry started: listening on {addresses}; {recovered} queued message(s)"
                 " recovered")
    txlog.flush()
    print(
        "mailferry is running\n"
        f"  listening on     {addresses}\n"
        f"{_listener_lines(config)}"
        f"  hostname         {config.server.hostname}\n"
        f"  local domains    {', '.join(directory.domains()) or '(none)'}\n"
        f"  data directory   {data}\n"
        f"  users database   {data / 'users.db'}\n"
        f"  block list       {blocks.path} ({len(blocks.list())} blocked)\n"
        f"  queue            {data / 'queue'}\n"
        f"  control socket   {control.path} (mailferry queue list, mailferry status)\n"
        f"  mailboxes        {data / 'mail'}/<domain>/<user>/Maildir\n"
        f"  transaction log  {config.log_dir / 'smtp'}/sYYYYMMDD.log\n"
        f"  web UI and API   {http.url if http else '(off)'}\n"
        f"  config           {config.source or '(embedded default)'}\n"
        f"  event loop       {loop_name}\n"
        "Add a mailbox with: mailferry user add alice@example.test",
        flush=True,
    )
    _warn_missing_postmaster(directory, txlog)

    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hup, config, tls, txlog)
    await stop.wait()

    txlog.system("mailferry stopping")
    await control.close()
    for server in servers:
        server.close()
    if http is not None:
        await http.stop()
    for session in list(ctx.sessions):
        session.shutdown()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runner.wait_idle(), timeout=10)
    await close_stores("mailferry stopped")
    return 0


def _warn_missing_postmaster(directory: Directory, txlog: TxLog) -> None:
    """RFC 5321 §4.5.1: every domain must accept mail for postmaster. We cannot guess whose
    mailbox that is, so say so at start, with the command that fixes it."""
    for domain in directory.domains():
        if directory.resolve(f"postmaster@{domain}") is None:
            text = (f"no mailbox or alias for postmaster@{domain} (RFC 5321 requires one):"
                    f" mailferry alias add postmaster@{domain} you@{domain}")
            print(f"mailferry: warning: {text}", file=sys.stderr, flush=True)
            txlog.system(f"Warning: {text}")


def _listener_lines(config: Config) -> str:
    """What a mail client needs to know: where to submit, and how."""
    lines = []
    for lc in config.listeners:
        where = f"[{lc.host}]:{lc.port}" if ":" in lc.host else f"{lc.host}:{lc.port}"
        if lc.kind == "submission":
            lines.append(f"  submission       {where} (STARTTLS, then AUTH PLAIN/LOGIN)\n")
        elif lc.kind == "smtps":
            lines.append(f"  smtps            {where} (implicit TLS, then AUTH PLAIN/LOGIN)\n")
    if config.tls.enabled:
        lines.append(f"  TLS certificate  {config.tls.certificate}"
                     f"{' (self-signed)' if config.tls.self_signed else ''}\n")
    return "".join(lines)


async def _start_http(config: Config, directory: Directory, ctx: ServerContext, *,
                      metrics_registry: object = None, queue: QueueControl | None = None
                      ) -> HttpServer | None:
    """The web UI, JSON API and /metrics, when ``[http] address`` is set. Imported here: a
    server without it never loads FastAPI. ``metrics_registry``: the prometheus_client
    registry /metrics serves; ``queue``: the queue control service behind the queue page."""
    if config.http.address is None:
        return None
    from mailferry.web.app import create_app
    from mailferry.web.server import HttpServer, bind, url_of
    from mailferry.web.services import WebServices

    host, port = config.http.address
    sock = bind(host, port)
    services = WebServices.from_config(config, directory=directory, queue=queue,
                                       metrics_registry=metrics_registry,
                                       session_live=ctx.sids.in_use, guard=ctx)
    server = HttpServer(create_app(services), sock, url_of(host, port))
    await server.start()
    return server


def _queue_states(runner: Runner, remote: RemoteRunner) -> Iterator[tuple[str, str]]:
    """(message ID, state) of every queued message, for mailferry_queue_messages."""
    for msgid in runner.queued():
        yield msgid, "local"
    yield from remote.queued()
