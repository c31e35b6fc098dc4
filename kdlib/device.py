"""The one device resolver: ``auto`` means CUDA when present, else the CPU; anything else is checked."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

import torch

from kdlib.errors import KdlibError

VALID = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto", where: str = "device") -> torch.device:
    """``None`` / ``"auto"`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.

    A device that does not exist here (CUDA without a GPU, ``cuda:3`` on a one-GPU machine, ``mps``,
    a typo) is one line naming ``where``."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise KdlibError(f"{where} = {spec!r} is not a device; valid: {VALID}") from None
    if device.type not in ("cpu", "cuda"):
        raise KdlibError(f"{where} = {spec!r} is not supported; valid: {VALID}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KdlibError(f"{where} = {spec!r} but CUDA is not available here; valid: auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KdlibError(
                f"{where} = {spec!r} but this machine has {torch.cuda.device_count()} GPU(s); "
                f"valid: cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return device


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block, then restored (None: left as set).

    Results depend on it (a reduction split over more threads sums in another order), so training,
    retraining and dissection set it from params instead of taking whatever ``OMP_NUM_THREADS`` gives."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def die_with_parent() -> None:
    """Linux: the calling process gets SIGKILL when the process that started it dies (a worker of a killed
    step must not go on writing into a run folder that its resumed successor works in)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
