"""Check every run of a study before training any: names, options, layers, teachers (one line each)."""

from __future__ import annotations

from typing import Optional, Sequence

from kdlib.errors import KdlibError
from kdlib.losses import build_objective
from kdlib.losses.base import find_layer
from kdlib.models import build
from kdlib.params import StudyParams
from kdlib.models import checkpoint
from kdlib.train.optim import check_names

PROBE_CLASSES = 2  # layer names do not depend on the class count


def check_study(study: StudyParams, names: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`KdlibError` for the first problem a training run would hit late (after a teacher's hours)."""
    runs = [study.run(n) for n in names] if names else study.runs()
    for run in runs:
        where = f"{study.source}: {run.name}"
        train = study.train_for(run)
        check_names(train.optimizer, train.schedule, f"{where}.train")
        student = build(run.model, PROBE_CLASSES, **run.model_kwargs)
        objective = build_objective(run.loss, f"{where}.loss")
        teacher = None
        if run.teacher is not None and run.teacher.run is not None:
            ref = study.run(run.teacher.run)
            teacher = build(ref.model, PROBE_CLASSES, **ref.model_kwargs)
        elif run.teacher is not None:
            state = checkpoint.load(run.teacher.checkpoint, f"{where}: teacher checkpoint")
            spec = state["model"]
            teacher = build(spec["name"], PROBE_CLASSES, **spec.get("kwargs", {}))
        if objective.needs_teacher and teacher is None:
            term = next(t for t in objective.terms if t.needs_teacher)
            raise KdlibError(f"{term.where} needs a teacher; valid: give {run.name} teacher: {{run: NAME}} or {{checkpoint: PATH}}")
        for term in objective.terms:
            for path in term.student_layers():
                find_layer(student, path, f"{term.where} (student {run.model})")
            for path in term.teacher_layers():
                find_layer(teacher, path, f"{term.where} (teacher)")
