"""Filesystem helpers every writer uses: atomic writes (temp file, fsync, rename, fsync of the folder), pid checks.

A crash, a kill or a full disk at any point leaves either the old file or the new one at a path, never a mix.
Temporary names are ``<final>.tmp-<host>-<pid>-<token>``, so a folder's owner can tell which ones a dead process
left behind (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from typing import Callable

__all__ = [
    "TMP_MARK",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale_temps",
    "fsync_dir",
    "pid_alive",
    "remove_quietly",
    "temp_name",
]

TMP_MARK = ".tmp-"  # temporary names: <final>.tmp-<host>-<pid>-<token>


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def temp_name(path: str | os.PathLike) -> str:
    """A temporary name beside ``path``, unique per host, process and call."""
    return f"{os.fspath(path)}{TMP_MARK}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that a rename inside it survives a power cut (a no-op where the filesystem refuses)."""
    try:
        fd = os.open(os.fspath(path) or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - unreadable folder
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` to fill a temp file beside ``path``, fsync it, rename it onto ``path``, fsync the
    folder. The temp file is removed on any failure; the previous file at ``path`` stays as it was. Returns ``path``.
    """
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            remove_quietly(tmp)
    fsync_dir(os.path.dirname(path) or ".")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, *, max_age_s: float = 86400.0) -> list[str]:
    """Remove temp files of writers that died: this host's dead processes, or anyone's older than ``max_age_s``.

    Returns the removed paths. Safe to call while other live processes write in ``folder``: their temp files
    belong to live pids and are left alone.
    """
    host = _host()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if TMP_MARK not in e.name:
            continue
        tail = e.name.rsplit(TMP_MARK, 1)[1].split("-")
        try:
            stale = time.time() - e.stat().st_mtime > max_age_s
            if len(tail) == 3 and tail[0] == host and tail[1].isdigit():
                stale = stale or not pid_alive(int(tail[1]))
            if stale:
                os.unlink(e.path)
                removed.append(e.path)
        except OSError:
            pass
    return removed
