"""Label smoothing: cross-entropy against the label mixed with the uniform distribution."""

from __future__ import annotations

import torch.nn.functional as F

from kdlib.losses.base import LossTerm, StepIO, check
from kdlib.registry import LOSSES


@LOSSES.register("ls")
class LabelSmoothing(LossTerm):
    r"""Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016).

    Target :math:`y_{LS} = (1 - \epsilon)\, \mathrm{onehot}(y) + \epsilon / K`, so
    :math:`L = (1 - \epsilon)\, \mathrm{CE}(y, \sigma(z)) + \epsilon\, \mathrm{CE}(u, \sigma(z))` with
    :math:`u` uniform over the :math:`K` classes. Computed by torch's ``cross_entropy(label_smoothing=)``.

    Options: ``epsilon`` in [0, 1] (default 0.1, Szegedy et al.'s value; the KD-interpretability blog's
    alpha).
    """

    def __init__(self, *, epsilon: float = 0.1):
        super().__init__()
        check(isinstance(epsilon, (int, float)) and 0.0 <= epsilon <= 1.0, "epsilon", epsilon, "a number in [0, 1]")
        self.epsilon = float(epsilon)

    def forward(self, io: StepIO):
        return F.cross_entropy(io.logits, io.targets, label_smoothing=self.epsilon)
