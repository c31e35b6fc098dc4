"""Seeds and determinism: every random stream of a run is derived from the study seed by name.

``derive(seed, "epoch", 3)`` is a stable 63-bit integer (SHA-256, never Python's salted ``hash``), so an
epoch's data order, augmentations and loss randomness depend only on (seed, epoch): a run resumed from
the checkpoint of epoch 2 replays epoch 3 exactly as an uninterrupted run does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from kdlib.device import torch_threads  # noqa: F401  (re-exported: training's thread policy)


def derive(seed: int, *parts) -> int:
    """A seed for the stream named ``parts`` of run seed ``seed``."""
    text = "/".join(str(p) for p in (seed, *parts)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    """Every global RNG's state as tensors and plain Python values, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)`` (NumPy's state is an array inside a tuple: stored field by field)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels (warn-only where none exists) and no cuDNN autotuning, restored on exit.

    torch's deterministic mode also fills every new tensor with NaN (``fill_uninitialized_memory``), a
    debugging aid that cost 13% of a CPU training step; kdlib reads no uninitialised memory and turns it off.
    """
    fill = torch.utils.deterministic
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, fill.fill_uninitialized_memory)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        fill.fill_uninitialized_memory = before[3]


def _get_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class RandomStream:
    """A private random stream for code that draws from torch's global generator (a loss term's
    ``torch.rand``): ``with stream:`` swaps it in for the block and keeps where it got to.

    Each network of a stacked session draws its loss randomness from its own stream, seeded from its own
    seed and epoch, so its draws do not depend on which other networks share the session."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.state = torch.Generator(device=device).manual_seed(seed).get_state()
        self._saved: list[torch.Tensor] = []

    def __enter__(self) -> "RandomStream":
        self._saved.append(_get_state(self.device))
        _set_state(self.device, self.state)
        return self

    def __exit__(self, *exc) -> None:
        self.state = _get_state(self.device)
        _set_state(self.device, self._saved.pop())
