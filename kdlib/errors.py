"""One exception type for bad input, and the command-line boundary that turns every failure into one line.

Every command-line tool's ``main`` is wrapped by :func:`cli_main`:

* :class:`KdlibError` (bad input, a refused operation): ``error: <message>``, exit status 2;
* :class:`OSError` (a read-only or full disk, a path that is a file where a folder is needed, no
  permission...): ``error: cannot <do what> <path>: <reason>; valid: ...``, exit status 2;
* ``KeyboardInterrupt`` (Ctrl-C): ``interrupted: ...; run the same command to resume``, exit status 130.

Nothing is left half-written either way: every file is written to a temporary path and renamed
(:mod:`kdlib.atomic`), and the temporary files of a killed process are removed by the next run that
takes the folder's lock (:mod:`kdlib.locks`). Any other exception is a bug in kdlib and keeps its
traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable


class KdlibError(Exception):
    """Bad input or a refused operation. The message is one line naming the bad value and what is valid."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or process limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an environment failure: what could not be done to which path, why, what would work."""
    reason = _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fspath(p) if not isinstance(p, int) else str(p) for p in paths) or "a file"
    return f"cannot use {where}: {reason}; valid: a writable output location with free space (or fix the path)"


def cli_main(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: bad input and environment failures are one ``error:`` line with exit status 2,
    Ctrl-C one ``interrupted:`` line with exit status 130 (see the module docstring)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(func(*args, **kwargs) or 0)
        except KdlibError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: stopped before finishing, finished parts kept; run the same command to resume",
                  file=sys.stderr)
            raise SystemExit(130) from None
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
