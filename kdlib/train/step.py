"""One forward step of a session: frozen teachers, then the student network, with named layers captured,
packed as one :class:`~kdlib.losses.StepIO` per network of the session.

Layers are captured with :func:`kdlib.models.nethook.capture_layers` (the student's with the autograd
graph kept, for feature losses) in torchdistill's layout ``{path: {"output": tensor}}``, which its losses
read unchanged. A stacked student (:class:`kdlib.models.stacked.StackedNetwork`) gives ``[B, G, K]``
logits and member-major layer outputs; network ``g`` of the session sees its own slice of each. Each
teacher runs once per batch, in eval mode under ``no_grad``, however many networks distil from it.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from kdlib.losses.base import StepIO
from kdlib.models.nethook import capture_layers
from kdlib.models.stacked import StackedNetwork, member_slices


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


def _capture(model: Optional[nn.Module], layers: Sequence[str], keep_graph: bool):
    if model is None or not layers:
        return contextlib.nullcontext(None)
    return capture_layers(model, list(layers), require_4d=False, detach=not keep_graph)


def member_logits(out: torch.Tensor, members: int) -> list[torch.Tensor]:
    """Per-network logits of a forward: ``[B, G, K]`` from a stack, ``[B, K]`` from one network."""
    return [out] if members == 1 and out.dim() == 2 else list(out.unbind(1))


class Forwarder:
    """``with Forwarder(...) as fw: ios = fw(images, targets, indices)``: one StepIO per network.

    ``member_teachers[g]`` names the teacher (a key of ``teachers``) network ``g`` distils from, or None;
    ``teacher_layers`` maps each teacher to the paths captured from it; ``forward`` is what the student
    forward calls (its DDP wrapper under torchrun; layers are captured on ``student`` itself)."""

    def __init__(
        self, student: Optional[nn.Module], teachers: Mapping[str, nn.Module], member_teachers: Sequence[Optional[str]],
        student_layers: Sequence[str], teacher_layers: Mapping[str, Sequence[str]], views: int, device: torch.device,
        amp: bool = False, channels_last: bool = False, teacher_amp: bool = False, teacher_channels_last: bool = False,
        forward: Optional[nn.Module] = None,
    ):
        self.student, self.member_teachers = student, list(member_teachers)
        self.forward = forward if forward is not None else student  # what the student forward calls (a DDP wrapper)
        used = {t for t in self.member_teachers if t is not None}
        self.teachers = {k: m for k, m in teachers.items() if k in used}
        self.student_layers = list(student_layers) if student is not None else []
        self.teacher_layers = {k: list(teacher_layers.get(k, ())) for k in self.teachers}
        self.views, self.device, self.amp, self.channels_last = views, device, amp, channels_last
        self.teacher_amp, self.teacher_channels_last = teacher_amp, teacher_channels_last
        self._stack = contextlib.ExitStack()

    @property
    def members(self) -> int:
        return len(self.member_teachers)

    def __enter__(self) -> "Forwarder":
        body = self.student.body if isinstance(self.student, StackedNetwork) else self.student
        with contextlib.ExitStack() as stack:
            self.student_capture = stack.enter_context(_capture(body, self.student_layers, keep_graph=True))
            self.teacher_captures = {k: stack.enter_context(_capture(m, self.teacher_layers[k], keep_graph=False))
                                     for k, m in self.teachers.items()}
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _teacher(self, key: str, images: torch.Tensor):
        fmt = torch.channels_last if self.teacher_channels_last else torch.contiguous_format
        with torch.no_grad(), autocast(self.device, self.teacher_amp):
            logits = self.teachers[key](images.contiguous(memory_format=fmt)).float()
        capture = self.teacher_captures[key]
        return logits, (_float32(capture.io_dict()) if capture is not None else {})

    def _student(self, images: torch.Tensor):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with autocast(self.device, self.amp):
            out = self.forward(images.contiguous(memory_format=fmt))
        logits = [z.float() for z in member_logits(out, self.members)]
        io = _float32(self.student_capture.io_dict()) if self.student_capture is not None else {}
        per_member = [{p: {k: member_slices(v, self.members, 1)[g] for k, v in d.items()} for p, d in io.items()}
                      for g in range(self.members)] if self.members > 1 else [io]
        return logits, per_member

    def __call__(self, images, targets, indices, epoch: int = 0, step: int = 0) -> list[StepIO]:
        images = images.to(self.device, non_blocking=True)
        if self.views == 4:
            images = rotations(images)
        teacher_out = {k: self._teacher(k, images) for k in self.teachers}
        logits, student_io = ([None] * self.members, [{}] * self.members)
        if self.student is not None:
            logits, student_io = self._student(images)
        targets, indices = targets.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True)
        pick = slice(None, None, self.views)
        ios = []
        for g, key in enumerate(self.member_teachers):
            t_logits, t_io = teacher_out[key] if key is not None else (None, {})
            ios.append(StepIO(
                logits=None if logits[g] is None else logits[g][pick], targets=targets, indices=indices,
                teacher_logits=None if t_logits is None else t_logits[pick], student_io=student_io[g], teacher_io=t_io,
                views=self.views, all_logits=logits[g], all_teacher_logits=t_logits, epoch=epoch, step=step,
            ))
        return ios


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, amp: bool = False, members: int = 1) -> list[tuple[float, float]]:
    """Mean cross-entropy and top-1 accuracy of each of ``members`` networks (a stack, or one network) on
    ``batches`` of ``(images, targets)`` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(members, 2, dtype=torch.float64, device=device)
    count = 0
    try:
        for images, targets in batches:
            with autocast(device, amp):
                out = model(images)
            for g, logits in enumerate(member_logits(out, members)):
                logits = logits.float()
                sums[g, 0] += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
                sums[g, 1] += (logits.argmax(1) == targets).sum()
            count += targets.numel()
    finally:
        model.train(was_training)
    return [(loss / max(count, 1), correct / max(count, 1)) for loss, correct in sums.tolist()]
