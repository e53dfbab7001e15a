"""The durable queue and the Maildir runner, on a real filesystem (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailferry.envelope import Envelope, Recipient
from mailferry.queue.runner import Runner
from mailferry.queue.store import QueueStore
from mailferry.txlog.writer import TxLog


def _envelope(msgid: str, *rcpts: str) -> Envelope:
    return Envelope(msgid=msgid, sender="a@remote.test",
                    recipients=[Recipient(r, r, True) for r in rcpts], received_at=1_800_000_000.0,
                    client_ip="127.0.0.1", helo="c.test", size=5)


def test_group_commit_makes_every_message_durable(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")

    async def main() -> None:
        jobs = []
        for i in range(50):
            spool = store.spool(f"MF{i:010d}")
            spool.write(b"body %d\r\n" % i)
            jobs.append(store.commit(_envelope(f"MF{i:010d}", "x@example.test"), b"H: v\r\n",
                                     spool))
        await asyncio.gather(*jobs)

    asyncio.run(main())
    assert store.recover() == [f"MF{i:010d}" for i in range(50)]
    env, message = store.read("MF0000000007")
    assert env.recipients[0].address == "x@example.test"
    assert message == b"H: v\r\nbody 7\r\n"
    assert list((tmp_path / "queue" / "tmp").iterdir()) == []


def test_spilled_large_message_round_trips(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    body = b"y" * 998 + b"\r\n"

    async def main() -> None:
        spool = store.spool("MFBIG0000000")
        for _ in range(3000):  # ~3 MB: spills to a file past 1 MiB
            spool.write(body)
        assert spool.in_memory() is None
        await store.commit(_envelope("MFBIG0000000", "x@example.test"), b"H: v\r\n", spool)

    asyncio.run(main())
    _, message = store.read("MFBIG0000000")
    assert message == b"H: v\r\n" + body * 3000
    assert list((tmp_path / "queue" / "tmp").iterdir()) == []  # the spill file is gone


def test_id_collision_fails_and_never_overwrites(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")

    async def commit(text: bytes) -> None:
        spool = store.spool("MFDUP0000000")
        spool.write(text)
        await store.commit(_envelope("MFDUP0000000", "x@example.test"), b"", spool)

    asyncio.run(commit(b"first\r\n"))
    with pytest.raises(FileExistsError):
        asyncio.run(commit(b"second\r\n"))
    assert store.read("MFDUP0000000")[1] == b"first\r\n"


def test_journal_survives_restart_and_forgets_done(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")

    async def main() -> None:
        for i in range(5):
            spool = store.spool(f"MFJ{i:09d}")
            spool.write(b"m%d\r\n" % i)
            await store.commit(_envelope(f"MFJ{i:09d}", "x@example.test"), b"", spool)

    asyncio.run(main())
    store.remove(["MFJ000000001", "MFJ000000003"])
    # no close(): as after kill -9. A new store finds exactly the undone ones, with their bytes.
    again = QueueStore(tmp_path / "queue")
    assert again.recover() == ["MFJ000000000", "MFJ000000002", "MFJ000000004"]
    assert again.read("MFJ000000004")[1] == b"m4\r\n"
    again.remove(again.recover())
    again.close()
    assert QueueStore(tmp_path / "queue").recover() == []
    assert list((tmp_path / "queue" / "journal").iterdir()) == []  # emptied segments deleted


def test_torn_journal_tail_is_ignored(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")

    async def main() -> None:
        spool = store.spool("MFT000000000")
        spool.write(b"whole\r\n")
        await store.commit(_envelope("MFT000000000", "x@example.test"), b"", spool)

    asyncio.run(main())
    [segment] = (tmp_path / "queue" / "journal").iterdir()
    with segment.open("ab") as f:
        f.write(b"M MFT000000001 500\n{partial")  # a batch whose fsync never returned
    assert QueueStore(tmp_path / "queue").recover() == ["MFT000000000"]


def test_keep_moves_waiting_message_to_its_own_file(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")

    async def main() -> None:
        spool = store.spool("MFK000000000")
        spool.write(b"for later\r\n")
        await store.commit(_envelope("MFK000000000", "x@remote.test"), b"", spool)

    asyncio.run(main())
    store.keep("MFK000000000")
    assert (store.msg / "MFK000000000").exists()
    store.close()
    again = QueueStore(tmp_path / "queue")
    assert again.recover() == ["MFK000000000"]
    assert again.read("MFK000000000")[1] == b"for later\r\n"


def test_recovery_drops_partial_files_and_redelivers_only_missing(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    mail = tmp_path / "mail"
    env = _envelope("MFREC0000000", "alice@example.test", "bob@example.test")
    (store.msg / env.msgid).write_bytes(env.to_line() + b"Subject: s\r\n\r\nhi\r\n")
    (store.tmp / "MFHALF000000").write_bytes(b"partial")  # a crash mid-write: never acked

    async def first_run() -> None:
        txlog = TxLog(tmp_path / "log")
        runner = Runner(store, mail, "mx.example.test", txlog)
        assert runner.recover() == 1
        runner.start()
        await runner.wait_idle()
        await runner.stop()
        txlog.close()

    asyncio.run(first_run())
    assert not (store.tmp / "MFHALF000000").exists()
    alice = list((mail / "example.test" / "alice" / "Maildir" / "new").iterdir())
    bob = list((mail / "example.test" / "bob" / "Maildir" / "new").iterdir())
    assert len(alice) == len(bob) == 1
    assert alice[0].read_bytes().startswith(
        b"Return-Path: <a@remote.test>\r\nDelivered-To: alice@example.test\r\nSubject: s")
    assert store.recover() == []

    # Simulate a crash after alice's copy was published but before the queue file was removed:
    # a mail reader has even moved it to cur/. The restart must deliver only bob's copy.
    cur = mail / "example.test" / "alice" / "Maildir" / "cur"
    alice[0].rename(cur / (alice[0].name + ":2,S"))
    bob[0].unlink()
    (store.msg / env.msgid).write_bytes(env.to_line() + b"Subject: s\r\n\r\nhi\r\n")
    asyncio.run(first_run())
    assert list((mail / "example.test" / "alice" / "Maildir" / "new").iterdir()) == []
    assert len(list(cur.iterdir())) == 1
    assert len(list((mail / "example.test" / "bob" / "Maildir" / "new").iterdir())) == 1
    log = next((tmp_path / "log" / "smtp").iterdir()).read_text()
    assert "already in Maildir (delivered before restart)" in log
