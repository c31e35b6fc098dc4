"""Small studies on the tiny world for the training tests, and a shared, once-trained teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdlib.layout import StudyFolder
from kdlib.params import StudyParams, load_study

TRAIN = {
    "epochs": 2, "batch_size": 16, "image_size": 24,
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.1},
}


def study_file(folder: Path, world: Path, students: list[dict], teacher: dict | None = None, **train: Any) -> Path:
    """Write a study YAML over the tiny ``world`` (read-only, as ``data.imagefolder``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "seed": 0, "world": {"profile": "tiny"}, "data": {"imagefolder": str(world)},
        "output_root": str(folder / "outputs"), "train": {**TRAIN, **train}, "students": students,
    }
    if data["train"]["epochs"] < 2 and "schedule" not in train:  # a milestone must fall inside the epochs
        data["train"]["schedule"] = {**TRAIN["schedule"], "milestones": []}
    if teacher is not None:
        data["teachers"] = [teacher]
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def study(folder: Path, world: Path, students: list[dict], teacher: dict | None = None, **train: Any) -> StudyParams:
    return load_study(study_file(folder, world, students, teacher, **train))


def run_folder(s: StudyParams, key: str) -> Path:
    """Where the network ``key`` (``teacher``, ``scratch-s0``) of ``s`` trains: its study folder's ``runs/<key>``."""
    return StudyFolder.for_study(s).run(key)


def fit_named(s: StudyParams, name: str, seed: int | None = None, folder: StudyFolder | None = None):
    """``fit`` the run ``name`` of ``s`` (at ``seed``, default the study's first) into ``folder`` (default:
    the study's own folder)."""
    from kdlib.train import fit, teacher_checkpoint

    inst = next(i for i in s.instances([name]) if seed is None or i.seed == seed)
    folder = folder or StudyFolder.for_study(s)
    return fit(s, inst, folder.run(inst.key), teacher_checkpoint(s, inst, folder), progress=False)


def trained_teacher(base: Path, world: Path) -> Path:
    """A 4-stage teacher (resnet18_w8) trained 2 epochs on the tiny world; fit() makes it once per session
    (a finished run folder is returned as it is)."""
    s = study(base / "teacher-study", world, [], teacher={"name": "teacher", "model": "resnet18_w8"})
    return Path(fit_named(s, "teacher").checkpoint)


def session_for(s: StudyParams, name: str, teacher: Path | None = None, progress: bool = False):
    """The :class:`~kdlib.train.TrainingSession` ``fit`` would build for run ``name`` of ``s`` at its first
    seed, distilling from checkpoint ``teacher``; and the splits it reads."""
    import torch

    from kdlib.data.splits import load_splits
    from kdlib.train.fit import load_teacher
    from kdlib.train.session import NetworkSpec, TrainingSession

    inst = s.instances([name])[0]
    train = s.train_for(inst.run)
    splits = load_splits(s, train)
    device = torch.device("cpu")
    teachers = {}
    if teacher is not None:
        teachers["teacher"] = load_teacher(teacher, len(splits.classes), device, train, name)[0]
    spec = NetworkSpec(inst.key, inst.run, inst.seed, "teacher" if teacher is not None else None, name)
    return TrainingSession(train, splits, [spec], teachers, device, progress=progress), splits
