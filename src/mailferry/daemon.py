"""The composition root: config → concrete objects → running tasks. Signals live here too.

Only this module builds concrete collaborators (resolver, directory, store, txlog, runner);
everything else receives them. SIGTERM/SIGINT: stop listening, tell open sessions 421, finish
local deliveries in flight, flush the transaction log. SIGHUP: reopen the transaction log (after
an outside rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

from mailferry.config import Config
from mailferry.delivery.outbound import Outbound
from mailferry.dns.resolver import Resolver
from mailferry.ids import MessageIdFactory, SessionIdPool
from mailferry.inbound.listener import ServerContext, start_listener
from mailferry.inbound.policy import Policy
from mailferry.metrics import Metrics
from mailferry.queue.remote import RemoteRunner
from mailferry.queue.runner import Runner
from mailferry.queue.state import StateStore
from mailferry.queue.store import QueueStore
from mailferry.txlog.writer import TxLog
from mailferry.verify.users import Directory

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


async def _main(config: Config, loop_name: str, *, metrics: Metrics | None = None,
                stop: asyncio.Event | None = None) -> int:
    """``metrics`` and ``stop`` (set it to stop, as SIGTERM does) let a test run the daemon in
    its own event loop and read the metrics of real traffic."""
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        metrics = Metrics(lc.kind for lc in config.listeners)
    txlog = TxLog(config.log_dir, flush_interval=config.log.flush_interval)
    directory = Directory(data / "users.db", config.domains.local)
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
    ctx = ServerContext(config=config, txlog=txlog, policy=policy, store=store, runner=runner,
                        ids=ids, sids=sids, metrics=metrics)
    metrics.watch_queue(lambda: _queue_states(runner, remote))
    metrics.watch_sessions(lambda: [session.listener for session in tuple(ctx.sessions)])
    recovered = runner.recover()
    states.prune(set(store.queued()))
    runner.start()
    remote.start()
    servers = []
    try:
        for listener in config.listeners:
            servers.append(await start_listener(ctx, listener))
    except OSError as exc:
        print(f"mailferry: error: cannot listen on {listener.host}:{listener.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        await runner.stop()
        await remote.stop()
        store.close()
        txlog.close()
        directory.close()
        return 1

    addresses = ", ".join(f"{lc.host}:{lc.port} ({lc.kind})" for lc in config.listeners)
    txlog.system(f"mailferry started: listening on {addresses}; {recovered} queued message(s)"
                 " recovered")
    txlog.flush()
    print(
        "mailferry is running\n"
        f"  listening on     {addresses}\n"
        f"  hostname         {config.server.hostname}\n"
        f"  local domains    {', '.join(directory.domains()) or '(none)'}\n"
        f"  data directory   {data}\n"
        f"  users database   {data / 'users.db'}\n"
        f"  queue            {data / 'queue'}\n"
        f"  mailboxes        {data / 'mail'}/<domain>/<user>/Maildir\n"
        f"  transaction log  {config.log_dir / 'smtp'}/sYYYYMMDD.log\n"
        f"  config           {config.source or '(embedded default)'}\n"
        f"  event loop       {loop_name}\n"
        "Add a mailbox with: mailferry user add alice@example.test",
        flush=True,
    )

    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, txlog.reopen)
    await stop.wait()

    txlog.system("mailferry stopping")
    for server in servers:
        server.close()
    for session in list(ctx.sessions):
        session.shutdown()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runner.wait_idle(), timeout=10)
    await runner.stop()
    await remote.stop()
    store.close()
    txlog.system("mailferry stopped")
    txlog.close()
    directory.close()
    return 0


def _queue_states(runner: Runner, remote: RemoteRunner) -> Iterator[tuple[str, str]]:
    """(message ID, state) of every queued message, for mailferry_queue_messages."""
    for msgid in runner.queued():
        yield msgid, "local"
    yield from remote.queued()
