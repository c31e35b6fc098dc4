"""Training: ``fit(study, instance, folder) -> RunResult``, ``fit_study(study, folder)`` and
``python -m kdlib.train PARAMS.yaml``.

Modules: :mod:`~kdlib.train.fit` (the loop, resume), :mod:`~kdlib.train.step` (hooked forwards),
:mod:`~kdlib.train.loaders` (seeded loaders over :mod:`kdlib.data.splits`), :mod:`~kdlib.train.optim`
(optimizers and schedules by name), :mod:`~kdlib.train.seeding` (derived seeds, deterministic mode),
:mod:`~kdlib.train.check` (fail early). Checkpoints: :mod:`kdlib.models.checkpoint`; run folders:
:mod:`kdlib.layout`.
"""

from kdlib.models.checkpoint import load_model
from kdlib.train.check import check_study
from kdlib.train.fit import RunResult, fit, fit_study, initial_network, teacher_checkpoint

__all__ = ["RunResult", "check_study", "fit", "fit_study", "initial_network", "load_model", "teacher_checkpoint"]
