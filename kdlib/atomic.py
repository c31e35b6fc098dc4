"""Atomic writes: write to a temporary path beside the target, then rename.

An interrupted write never leaves a file or folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path in ``target``'s folder; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success rename it to ``target``.

    With ``replace=True`` an existing ``target`` is removed just before the rename. On error the
    temporary folder is deleted and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if target.exists() and replace:
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(path: Path) -> bool:
    """A temporary file or folder of :func:`atomic_path` / :func:`atomic_dir` (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale(folder: str | os.PathLike, recursive: bool = False, skip=lambda path: False) -> list[Path]:
    """Remove the temporary files and folders a killed process left in ``folder`` (and, with
    ``recursive``, in its sub-folders, except those ``skip(path)`` says another owner looks after).

    Call it only while holding the folder's lock (:func:`kdlib.locks.folder_lock`): then no live process
    is writing there, so every temporary entry is stale."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_temporary(entry):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink() and not skip(entry):
            removed += remove_stale(entry, True, skip)
    return removed
