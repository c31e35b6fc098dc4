"""One exception type for bad input, and the CLI wrapper that turns it into one line."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class KdlibError(Exception):
    """Bad input or a refused operation. The message is one line naming the bad value and what is valid."""


def cli_main(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so a :class:`KdlibError` prints ``error: <message>`` and exits with status 2.

    Any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(func(*args, **kwargs) or 0)
        except KdlibError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
