"""Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.base import LossTerm, StepIO, check
from kdlib.registry import LOSSES


def soft_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    r""":math:`T^2 \cdot \mathrm{KL}(p_t \,\|\, \sigma(z_s / T))`, averaged over the batch."""
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean") * temperature**2


def check_temperature(temperature) -> float:
    check(
        isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0,
        "temperature", temperature, "a number > 0",
    )
    return float(temperature)


@LOSSES.register("kd")
class KnowledgeDistillation(LossTerm):
    r"""Hinton KD: :math:`L = T^2\, \mathrm{KL}\big(\sigma(z_t/T) \,\|\, \sigma(z_s/T)\big)` (batch mean).

    This is only the distillation term; the hard-label term is a separate ``ce`` term, so weights are
    explicit. torchdistill's ``KDLoss(alpha)`` = ``alpha * ce + (1 - alpha) * kd``; the blog's
    convention (alpha on the distillation term) = ``(1 - alpha) * ce + alpha * kd``.

    Options: ``temperature`` T > 0 (default 4; Han et al.'s configs use T = 1 from a ResNet-34 teacher
    and T = 2 from an LS teacher, see params/).
    """

    needs_teacher = True

    def __init__(self, *, temperature: float = 4.0):
        super().__init__()
        self.temperature = check_temperature(temperature)

    def teacher_probs(self, io: StepIO) -> torch.Tensor:
        return F.softmax(io.teacher_logits / self.temperature, dim=1)

    def forward(self, io: StepIO):
        return soft_kl(io.logits, self.teacher_probs(io), self.temperature)
