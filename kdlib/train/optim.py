"""Optimizers and per-epoch learning-rate schedules by name (params ``train.optimizer`` / ``train.schedule``)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from kdlib.errors import KdlibError
from kdlib.params import OptimizerParams, ScheduleParams
from kdlib.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params, lr, momentum=0.9, weight_decay=0.0, nesterov=False):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(params, lr, momentum=None, weight_decay=0.0, nesterov=False):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, lr, momentum=None, weight_decay=0.01, nesterov=False):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@SCHEDULES.register("multistep")
def _multistep(p: ScheduleParams, epochs: int):
    return lambda epoch: p.gamma ** sum(epoch >= m for m in p.milestones)


@SCHEDULES.register("cosine")
def _cosine(p: ScheduleParams, epochs: int):
    return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))


@SCHEDULES.register("constant")
def _constant(p: ScheduleParams, epochs: int):
    return lambda epoch: 1.0


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerParams | Mapping[str, Any], where: str = "optimizer"):
    """An optimizer over ``params`` from :class:`OptimizerParams` or a plain ``{name, lr, ...}`` mapping."""
    spec = dict(spec) if isinstance(spec, Mapping) else {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    name = spec.pop("name")
    try:
        factory = OPTIMIZERS.get(name)
    except KdlibError as exc:
        raise KdlibError(f"{where}: {exc}") from None
    return factory(list(params), **spec)


def build_scheduler(optimizer, spec: ScheduleParams, epochs: int, where: str = "schedule"):
    """A ``LambdaLR`` stepped once per epoch: schedule factor times a linear warm-up."""
    try:
        factor = SCHEDULES.get(spec.name)(spec, epochs)
    except KdlibError as exc:
        raise KdlibError(f"{where}: {exc}") from None
    warmup = spec.warmup_epochs

    def lr_lambda(epoch: int) -> float:
        ramp = min(1.0, (epoch + 1) / (warmup + 1)) if warmup else 1.0
        return ramp * factor(epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def check_names(optimizer: OptimizerParams, schedule: ScheduleParams, where: str) -> None:
    """Fail early, with one line, on an unknown optimizer or schedule name."""
    for registry, name, key in ((OPTIMIZERS, optimizer.name, "optimizer.name"), (SCHEDULES, schedule.name, "schedule.name")):
        if name not in registry:
            raise KdlibError(f"{where}.{key} = {name!r} is unknown; valid: {', '.join(registry.names())}")
