"""Run the real daemon (``daemon._main``, the same composition as ``mailferry serve``) inside the
test's own event loop, so a test can read in-process objects such as its ``Metrics`` while real
SMTP clients talk to it over loopback sockets.

Use it from ``asyncio.run(...)`` in the main thread (the daemon installs its signal handlers
there); blocking clients (smtplib) run in threads with ``asyncio.to_thread``. Starting it makes
one probe session (connect, banner, close): it counts as ``outcome="no_mail"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from mailferry import daemon
from mailferry.config import Config
from mailferry.metrics import Metrics


class InProcessDaemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(lc.kind for lc in config.listeners)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> InProcessDaemon:
        self._task = asyncio.get_running_loop().create_task(
            daemon._main(self.config, "asyncio", metrics=self.metrics, stop=self._stop))
        listener = self.config.listeners[0]
        deadline = time.monotonic() + 15
        while True:
            if self._task.done():
                raise RuntimeError(f"daemon exited early with {self._task.result()}")
            try:
                reader, writer = await asyncio.open_connection(listener.host, listener.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
                continue
            await reader.readline()  # the banner: really serving, not just bound
            writer.close()
            await writer.wait_closed()
            # That probe is a session like any other: wait until it has ended and been counted,
            # so tests start from a known state (one "no_mail" session, none open).
            await self.wait_value("mailferry_sessions_total", 1, listener=listener.kind,
                                  outcome="no_mail")
            await self.wait_value("mailferry_sessions_open", 0, listener=listener.kind)
            return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stop.set()
        assert self._task is not None
        try:
            code = await asyncio.wait_for(self._task, timeout=30)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            raise
        assert code == 0

    # --- reading the metrics ------------------------------------------------------------------
    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of one scrape, parsed back from the text exposition."""
        text = self.metrics.render().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, frozenset(labels.items())))

    async def wait_value(self, name: str, expected: float, timeout: float = 15.0,
                         **labels: str) -> None:
        """Wait (bounded) until a sample reaches ``expected``; events such as a session's end
        are counted a moment after the client has its last reply."""
        await self.wait_until(lambda: self.value(name, **labels) == expected, timeout,
                              f"{name}{labels} == {expected}")

    async def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not reached within {timeout}s: {what}")
            await asyncio.sleep(0.05)
