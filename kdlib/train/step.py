"""One forward step: frozen teacher and student with forward hooks on named layers, packed as a ``StepIO``.

Layers are captured with torchdistill's ``ForwardHookManager`` (``io_dict[path]["output"]``) inside a
context manager that always removes its hooks. The teacher runs in eval mode under ``no_grad``.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn
from torchdistill.core.forward_hook import ForwardHookManager

from kdlib.losses.base import StepIO


def rotations(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[4B, C, H, W]``: row ``4b + r`` is image ``b`` rotated by ``r * 90`` degrees."""
    return torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=1).flatten(0, 1)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CPU, float16 on CUDA; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def _float32(io: dict) -> dict:
    return {p: {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()} for p, d in io.items()}


class Forwarder:
    """``with Forwarder(...) as fw: io = fw(images, targets, indices)``: runs the models, returns a StepIO."""

    def __init__(
        self, student: Optional[nn.Module], teacher: Optional[nn.Module], student_layers: Sequence[str],
        teacher_layers: Sequence[str], views: int, device: torch.device, amp: bool = False,
        channels_last: bool = False, teacher_amp: bool = False, teacher_channels_last: bool = False,
    ):
        self.student, self.teacher = student, teacher
        self.student_layers = list(student_layers) if student is not None else []
        self.teacher_layers = list(teacher_layers) if teacher is not None else []
        self.views, self.device, self.amp, self.channels_last = views, device, amp, channels_last
        self.teacher_amp, self.teacher_channels_last = teacher_amp, teacher_channels_last
        self._hooks: list[ForwardHookManager] = []

    def __enter__(self) -> "Forwarder":
        self.student_hooks = ForwardHookManager(self.device)
        self.teacher_hooks = ForwardHookManager(self.device)
        self._hooks = [self.student_hooks, self.teacher_hooks]
        try:
            for path in self.student_layers:
                self.student_hooks.add_hook(self.student, path, requires_input=False, requires_output=True)
            for path in self.teacher_layers:
                self.teacher_hooks.add_hook(self.teacher, path, requires_input=False, requires_output=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for manager in self._hooks:
            manager.clear()
        self._hooks = []

    def __call__(self, images, targets, indices, epoch: int = 0, step: int = 0) -> StepIO:
        images = images.to(self.device, non_blocking=True)
        if self.views == 4:
            images = rotations(images)
        teacher_logits, teacher_io = None, {}
        if self.teacher is not None:
            fmt = torch.channels_last if self.teacher_channels_last else torch.contiguous_format
            with torch.no_grad(), autocast(self.device, self.teacher_amp):
                teacher_logits = self.teacher(images.contiguous(memory_format=fmt)).float()
            teacher_io = _float32(self.teacher_hooks.pop_io_dict())
        logits, student_io = None, {}
        if self.student is not None:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            with autocast(self.device, self.amp):
                logits = self.student(images.contiguous(memory_format=fmt))
            logits = logits.float()
            student_io = _float32(self.student_hooks.pop_io_dict())
        pick = slice(None, None, self.views)
        return StepIO(
            logits=None if logits is None else logits[pick],
            targets=targets.to(self.device, non_blocking=True),
            indices=indices.to(self.device, non_blocking=True),
            teacher_logits=None if teacher_logits is None else teacher_logits[pick],
            student_io=student_io, teacher_io=teacher_io, views=self.views,
            all_logits=logits, all_teacher_logits=teacher_logits, epoch=epoch, step=step,
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool = False, channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``loader`` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        for images, targets, _ in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = model(images)
            logits = logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(1) == targets).sum().item()
            count += targets.numel()
    finally:
        model.train(was_training)
    return loss_sum / max(count, 1), correct / max(count, 1)
