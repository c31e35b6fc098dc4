"""Training: ``fit(study, run) -> RunResult``, ``fit_study(study)`` and ``python -m kdlib.train PARAMS.yaml``.

Modules: :mod:`~kdlib.train.fit` (the loop, run folder layout, resume), :mod:`~kdlib.train.step`
(hooked forwards), :mod:`~kdlib.train.data` (splits, seeded loaders), :mod:`~kdlib.models.checkpoint`
(atomic checkpoints, :func:`load_model`), :mod:`~kdlib.train.optim` (optimizers and schedules by name),
:mod:`~kdlib.train.seeding` (derived seeds, deterministic mode), :mod:`~kdlib.train.check` (fail early).
"""

from kdlib.models.checkpoint import load_model
from kdlib.train.check import check_study
from kdlib.train.fit import RunResult, fit, fit_study, initial_network, output_dir, run_dir

__all__ = ["RunResult", "check_study", "fit", "fit_study", "initial_network", "load_model", "output_dir", "run_dir"]
