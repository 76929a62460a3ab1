"""Disk space and leftovers of the image cache: a full disk is one clean error, never a hang or a "Bus error".

The cache's images files are written by worker processes (and, for a few images, by this one). A sparse file on
a full disk fails only when a page is finally written: through a memory map that is a SIGBUS that kills the
process (a pool then waits forever for the dead worker). So a build reserves its space up front:

- :func:`check_free` compares what the whole build needs with the free space of the cache folder before any
  image is decoded ("needs N MB, M MB free at PATH");
- :func:`reserve` allocates every images file in full (``posix_fallocate``) as it is created, so the disk cannot
  fill under the writers later (another process taking the space meanwhile gets the same error at this point);
- :class:`BuildGuard` turns an ``ENOSPC``/``EDQUOT`` anywhere in the build (a worker's included), or a worker that
  died while the disk is full, into the same one-line ``DataError``; it also removes the files that no manifest names (a build killed after renaming one split into
  place, an older key's files) before a build starts, when no other process is building in that folder (a shared
  ``flock`` while a build runs; the kernel drops it when the process dies), so a rebuild never needs twice the space.

Contract: the cache folder holds ``manifest.json`` plus ``<split>-<tag>.{images.npy,labels.npy,files.json}`` and
temp files ``<name>.tmp-<host>-<pid>-<token>``; only files matching those data names are ever removed here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable

from ..fsutil import TMP_MARK, remove_quietly
from .decode import DataError, WorkerDied

__all__ = ["BuildGuard", "check_free", "images_bytes", "reserve", "space_message", "translate", "unnamed_files"]

logger = logging.getLogger(__name__)

_DATA_FILE = re.compile(r"^(train|val|test)-([0-9a-f]{16})\.(images\.npy|labels\.npy|files\.json)$")
_BUILDING = ".building"  # flock'd shared while a build writes the folder, exclusive while leftovers are removed
_HEADROOM = 1 << 20  # bytes added to a build's need: npy headers, labels, file lists, the manifest
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}" if n >= 10e6 else f"{n / 1e6:.1f}"


def free_bytes(folder: str) -> int:
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return -1


def space_message(folder: str, need: int, what: str = "the image cache") -> str:
    """One line: what needs how much, how much is free where, and the ways out."""
    free = free_bytes(folder)
    have = f"{_mb(free)} MB free" if free >= 0 else "free space unknown"
    return (f"not enough disk space for {what}: needs {_mb(need)} MB, {have} at {folder} (free some space, set "
            "data.cache_dir=DIR on a larger disk, or a smaller data.image_size)")


def images_bytes(counts: Iterable[int], size: int) -> int:
    """Bytes of the ``(n, size, size, 3)`` uint8 images files of splits of ``counts`` images, with headroom."""
    return sum(int(n) * size * size * 3 for n in counts) + _HEADROOM


def check_free(folder: str, need: int) -> None:
    """DataError before anything is written when ``folder``'s disk has less than ``need`` bytes free."""
    free = free_bytes(folder)
    if 0 <= free < need:
        raise DataError(space_message(folder, need))


def reserve(path: str) -> None:
    """Allocate every byte of the (sparse) file at ``path`` now, so that later writes cannot hit a full disk.

    Where the file system cannot preallocate (``EOPNOTSUPP``/``EINVAL``; glibc emulates it on most) or the platform
    has no ``posix_fallocate``, the up-front :func:`check_free` is the only guard."""
    fallocate = getattr(os, "posix_fallocate", None)
    size = os.path.getsize(path)
    if fallocate is None or size == 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise DataError(space_message(os.path.dirname(path), size)) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        logger.debug("%s: cannot preallocate (%s)", path, e)
    finally:
        os.close(fd)


def translate(folder: str, need: int, exc: BaseException | None) -> DataError | None:
    """The one-line DataError for a full disk (``ENOSPC``/``EDQUOT`` from this process or a worker) or for a worker
    that died while the disk is full; None for any other exception (it goes on as it is)."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return DataError(space_message(folder, need))
    if isinstance(exc, WorkerDied):
        free = free_bytes(folder)
        if 0 <= free < (1 << 20):
            return DataError(f"{exc}; the disk is full: {space_message(folder, need)}")
    return None


def unnamed_files(folder: str) -> list[str]:
    """Data files in ``folder`` that its manifest does not name (all of them where it has none or cannot be read),
    and temp files of the data files (any age: call it only where no other build runs)."""
    named: set[str] = set()
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        for info in manifest["splits"].values():
            named.update(str(info[k]) for k in ("images", "labels", "files"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    out = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        base = e.name.split(TMP_MARK, 1)[0]
        if _DATA_FILE.match(base) and (TMP_MARK in e.name or e.name not in named):
            out.append(e.path)
    return sorted(out)


class BuildGuard:
    """Held while a build writes a cache folder: a shared ``flock`` on ``<folder>/.building``. Entering it first
    tries the lock exclusively, without waiting: where no other process is building there, the files no manifest
    names are removed (see :func:`unnamed_files`) before the build needs their space. Where ``flock`` is not
    available nothing is removed. Leaving it turns a full disk inside the block into one DataError
    (:func:`translate`, with the need given to :meth:`check_free`)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.need = 0  # bytes the build needs, once known
        self._fd: int | None = None
        self.removed: list[str] = []

    def check_free(self, need: int) -> None:
        """DataError now when the folder's disk has less than ``need`` bytes free; remembers ``need``."""
        self.need = need
        check_free(self.folder, need)

    def __enter__(self) -> BuildGuard:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            self._fd = os.open(os.path.join(self.folder, _BUILDING), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return self
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another build is running here: its files are not leftovers
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            return self
        for p in unnamed_files(self.folder):
            logger.info("removing %s (no manifest names it: left by an interrupted build or an older key)", p)
            remove_quietly(p)
            self.removed.append(p)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None
        err = translate(self.folder, self.need, exc)
        if err is not None:
            raise err from None
