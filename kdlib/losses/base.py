"""What every loss term shares: the per-step inputs, the set-up context, extra training stages.

A term is an ``nn.Module`` registered by name in :data:`kdlib.registry.LOSSES`. It declares which layer
outputs it needs (captured by forward hooks, by module path), whether it needs a teacher, and may own
trainable auxiliary modules (a regressor, embeddings, a translator) and extra stages that run before the
main training (FT pretrains a paraphraser, SSKD a teacher head, FitNets a hint stage). The training loop
(``kdlib.train``) runs the stages and the steps; a term only computes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from kdlib.errors import KdlibError
from kdlib.models.nethook import capture_layers

IODict = dict  # torchdistill's layout: {module_path: {"output": tensor}}


@dataclass
class StepIO:
    """One training step as the loss terms see it (logits and layers of the *original* views).

    ``student_io`` / ``teacher_io`` hold the hooked layer outputs in torchdistill's layout
    ``{path: {"output": tensor}}``, so torchdistill's losses take them unchanged. With rotated views
    (SSKD) the batch is ``views * B`` images, view-major per sample (``4b + r``); ``logits`` and the io
    dicts a term with ``views == 1`` receives hold only the original images, and ``all_logits`` /
    ``all_teacher_logits`` keep every view.
    """

    logits: Optional[torch.Tensor]
    targets: torch.Tensor
    indices: torch.Tensor
    teacher_logits: Optional[torch.Tensor] = None
    student_io: IODict = field(default_factory=dict)
    teacher_io: IODict = field(default_factory=dict)
    views: int = 1
    all_logits: Optional[torch.Tensor] = None
    all_teacher_logits: Optional[torch.Tensor] = None
    epoch: int = 0
    step: int = 0

    def originals(self) -> "StepIO":
        """The same step restricted to the original (un-rotated) images."""
        if self.views == 1:
            return self
        pick = slice(None, None, self.views)

        def cut(io: IODict) -> IODict:
            return {p: {k: v[pick] for k, v in d.items()} for p, d in io.items()}

        return StepIO(
            self.logits, self.targets, self.indices, self.teacher_logits, cut(self.student_io),
            cut(self.teacher_io), 1, self.logits, self.teacher_logits, self.epoch, self.step,
        )


@dataclass
class SetupContext:
    """What a term may inspect once, before training: the models, the data's labels, the seed."""

    student: nn.Module
    teacher: Optional[nn.Module]
    num_classes: int
    image_size: int
    train_targets: torch.Tensor  # label of every training image, by dataset index
    seed: int
    student_name: str = "student"
    teacher_name: str = "teacher"

    def output_shape(self, role: str, path: str, where: str) -> torch.Size:
        """Per-image output shape of layer ``path`` of the student or teacher (a probe forward in eval mode)."""
        model = self.student if role == "student" else self.teacher
        name = self.student_name if role == "student" else self.teacher_name
        if model is None:
            raise KdlibError(f"{where} needs a teacher; valid: set the run's teacher: {{run: ...}} or {{checkpoint: ...}}")
        find_layer(model, path, f"{where} ({role} {name})")
        was_training = model.training
        try:
            model.eval()
            param = next(model.parameters())
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=param.device, dtype=param.dtype)
            with torch.no_grad(), capture_layers(model, [path], require_4d=False) as captured:
                model(probe)
                return captured[path].shape[1:]
        finally:
            model.train(was_training)


@dataclass
class Stage:
    """An extra optimisation stage a term runs before the main training (on the same training data).

    ``loss`` maps a :class:`StepIO` (with the hooked layers below) to a scalar; only ``params`` are
    updated, with optimizer ``optimizer`` (``{"name": "sgd" | "adam", "lr": ..., ...}``) and the lr
    multiplied by 0.1 at each of ``milestones`` (epochs). ``train_modules`` are put in train mode.
    """

    name: str
    epochs: int
    params: list[nn.Parameter]
    loss: Callable[[StepIO], torch.Tensor]
    optimizer: dict
    milestones: list[int] = field(default_factory=list)
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    uses_student: bool = False
    views: int = 1
    train_modules: list[nn.Module] = field(default_factory=list)


class LossTerm(nn.Module):
    """Base class of a registered loss term. Subclasses set the class attributes they need."""

    needs_teacher: bool = False
    views: int = 1  # 4: the step feeds each image and its 90/180/270-degree rotations (SSKD)

    def __init__(self) -> None:
        super().__init__()
        self.where = type(self).__name__

    def student_layers(self) -> tuple[str, ...]:
        return ()

    def teacher_layers(self) -> tuple[str, ...]:
        return ()

    def setup(self, ctx: SetupContext) -> None:
        """Check layers and build auxiliary modules once the models exist (before the optimizer)."""
        for path in self.student_layers():
            ctx.output_shape("student", path, self.where)
        for path in self.teacher_layers():
            ctx.output_shape("teacher", path, self.where)

    def stages(self) -> list[Stage]:
        """The term's extra stages (after :meth:`setup`)."""
        return []

    def has_stages(self) -> bool:
        """Whether :meth:`stages` will give any, known from the options alone (before set-up)."""
        return False

    def forward(self, io: StepIO) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PairedLayerTerm(LossTerm):
    """A term that hooks one student layer (``self.layer``) and one teacher layer (``self.teacher_layer``)."""

    needs_teacher = True
    layer: str
    teacher_layer: str

    def student_layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def teacher_layers(self) -> tuple[str, ...]:
        return (self.teacher_layer,)

    def feature_map_shapes(self, ctx: SetupContext) -> tuple[torch.Size, torch.Size]:
        """Student and teacher [C, H, W] at the hooked layers; one line unless both are maps of one size."""
        s_shape = ctx.output_shape("student", self.layer, self.where)
        t_shape = ctx.output_shape("teacher", self.teacher_layer, self.where)
        if len(s_shape) != 3 or s_shape[1:] != t_shape[1:]:
            raise KdlibError(
                f"{self.where}: student {self.layer} is {tuple(s_shape)} but teacher {self.teacher_layer} is "
                f"{tuple(t_shape)}; valid: feature-map layers with equal spatial size"
            )
        return s_shape, t_shape


def find_layer(model: nn.Module, path: str, where: str) -> nn.Module:
    """``model``'s submodule at ``path``, or one line naming the bad path and the model's top-level layers."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        top = [n for n, _ in model.named_children()]
        raise KdlibError(
            f"{where}: layer {path!r} is not in the model; valid: a module path such as {', '.join(top)}"
        ) from None


def check(condition: bool, key: str, value, valid: str) -> None:
    """Raise the project's one-line error for a bad term option unless ``condition``."""
    if not condition:
        raise KdlibError(f"{key} = {value!r} is not valid; valid: {valid}")


def options(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword options a term class accepts (its ``__init__`` parameters)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items() if n != "self" and p.kind == p.KEYWORD_ONLY}
