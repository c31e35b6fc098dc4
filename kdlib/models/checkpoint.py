"""Checkpoints: one file per run holding everything needed to resume, written atomically, read safely.

A checkpoint is a ``torch.save`` dict with ``format`` (``kdlib-checkpoint/2``), ``model`` (name, kwargs,
num_classes, classes), ``identity`` (the params it was made from), ``epoch`` (last completed, 0 = before
the first), ``model_state``, ``objective_state`` (auxiliary modules and buffers of the loss terms),
``optimizer_state``, ``scheduler_state``, ``scaler_state``, ``rng`` and ``sampler`` state, and the per-epoch
``history``. Everything in it is a tensor or plain Python data, so it is read with
``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused before anything
in it runs, whoever shared it. Format 1 (kdlib 0.1 before this change) stored NumPy's RNG state as an
array and cannot be read safely; it is refused with a line saying so. :func:`load_model` rebuilds the
network for any later step (dissection, metrics).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from kdlib import atomic
from kdlib.errors import KdlibError
from kdlib.models import build

FORMAT = "kdlib-checkpoint/2"
OLD_FORMATS = ("kdlib-checkpoint/1",)


def save(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file renamed over the old checkpoint)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """Read a kdlib checkpoint on the CPU; a missing, truncated or foreign file is one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise KdlibError(f"{what} {str(path)!r} does not exist; valid: a kdlib checkpoint.pt or its run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise KdlibError(
            f"{what} {str(path)!r} holds objects other than tensors and plain data (it could run code when "
            f"loaded), so it is refused unread; valid: a kdlib checkpoint ({FORMAT})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise KdlibError(
            f"{what} {str(path)!r} cannot be read ({type(exc).__name__}: truncated or not a checkpoint); "
            "valid: a complete kdlib checkpoint"
        ) from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise KdlibError(f"{what} {str(path)!r} is an old {state['format']} checkpoint; valid: one written by this kdlib ({FORMAT}): retrain it")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise KdlibError(f"{what} {str(path)!r} is not a kdlib checkpoint; valid: a file written by kdlib.train ({FORMAT})")
    return state


def check_model(state: dict, path: Any, model: Optional[str] = None, num_classes: Optional[int] = None, what: str = "checkpoint") -> None:
    """One line when the checkpoint holds another architecture or class count than expected."""
    have = state["model"]
    if model is not None and have["name"] != model:
        raise KdlibError(f"{what} {str(path)!r} holds model {have['name']!r}; valid: a checkpoint of {model!r}")
    if num_classes is not None and have["num_classes"] != num_classes:
        raise KdlibError(
            f"{what} {str(path)!r} has {have['num_classes']} classes but the data has {num_classes}; "
            "valid: a checkpoint trained on the same classes"
        )


def load_model(
    path: str | os.PathLike, model: Optional[str] = None, num_classes: Optional[int] = None,
    device: str | torch.device = "cpu", what: str = "checkpoint",
) -> tuple[torch.nn.Module, dict]:
    """The network stored in a checkpoint (or run folder), in eval mode on ``device``, and the checkpoint.

    ``model`` / ``num_classes``, when given, must match what the checkpoint records. The weights are those
    of the checkpoint's ``epoch`` (the last completed one).
    """
    state = load(path, what)
    check_model(state, path, model, num_classes, what)
    spec = state["model"]
    net = build(spec["name"], spec["num_classes"], **spec.get("kwargs", {}))
    net.load_state_dict(state["model_state"])
    return net.to(device).eval(), state
