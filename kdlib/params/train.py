"""The ``train`` section and the runs (``teachers`` and ``students``): what one network's training is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from kdlib.errors import KdlibError
from kdlib.params.validate import check_plain_name, knob


@dataclass(frozen=True)
class OptimizerParams:
    """``name``: sgd | adam | adamw (kdlib.train.optim). Han et al.: SGD 0.1, momentum 0.9, wd 1e-4 (ImageNet)."""

    name: str = "sgd"
    lr: float = knob(0.1, gt=0.0, le=100.0)
    momentum: float = knob(0.9, ge=0.0, lt=1.0, doc="sgd only")
    weight_decay: float = knob(5e-4, ge=0.0, le=1.0)
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleParams:
    """Per-epoch learning-rate factor. ``name``: multistep (x ``gamma`` at each milestone) | cosine | constant;
    a linear warm-up over ``warmup_epochs`` multiplies any of them."""

    name: str = "multistep"
    milestones: list[int] = knob(default_factory=lambda: [30, 45, 55], doc="epochs after which the lr drops")
    gamma: float = knob(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = knob(0, ge=0)
    per_step: bool = knob(False, doc="evaluate the schedule at every step (fractional epochs), not once per epoch")


@dataclass(frozen=True)
class TrainParams:
    """Sizes are bounded (epochs, batch, image size, workers) so that a typo fails at once instead of
    allocating until the machine runs out of memory.

    ``batches``: ``memory`` holds the training images as one uint8 tensor and augments whole batches
    with tensor ops (the fast path); ``loader`` decodes PIL images through a ``DataLoader`` with
    torchvision transforms (kdlib 0.1's pipeline, and the one for data too large to hold in memory).
    ``threads`` is the number of torch threads a training uses: results depend on it (float sums are
    split differently), so it is a param, not a property of the machine. ``stack``: up to this many
    students of one seed that share the architecture and this train section are trained as one stacked
    network (:mod:`kdlib.models.stacked`); 1 trains every network alone.
    """

    epochs: int = knob(60, ge=1, le=10_000)
    batch_size: int = knob(128, ge=1, le=65_536)
    optimizer: OptimizerParams = field(default_factory=OptimizerParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    augment: bool = knob(True, doc="random crop (reflect padding) and horizontal flip")
    image_size: Optional[int] = knob(None, ge=8, le=1024, doc="None: the world's image size (required for real data)")
    amp: bool = knob(False, doc="student in mixed precision: bfloat16 on CPU, float16 + loss scaling on CUDA")
    channels_last: bool = knob(False, doc="student in channels_last memory format")
    teacher_amp: bool = knob(False, doc="teacher forward in bfloat16 (CPU) / float16 (CUDA): soft targets change by rounding")
    deterministic: bool = knob(True, doc="torch.use_deterministic_algorithms (warn only) and no cudnn autotuning")
    cache_images: bool = knob(True, doc="decode the training images once and keep them in memory")
    num_workers: int = knob(0, ge=0, le=64, doc="DataLoader workers (batches: loader only)")
    batches: Literal["memory", "loader"] = knob("memory", doc="memory: uint8 tensor + batch augmentation; loader: DataLoader")
    threads: int = knob(1, ge=1, le=256, doc="torch intra-op threads of a training (results depend on it)")
    stack: int = knob(1, ge=1, le=16, doc="students of one seed trained as one stacked network, at most")
    device: str = knob("auto", doc="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        # A milestone m lowers the lr from epoch m + 1 on, so only 1 <= m < epochs changes anything.
        late = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
        if self.schedule.name == "multistep" and late:
            raise KdlibError(
                f"schedule.milestones = {self.schedule.milestones!r} has {late[0]}, outside the {self.epochs} epochs; "
                f"valid: epochs from 1 to {self.epochs - 1}"
            )
        if self.schedule.warmup_epochs >= self.epochs:
            raise KdlibError(
                f"schedule.warmup_epochs = {self.schedule.warmup_epochs} is not valid; valid: fewer than the {self.epochs} epochs"
            )


@dataclass(frozen=True)
class TeacherRef:
    """Where a distillation run gets its teacher: a teacher run of this file, or any checkpoint."""

    run: Optional[str] = None
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.checkpoint is None):
            raise KdlibError(
                f"= {{run: {self.run!r}, checkpoint: {self.checkpoint!r}}} is not valid; "
                "valid: exactly one of run (a teacher's name in this file) or checkpoint (a path)"
            )


@dataclass(frozen=True)
class RunParams:
    """One network to train. ``loss`` is a list of weighted terms, e.g. ``{name: kd, weight: 0.9, temperature: 4}``;
    keys other than ``name`` and ``weight`` are passed to the loss builder, which validates them. ``name``
    becomes a folder name, so it must be a plain name."""

    name: str
    model: str
    loss: list[dict[str, Any]] = knob(default_factory=lambda: [{"name": "ce", "weight": 1.0}])
    model_kwargs: dict[str, Any] = knob(default_factory=dict)
    teacher: Optional[TeacherRef] = None
    train: dict[str, Any] = knob(default_factory=dict, doc="overrides of the study's train section")

    def __post_init__(self) -> None:
        check_plain_name(self.name, "name")
        if not self.loss:
            raise KdlibError("loss = [] is not valid; valid: a list of at least one term")
        for i, term in enumerate(self.loss):
            if "name" not in term or not isinstance(term["name"], str):
                raise KdlibError(f"loss[{i}] = {term!r} is not valid; valid: a mapping with a string 'name'")
            weight = term.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
                raise KdlibError(f"loss[{i}].weight = {weight!r} is not valid; valid: a finite number >= 0")
