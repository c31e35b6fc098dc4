"""Cross-entropy with the one-hot label: the "scratch" objective."""

from __future__ import annotations

import torch.nn.functional as F

from kdlib.losses.base import LossTerm, StepIO
from kdlib.registry import LOSSES


@LOSSES.register("ce")
class CrossEntropy(LossTerm):
    r"""Cross-entropy with the label: :math:`L = -\frac1B \sum_b \log \sigma(z_b)_{y_b}`.

    No options.
    """

    def forward(self, io: StepIO):
        return F.cross_entropy(io.logits, io.targets)
