"""Training objectives built by name from params: a weighted sum of registered terms.

Logit terms (one module each): ``ce``, ``ls``, ``kd``, ``kd_permuted``, ``kd_fixed_perm``.
Feature terms, glue around torchdistill's losses and auxiliary modules: ``at``, ``fitnet``, ``ft``,
``crd``, ``sskd``. Each registered class documents its formula, paper and options; build with
:func:`build_objective`.
"""

from __future__ import annotations

from kdlib.losses import at, ce, crd, fitnet, ft, kd, kd_fixed_perm, kd_permuted, ls, sskd  # noqa: F401 (register)
from kdlib.losses.base import LossTerm, SetupContext, Stage, StepIO
from kdlib.losses.objective import Objective, build_objective, build_term
from kdlib.registry import LOSSES


def names() -> list[str]:
    return LOSSES.names()


__all__ = ["LossTerm", "Objective", "SetupContext", "Stage", "StepIO", "build_objective", "build_term", "names"]
