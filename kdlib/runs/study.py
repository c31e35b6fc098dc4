"""The headless study: the steps of :mod:`kdlib.runs.steps` in order, with a manifest and a lock.

``python -m kdlib.runs run PARAMS.yaml [--out DIR]`` (what ``make study`` runs). The run folder is
``<output_root>/<run id>/`` (:mod:`kdlib.layout`), so the same params always land in the same folder and
a re-run reuses every finished step; other params get another folder. One process works in a folder at
a time (:mod:`kdlib.locks`).
"""

from __future__ import annotations

from pathlib import Path

from kdlib import atomic, layout
from kdlib.layout import StudyFolder
from kdlib.locks import LOCK_NAME, folder_lock
from kdlib.params import StudyParams, to_dict
from kdlib.runs import steps
from kdlib.runs.manifest import Manifest


def run_study(study: StudyParams, out: str | Path | None = None, progress: bool = True) -> Path:
    """Run every step of the study that params describe; return the run folder."""
    steps.check(study)
    folder = StudyFolder.for_study(study, out)
    with folder_lock(folder.root, "study folder", clean=False):
        # stale temporary files of a killed run; folders with their own lock are cleaned by their owner
        atomic.remove_stale(folder.root, recursive=True, skip=lambda p: (p / LOCK_NAME).exists())
        layout.clear_done(folder.root)
        manifest = Manifest(folder=folder.root, params=to_dict(study), seed=study.seed, seeds=study.student_seeds)
        manifest.save()
        with manifest.step("world"):
            world = steps.world(study, folder)
            manifest.data["world"] = str(world) if world is not None else None
        with manifest.step("train"):
            steps.train(study, folder, progress=progress)
        with manifest.step("dissect"):
            steps.dissect(study, folder, progress=progress)
        with manifest.step("tables"):
            steps.tables(study, folder)
        with manifest.step("figures"):
            steps.figures(study, folder)
        with manifest.step("metrics"):
            steps.metrics(study, folder, progress=progress)
        with manifest.step("compare"):
            steps.compare(study, folder)
        layout.write_done(folder.root, "study", run_id=folder.root.name, steps=manifest.steps)
    return folder.root
