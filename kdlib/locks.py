"""One process per folder: an exclusive lock file held while a process works in a run or world folder.

``with folder_lock(path, "training run"):`` takes ``path/.lock`` (``lock_file(path)`` takes any lock file,
e.g. one beside a folder that is written by renaming a temporary folder) with ``fcntl.flock``
(non-blocking). A
second process on the same folder stops at once with one line naming the holder (its pid, host, command
and start time, which the holder writes into the lock file). The kernel drops a flock when its process
dies, however it dies, so a stale lock of a killed process is simply taken over by the next run; the
file left behind says nothing by itself. Locks are re-entrant within one process. Taking a folder's lock also
removes the temporary files a killed process left in it (:func:`kdlib.atomic.remove_stale`): while the
lock is held no live process writes there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from kdlib import atomic
from kdlib.errors import KdlibError

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # resolved lock path -> depth, for re-entry in this process


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder", clean: bool = True) -> Iterator[Path]:
    """Hold ``folder/.lock`` for the ``with`` block (the folder is created if needed); with ``clean``, then
    remove stale temporary files in the folder itself."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise KdlibError(f"{what} {str(folder)!r} is a file; valid: a folder (or a path that does not exist)") from None
    with lock_file(folder / LOCK_NAME, what, folder) as path:
        if clean:
            atomic.remove_stale(folder)
        yield path


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process (this one included) holds the lock file ``path`` right now."""
    import fcntl

    path = Path(path)
    if str(path.resolve()) in _held:
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_file(path: str | os.PathLike, what: str, subject: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock file ``path`` (created if needed) for the ``with`` block; ``subject`` is what it
    protects, named in the message a second process gets."""
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise KdlibError(
                f"{what} {str(subject)!r} is in use by {_holder(path)}; valid: wait for it to finish or stop it"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        _held[key] = 1
        try:
            yield path
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing the descriptor releases the flock
