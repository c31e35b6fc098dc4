"""Factor transfer: torchdistill's paraphraser / translator modules and ``FTLoss``, with the paraphraser stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import FTLoss
from torchdistill.models.wrapper import Paraphraser4FactorTransfer, Translator4FactorTransfer

from kdlib.losses.base import PairedLayerTerm, SetupContext, Stage, StepIO, check
from kdlib.registry import LOSSES


@LOSSES.register("ft")
class FactorTransfer(PairedLayerTerm):
    r"""Factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network", NeurIPS 2018).

    Stage 1 (``paraphraser_epochs``): a convolutional autoencoder (the *paraphraser*, encoder rate ``k``)
    learns to reconstruct the frozen teacher's layer output, :math:`\mathrm{mean}\,(D(E(F_t)) - F_t)^2`.
    torchdistill's ImageNet config sums the squared error and uses SGD at lr 1e-4, tuned to a pretrained
    ResNet-34's feature scale; kdlib takes the mean and Adam, which do not depend on the teacher's feature
    scale or the batch size (with the sum, SGD diverged on small-world teachers). Stage 2 (the main training): a student *translator* maps the student's layer onto the
    factor space and :math:`L = \mathrm{mean}\,\big| \frac{T(F_s)}{\|T(F_s)\|_2} - \frac{E(F_t)}{\|E(F_t)\|_2} \big|`
    (``p = 1``), torchdistill's ``FTLoss``; the paraphraser is frozen, the translator trains with the student.

    Options: ``layer`` (default ``layer4``, Han et al.), ``teacher_layer`` (default: same), ``k`` (0.5),
    ``p`` (1 or 2), ``paraphraser_epochs`` (1: Han et al.'s "1 + 90 epochs"), ``paraphraser_lr``
    (0.001, Adam). Weight 1000 beside ``ce`` in torchdistill's config.
    """

    def __init__(
        self, *, layer: str = "layer4", teacher_layer: str | None = None, k: float = 0.5, p: int = 1,
        paraphraser_epochs: int = 1, paraphraser_lr: float = 0.001,
    ):
        super().__init__()
        check(isinstance(k, (int, float)) and 0 < k <= 4, "k", k, "a number in (0, 4]")
        check(p in (1, 2), "p", p, "1 or 2")
        check(isinstance(paraphraser_epochs, int) and paraphraser_epochs >= 1, "paraphraser_epochs", paraphraser_epochs, "an integer >= 1")
        check(isinstance(paraphraser_lr, (int, float)) and paraphraser_lr > 0, "paraphraser_lr", paraphraser_lr, "a number > 0")
        self.layer, self.teacher_layer = layer, teacher_layer or layer
        self.k, self.paraphraser_epochs, self.paraphraser_lr = float(k), paraphraser_epochs, float(paraphraser_lr)
        self.loss = FTLoss(p=p, reduction="mean", paraphraser_path="paraphraser", translator_path="translator")

    def setup(self, ctx: SetupContext) -> None:
        s_shape, t_shape = self.feature_map_shapes(ctx)
        device = next(ctx.student.parameters()).device
        self.paraphraser = Paraphraser4FactorTransfer(self.k, t_shape[0], uses_bn=False, uses_decoder=False).to(device)
        factor_channels = int(t_shape[0] * self.k)
        self.translator = Translator4FactorTransfer(s_shape[0], factor_channels, uses_bn=False).to(device)
        self.paraphraser.requires_grad_(False)  # trained only in its own stage

    def _reconstruction(self, io: StepIO) -> torch.Tensor:
        features = io.teacher_io[self.teacher_layer]["output"]
        self.paraphraser.uses_decoder = True
        try:
            return F.mse_loss(self.paraphraser(features), features)
        finally:
            self.paraphraser.uses_decoder = False

    def has_stages(self) -> bool:
        return True

    def stages(self) -> list[Stage]:
        return [
            Stage(
                name="ft-paraphraser", epochs=self.paraphraser_epochs, params=list(self.paraphraser.parameters()),
                loss=self._reconstruction, teacher_layers=(self.teacher_layer,), train_modules=[self.paraphraser],
                optimizer={"name": "adam", "lr": self.paraphraser_lr},
            )
        ]

    def forward(self, io: StepIO):
        with torch.no_grad():
            factor = self.paraphraser(io.teacher_io[self.teacher_layer]["output"])
        translated = self.translator(io.student_io[self.layer]["output"])
        return self.loss({"translator": {"output": translated}}, {"paraphraser": {"output": factor}})
