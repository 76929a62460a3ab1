"""Filesystem helpers every writer uses: atomic writes (temp file, fsync, rename, fsync of the folder), pid checks.

A crash, a kill or a full disk at any point leaves either the old file or the new one at a path, never a mix.
Temporary names are ``<final>.tmp-<host>-<pid>-<token>``, so a folder's owner can tell which ones a dead process
left behind (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

_log = logging.getLogger(__name__)

__all__ = [
    "LockError",
    "PidLock",
    "TMP_MARK",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale_temps",
    "fsync_dir",
    "pid_alive",
    "process_start_time",
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
    folder. The temp file is removed on any failure; the previous file at ``path`` stays as it was, and an OSError
    names ``path``. Returns ``path``.
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
    except OSError as e:  # a full disk, a quota: the error names the file being written, not its temp name
        if e.errno is None or e.filename not in (None, tmp):
            raise
        raise OSError(e.errno, e.strerror, path) from e
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


class LockError(RuntimeError):
    """A lock that a live process holds; the message names the folder and the pid."""


class PidLock:
    """A lock file holding the owner's pid, its start time (where /proc has it) and its host name, one a line; a
    second live owner is refused, a dead owner's lock is taken over (a pid reused by another process counts as
    dead). A lock written on another host (a folder shared over the network) cannot be checked from here: it is
    refused unless ``force`` (the user knows that run is gone). Taking the lock also removes the temp files that a
    killed owner left half-written in the lock's folder."""

    error: type[Exception] = LockError  # raised when the lock is held (subclasses raise their module's error)
    what = "process"  # the owner, in messages: "another run (pid N) is writing to this folder"

    def __init__(self, path: str | os.PathLike, *, force: bool = False) -> None:
        self.path = Path(path)
        self.force = force  # take over another host's lock (never a live owner's on this host)
        self.held = False

    def acquire(self) -> "PidLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, start, host = _read_owner(self.path)
                if host is not None and host != socket.gethostname():
                    if not self.force:
                        raise self.error(
                            f"{self.path.parent}: another {self.what} (pid {pid} on host {host}) holds this folder's "
                            "lock; it cannot be checked from here: if it is no longer running, use --force") from None
                    _log.warning("taking over %s from pid %s on host %s (--force)", self.path, pid, host)
                    self._unlink_stale()
                    continue
                if pid is not None and pid != os.getpid() and pid_alive(pid) and _same_process(pid, start):
                    raise self.error(
                        f"{self.path.parent}: another {self.what} (pid {pid}) is writing to this folder"
                    ) from None
                if pid is None and _age(self.path) < 10.0:  # created this instant; its owner is writing the pid
                    raise self.error(f"{self.path.parent}: another {self.what} is starting in this folder") from None
                _log.warning("removing stale lock %s (pid %s is not running)", self.path, pid)
                self._unlink_stale()
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    start = process_start_time(os.getpid())
                    f.write(f"{os.getpid()}\n{start if start is not None else '-'}\n{socket.gethostname()}\n")
            except OSError as e:  # a full disk: no empty lock left behind (it would read as "starting"); name it
                remove_quietly(self.path)
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            self.held = True
            self._clean_temps()
            return self
        raise self.error(f"{self.path}: could not take the lock")

    def _unlink_stale(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _clean_temps(self) -> None:
        """Half-written temp files of a killed owner (its pid is dead): nobody else writes here while we hold it."""
        for p in clean_stale_temps(self.path.parent):
            _log.info("removing %s (left by an interrupted save)", p)

    def release(self) -> None:
        if self.held:
            try:
                pid, _, host = _read_owner(self.path)
                if pid == os.getpid() and host in (None, socket.gethostname()):  # still ours (not taken over)
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "PidLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_owner(path: Path) -> tuple[int | None, str | None, str | None]:
    """(pid, start time, host) from a lock file; the start time is None where it was written without /proc ("-"),
    the host None in locks of older versions (read as this host's)."""
    try:
        fields = path.read_text().split()
        start = fields[1] if len(fields) > 1 and fields[1] != "-" else None
        return int(fields[0]), start, (fields[2] if len(fields) > 2 else None)
    except (OSError, ValueError, IndexError):
        return None, None, None


def _age(path: Path) -> float:
    """Seconds since ``path`` was last modified (infinite if it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the "(comm)" field
    except (OSError, IndexError):
        return None


def _same_process(pid: int, start: str | None) -> bool:
    """Whether the live ``pid`` is still the process that wrote the lock (unknown start times: assume so)."""
    if start is None:
        return True
    now = process_start_time(pid)
    return now is None or now == start
