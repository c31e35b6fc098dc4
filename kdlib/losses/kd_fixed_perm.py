"""KD from a teacher whose non-target classes are relabelled by one permutation fixed for the whole run."""

from __future__ import annotations

import torch

from kdlib.losses.base import SetupContext, StepIO
from kdlib.losses.kd import KnowledgeDistillation, soft_kl
from kdlib.losses.kd_permuted import permute_non_target
from kdlib.registry import LOSSES


def fixed_destinations(sigma: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` table: row ``y`` sends class ``c`` to ``sigma[c]``, except ``y`` stays put and the class
    that ``sigma`` would send onto ``y`` takes ``sigma[y]`` instead. Each row is a bijection fixing ``y``."""
    k = sigma.numel()
    table = sigma.expand(k, k).clone()
    rows = torch.arange(k)
    onto_target = sigma.argsort()  # onto_target[y] = the class c with sigma[c] = y
    table[rows, onto_target] = sigma  # that class takes sigma[y]'s place ...
    table[rows, rows] = rows  # ... and y stays (covers sigma[y] == y too)
    return table


@LOSSES.register("kd_fixed_perm")
class FixedPermutationKD(KnowledgeDistillation):
    r"""KD whose teacher distribution is relabelled by one fixed permutation of the non-target classes.

    A permutation :math:`\sigma` of the :math:`K` classes is drawn once from the run seed; for label
    :math:`y`, the teacher's probability of class :math:`c \ne y` moves to :math:`\sigma(c)` (the one class
    that would land on :math:`y` moves to :math:`\sigma(y)` instead), so the target probability and the
    entropy are kept. Unlike ``kd_permuted`` the student sees a *consistent* but wrong similarity
    structure: every image of a class gets the same fake "siblings". A control of this study.

    Options: ``temperature`` T > 0 (default 4).
    """

    def __init__(self, *, temperature: float = 4.0):
        super().__init__(temperature=temperature)
        self.register_buffer("destinations", torch.zeros(0, dtype=torch.long))

    def setup(self, ctx: SetupContext) -> None:
        generator = torch.Generator().manual_seed(ctx.seed)
        sigma = torch.randperm(ctx.num_classes, generator=generator)
        self.destinations = fixed_destinations(sigma).to(self.destinations.device)

    def forward(self, io: StepIO):
        probs = self.teacher_probs(io)
        destination = self.destinations.to(io.targets.device)[io.targets]
        return soft_kl(io.logits, permute_non_target(probs, destination), self.temperature)
