"""Training: ``fit(study, instance, folder) -> RunResult``, ``fit_study(study, folder)`` and
``python -m kdlib.train PARAMS.yaml``.

Modules: :mod:`~kdlib.train.plan` (which networks train together, processes, ``fit_study``),
:mod:`~kdlib.train.fit` (one network or one stack: resume, epochs, results),
:mod:`~kdlib.train.session` (the training session built once: networks, teachers, objectives, optimizer,
schedule, stepper, forwarder, batches), :mod:`~kdlib.train.step` (hooked forwards),
:mod:`~kdlib.train.batches` (an epoch's batches from its seed), :mod:`~kdlib.train.stages` (pre-training
stages), :mod:`~kdlib.train.runfiles` (identity, checkpoints saved together, metrics),
:mod:`~kdlib.train.loaders` (seeded DataLoaders), :mod:`~kdlib.train.optim` (optimizers and schedules
by name), :mod:`~kdlib.train.seeding` (derived seeds, deterministic mode, threads, random streams),
:mod:`~kdlib.train.check` (fail early). Checkpoints: :mod:`kdlib.models.checkpoint`; run folders:
:mod:`kdlib.layout`.
"""

from kdlib.models.checkpoint import load_model
from kdlib.train.check import check_study
from kdlib.train.fit import RunResult, fit, fit_stack, teacher_checkpoint
from kdlib.train.plan import fit_study, plan
from kdlib.train.session import TrainingSession, initial_network

__all__ = ["RunResult", "TrainingSession", "check_study", "fit", "fit_stack", "fit_study", "initial_network",
           "load_model", "plan", "teacher_checkpoint"]
