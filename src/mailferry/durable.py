"""Durability primitives shared by the queue and Maildir delivery: folder fsync and syncfs.

``syncfs(2)`` flushes every dirty file of one filesystem and commits its journal once. After
writing a whole batch of Maildir files, one syncfs costs one journal commit where a fdatasync per
file costs one each (ext4 allocates delayed blocks at sync time, so every file's sync becomes a
commit of its own). Linux documents that syncfs waits for the I/O, giving the same guarantee as
fsync on each file; since Linux 5.8 it also reports writeback errors. Elsewhere we fall back to
fsync on each file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def fsync_dir(folder: Path | str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_files(fds: Iterable[int]) -> None:
    """Make the data of every open file in ``fds`` durable, with one syncfs when available.
    All files must be on one filesystem (they are: one data_dir)."""
    fds = list(fds)
    if not fds:
        return
    if _syncfs is not None and _syncfs(fds[0]) == 0:
        return
    for fd in fds:
        os.fdatasync(fd)


def sync_folders(folders: Iterable[Path | str]) -> None:
    """Make renames in these folders durable: one syncfs, or an fsync per folder."""
    folders = list(folders)
    if not folders:
        return
    if _syncfs is not None:
        fd = os.open(folders[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for folder in folders:
        fsync_dir(folder)
