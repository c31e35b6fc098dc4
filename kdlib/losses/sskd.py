"""Knowledge distillation meets self-supervision: torchdistill's ``AuxSSKDLoss`` (stage 1) and ``SSKDLoss``."""

from __future__ import annotations

from torch import nn
from torchdistill.losses.mid_level import AuxSSKDLoss, SSKDLoss

from kdlib.losses.base import PairedLayerTerm, SetupContext, Stage, StepIO, check
from kdlib.registry import LOSSES


def ss_head(dim: int) -> nn.Sequential:
    """SSKD's self-supervision head (Linear-ReLU-Linear, as torchdistill's ``SSWrapper4SSKD``), out-of-place."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


@LOSSES.register("sskd")
class SelfSupervisedKD(PairedLayerTerm):
    r"""SSKD (Xu, Liu, Li & Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020).

    Every image is fed with its 90/180/270-degree rotations. Stage 1 (``teacher_head_epochs``): a head
    on the frozen teacher's features learns which rotated view belongs to which original (contrastive
    cross-entropy over cosine similarities, torchdistill's ``AuxSSKDLoss``). Main stage: a student head
    of the same shape trains with the student, and
    :math:`L = w_{ss}\, \tau_{ss}^2\, \mathrm{KL}(\text{teacher} \,\|\, \text{student similarities}/\tau_{ss})
    + w_{tf}\, \tau_{tf}^2\, \mathrm{KL}(\text{teacher} \,\|\, \text{student on rotated views}/\tau_{tf})`,
    each on the share (``ss_ratio``, ``tf_ratio``) of samples the teacher ranks best, from torchdistill's
    ``SSKDLoss``. Its own CE and KD parts are left to explicit ``ce`` and ``kd`` terms (which see only the
    original views): SSKD's setting is ``ce`` 1.0 + ``kd`` 0.9 (T = 4) + ``sskd`` with ``ss_weight`` 10,
    ``tf_weight`` 2.7.

    Options: ``layer`` (features, default ``avgpool``), ``teacher_layer``, ``ss_temperature`` (0.5),
    ``tf_temperature`` (4), ``ss_ratio`` (0.75), ``tf_ratio`` (1.0), ``ss_weight`` (10), ``tf_weight``
    (2.7), ``teacher_head_epochs`` (torchdistill: 30 of 130), ``teacher_head_lr`` (0.1, x0.1 at 1/3 and 2/3).
    """

    views = 4

    def __init__(
        self, *, layer: str = "avgpool", teacher_layer: str | None = None, ss_temperature: float = 0.5,
        tf_temperature: float = 4.0, ss_ratio: float = 0.75, tf_ratio: float = 1.0, ss_weight: float = 10.0,
        tf_weight: float = 2.7, teacher_head_epochs: int = 10, teacher_head_lr: float = 0.1,
    ):
        super().__init__()
        for key, value in (("ss_temperature", ss_temperature), ("tf_temperature", tf_temperature), ("teacher_head_lr", teacher_head_lr)):
            check(isinstance(value, (int, float)) and value > 0, key, value, "a number > 0")
        for key, value in (("ss_ratio", ss_ratio), ("tf_ratio", tf_ratio)):
            check(isinstance(value, (int, float)) and 0 <= value <= 1, key, value, "a number in [0, 1]")
        for key, value in (("ss_weight", ss_weight), ("tf_weight", tf_weight)):
            check(isinstance(value, (int, float)) and value >= 0, key, value, "a number >= 0")
        check(isinstance(teacher_head_epochs, int) and teacher_head_epochs >= 1, "teacher_head_epochs", teacher_head_epochs, "an integer >= 1")
        self.layer, self.teacher_layer = layer, teacher_layer or layer
        self.teacher_head_epochs, self.teacher_head_lr = teacher_head_epochs, float(teacher_head_lr)
        self.loss = SSKDLoss(
            student_linear_module_path="logits", teacher_linear_module_path="logits",
            student_ss_module_path="head", teacher_ss_module_path="head", kl_temp=tf_temperature,
            ss_temp=ss_temperature, tf_temp=tf_temperature, ss_ratio=ss_ratio, tf_ratio=tf_ratio,
            loss_weights=[0.0, 0.0, float(ss_weight), float(tf_weight)],
        )
        self.aux_loss = AuxSSKDLoss(module_path="head", module_io="output")

    def setup(self, ctx: SetupContext) -> None:
        s_dim = ctx.output_shape("student", self.layer, self.where).numel()
        t_dim = ctx.output_shape("teacher", self.teacher_layer, self.where).numel()
        device = next(ctx.student.parameters()).device
        self.student_head = ss_head(s_dim).to(device)
        self.teacher_head = ss_head(t_dim).to(device)
        self.teacher_head.requires_grad_(False)  # trained only in its own stage

    def _teacher_features(self, io: StepIO):
        return io.teacher_io[self.teacher_layer]["output"].flatten(1)

    def _head_loss(self, io: StepIO):
        return self.aux_loss({}, {"head": {"output": self.teacher_head(self._teacher_features(io))}})

    def has_stages(self) -> bool:
        return True

    def stages(self) -> list[Stage]:
        e = self.teacher_head_epochs
        return [
            Stage(
                name="sskd-teacher-head", epochs=e, params=list(self.teacher_head.parameters()), loss=self._head_loss,
                optimizer={"name": "sgd", "lr": self.teacher_head_lr, "momentum": 0.9, "weight_decay": 5e-4},
                milestones=[m for m in (e // 3, (2 * e) // 3) if m > 0], teacher_layers=(self.teacher_layer,),
                views=self.views, train_modules=[self.teacher_head],
            )
        ]

    def forward(self, io: StepIO):
        student = {
            "logits": {"output": io.all_logits},
            "head": {"output": self.student_head(io.student_io[self.layer]["output"].flatten(1))},
        }
        teacher = {
            "logits": {"output": io.all_teacher_logits},
            "head": {"output": self.teacher_head(self._teacher_features(io)).detach()},
        }
        return self.loss(student, teacher, io.targets)
