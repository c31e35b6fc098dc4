"""KD from a teacher whose non-target probabilities are shuffled per sample: the similarity control."""

from __future__ import annotations

import torch

from kdlib.losses.base import StepIO
from kdlib.losses.kd import KnowledgeDistillation, soft_kl
from kdlib.registry import LOSSES


def permute_non_target(probs: torch.Tensor, destination: torch.Tensor) -> torch.Tensor:
    """Move ``probs[b, c]`` to column ``destination[b, c]`` (each row of ``destination`` fixes its target)."""
    return torch.empty_like(probs).scatter_(1, destination, probs)


def random_destinations(targets: torch.Tensor, num_classes: int, generator=None) -> torch.Tensor:
    """Per row, a uniformly random bijection of the non-target classes; the target maps to itself.

    Sort random keys with the target's key forced first: the remaining columns come out in random order
    (sources); the non-target classes in ascending order (destinations) pair up with them.
    """
    batch = targets.shape[0]
    rows = torch.arange(batch, device=targets.device)
    keys = torch.rand(batch, num_classes, generator=generator, device=targets.device)
    keys[rows, targets] = -1.0
    sources = keys.argsort(dim=1)
    ranks = torch.arange(num_classes, device=targets.device, dtype=torch.float32).expand(batch, -1).clone()
    ranks[rows, targets] = -1.0
    ascending = ranks.argsort(dim=1)
    destination = torch.empty_like(sources)
    destination.scatter_(1, sources, ascending)  # source column sources[b, i] goes to ascending[b, i]
    return destination


@LOSSES.register("kd_permuted")
class PermutedKD(KnowledgeDistillation):
    r"""KD whose teacher distribution has its non-target probabilities randomly permuted, per sample.

    :math:`p'_t = \pi_b(\sigma(z_t / T))` where :math:`\pi_b` fixes the label :math:`y_b` and permutes
    the other :math:`K - 1` classes uniformly at random, drawn afresh for every sample and step; then
    :math:`L = T^2\, \mathrm{KL}(p'_t \,\|\, \sigma(z_s / T))`. The target probability and the entropy of
    :math:`p'_t` equal the teacher's; which classes the teacher finds similar is destroyed. "Target" is
    the ground-truth label. A control of this study; Han et al. (ICML 2023) have no such control.

    Options: ``temperature`` T > 0 (default 4).
    """

    def forward(self, io: StepIO):
        probs = self.teacher_probs(io)
        destination = random_destinations(io.targets, probs.shape[1])
        return soft_kl(io.logits, permute_non_target(probs, destination), self.temperature)

