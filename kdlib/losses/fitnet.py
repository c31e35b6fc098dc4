"""FitNets: a regressor maps a student layer onto a teacher layer (the "hint"); torchdistill's ``ConvReg``."""

from __future__ import annotations

import torch.nn.functional as F
from torchdistill.models.adaptation import ConvReg

from kdlib.losses.base import PairedLayerTerm, SetupContext, Stage, StepIO, check
from kdlib.registry import LOSSES


@LOSSES.register("fitnet")
class FitNet(PairedLayerTerm):
    r"""FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    :math:`L = \mathrm{MSE}\big(r(F_s), F_t\big)` between the teacher's hint layer :math:`F_t` and the
    student's guided layer :math:`F_s` through a trainable regressor :math:`r` (torchdistill's
    ``ConvReg``: conv-BN-ReLU, as in CRD's RepDistiller benchmark). The regressor trains with the student.

    Two ways to use it, both from the paper's literature:

    * single stage (``hint_epochs: 0``, RepDistiller's FitNet): the hint term beside ``ce`` / ``kd``
      throughout training (RepDistiller: weight 100, ``reduction: mean``);
    * two stages (``hint_epochs: N``, the paper and torchdistill's ImageNet config): first N epochs train
      the student up to the guided layer plus the regressor on the hint alone (Adam, ``hint_lr``), then
      the main training. Give the term weight 0 to drop the hint from the second stage.

    Options: ``layer`` (student path, default ``layer3``), ``teacher_layer`` (default: same), ``kernel_size``
    (3 keeps the size, 1 is a 1x1 map), ``reduction`` (``mean`` | ``sum``), ``hint_epochs`` (default 0),
    ``hint_lr`` (default 0.001, torchdistill's stage-1 Adam).
    """

    def __init__(
        self, *, layer: str = "layer3", teacher_layer: str | None = None, kernel_size: int = 3,
        reduction: str = "mean", hint_epochs: int = 0, hint_lr: float = 0.001,
    ):
        super().__init__()
        check(isinstance(layer, str), "layer", layer, "a module path")
        check(kernel_size in (1, 3), "kernel_size", kernel_size, "1 or 3")
        check(reduction in ("mean", "sum"), "reduction", reduction, "'mean' or 'sum'")
        check(isinstance(hint_epochs, int) and hint_epochs >= 0, "hint_epochs", hint_epochs, "an integer >= 0")
        check(isinstance(hint_lr, (int, float)) and hint_lr > 0, "hint_lr", hint_lr, "a number > 0")
        self.layer, self.teacher_layer = layer, teacher_layer or layer
        self.kernel_size, self.reduction = kernel_size, reduction
        self.hint_epochs, self.hint_lr = hint_epochs, float(hint_lr)
        self.regressor = None

    def setup(self, ctx: SetupContext) -> None:
        s_shape, t_shape = self.feature_map_shapes(ctx)
        pad = self.kernel_size // 2
        self.regressor = ConvReg(s_shape[0], t_shape[0], self.kernel_size, 1, pad, uses_relu=True)
        self.regressor.to(next(ctx.student.parameters()).device)
        self._student = [ctx.student]  # a list, so the student is not registered as a submodule

    def forward(self, io: StepIO):
        hint = io.teacher_io[self.teacher_layer]["output"]
        guided = self.regressor(io.student_io[self.layer]["output"])
        return F.mse_loss(guided, hint, reduction=self.reduction)

    def has_stages(self) -> bool:
        return self.hint_epochs > 0

    def stages(self) -> list[Stage]:
        if self.hint_epochs == 0:
            return []
        student = self._student[0]
        params = list(student.parameters()) + list(self.regressor.parameters())
        return [
            Stage(
                name="fitnet-hint", epochs=self.hint_epochs, params=params, loss=self.forward,
                optimizer={"name": "adam", "lr": self.hint_lr}, milestones=[max(1, (3 * self.hint_epochs) // 5)],
                student_layers=(self.layer,), teacher_layers=(self.teacher_layer,), uses_student=True,
                train_modules=[student, self.regressor],
            )
        ]
