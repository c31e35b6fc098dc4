"""A training run's files (names from :mod:`kdlib.layout`): its identity, the resume check, checkpoints,
``metrics.csv``.

The networks of a stacked session save together, so that a resumed stack starts every network from the
same epoch: each network's new checkpoint is first written beside the old one (``checkpoint.next.pt``,
atomically), and only when every network has one are they renamed over ``checkpoint.pt``. A run killed
in between is put right by :func:`recover` before it resumes: if every network of the stack has a
checkpoint of the newest epoch (next or renamed), the renames are finished; otherwise the next files are
dropped and the stack resumes from the epoch before.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import yaml

from kdlib import atomic, layout
from kdlib.digest import json_digest
from kdlib.errors import KdlibError
from kdlib.models import checkpoint
from kdlib.params import RunParams, StudyParams, TrainParams, to_dict


def _plain(obj):
    return json.loads(json.dumps(obj))


def identity(study: StudyParams, run: RunParams, train: TrainParams, seed: int, teacher_state: Optional[dict],
             stack: Sequence[str] = (), world_size: int = 1) -> dict:
    """The params a run's weights depend on (not the device): what a checkpoint records and resume compares.
    ``stack`` names the networks it is trained with when stacked (their float sums differ from a network
    trained alone, so the company is part of the identity); so is ``world_size`` under torchrun (each
    rank's BatchNorm statistics on the CPU, and the float sums, depend on it)."""
    train_dict = to_dict(train)
    train_dict.pop("device")
    if study.data.imagefolder is not None:
        data = {"imagefolder": str(Path(study.data.imagefolder).resolve())}
    else:
        data = {"world": to_dict(study.world), "world_seed": study.world_seed}
    teacher = None
    if teacher_state is not None:
        teacher = {"model": teacher_state["model"]["name"], "epoch": teacher_state["epoch"], "params": json_digest(teacher_state["identity"])}
    ident = {"run": to_dict(run), "train": train_dict, "seed": seed, "data": data, "teacher": teacher}
    if len(stack) > 1:
        ident["stack"] = list(stack)
    if world_size > 1:
        ident["world_size"] = world_size
    return _plain(ident)


def first_difference(a, b, path: str = "") -> Optional[str]:
    """``"train.epochs: 2 != 3"`` for the first key where two plain-data trees differ, else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {json.dumps(a)} != {json.dumps(b)}"


def existing(folder: Path, ident: dict, model: str, num_classes: int, where: str) -> Optional[dict]:
    """The folder's checkpoint when it was made from the same params, None when there is none; one line
    when it was made from other params or holds another network."""
    path = folder / layout.CHECKPOINT
    if not path.is_file():
        return None
    state = checkpoint.load(path, f"{where}: checkpoint")
    checkpoint.check_model(state, path, model, num_classes, f"{where}: run folder's checkpoint")
    diff = first_difference(state["identity"], ident)
    if diff:
        raise KdlibError(f"{where}: {folder} holds a run made from other params ({diff}); "
                         "valid: the same params, another --out, or delete the folder")
    return state


def write_params(folder: Path, ident: dict) -> None:
    atomic.write_text(folder / layout.PARAMS_YAML, yaml.safe_dump(ident, sort_keys=False))


def save(items: Sequence[tuple[Path, dict]]) -> None:
    """Write each ``(folder, state)`` checkpoint; several are saved together (see the module docstring)."""
    if len(items) == 1:
        folder, state = items[0]
        checkpoint.save(folder / layout.CHECKPOINT, state)
        return
    for folder, state in items:
        checkpoint.save(folder / layout.CHECKPOINT_NEXT, state)
    for folder, _ in items:
        os.replace(folder / layout.CHECKPOINT_NEXT, folder / layout.CHECKPOINT)


def _epoch(path: Path) -> Optional[int]:
    return checkpoint.load(path, "checkpoint")["epoch"] if path.is_file() else None


def recover(folders: Sequence[Path]) -> None:
    """Finish or undo a stack's save that a kill interrupted (see the module docstring)."""
    nexts = [f / layout.CHECKPOINT_NEXT for f in folders]
    if not any(p.is_file() for p in nexts):
        return
    newest = max(e for p in nexts if (e := _epoch(p)) is not None)
    complete = all(_epoch(n) == newest or _epoch(f / layout.CHECKPOINT) == newest for n, f in zip(nexts, folders))
    for n, f in zip(nexts, folders):
        if n.is_file():
            if complete:
                os.replace(n, f / layout.CHECKPOINT)
            else:
                n.unlink()


def write_metrics(folder: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(folder / layout.METRICS_CSV, buffer.getvalue())
