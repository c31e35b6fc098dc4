"""Optimizers and learning-rate schedules by name (params ``train.optimizer`` / ``train.schedule``); a schedule's
factor is a function of the (possibly fractional) epoch."""

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
    return lambda epoch: p.gamma ** sum(epoch >= m for m in p.milestones)  # fractional epochs: the same drops


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


def build_scheduler(optimizer, spec: ScheduleParams, epochs: int, where: str = "schedule", steps_per_epoch: int = 1):
    """A ``LambdaLR``: schedule factor times a linear warm-up. Stepped once per epoch, or, with
    ``spec.per_step``, after every optimizer step, the factor then taken at the fractional epoch
    ``step / steps_per_epoch`` (the warm-up reaching 1 after ``warmup_epochs`` epochs' steps)."""
    try:
        factor = SCHEDULES.get(spec.name)(spec, epochs)
    except KdlibError as exc:
        raise KdlibError(f"{where}: {exc}") from None
    warmup = spec.warmup_epochs

    def per_epoch(epoch: int) -> float:
        ramp = min(1.0, (epoch + 1) / (warmup + 1)) if warmup else 1.0
        return ramp * factor(epoch)

    def per_step(step: int) -> float:
        ramp = min(1.0, (step + 1) / (warmup * steps_per_epoch)) if warmup else 1.0
        return ramp * factor(step / steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, per_step if spec.per_step else per_epoch)


def check_names(optimizer: OptimizerParams, schedule: ScheduleParams, where: str) -> None:
    """Fail early, with one line, on an unknown optimizer or schedule name."""
    for registry, name, key in ((OPTIMIZERS, optimizer.name, "optimizer.name"), (SCHEDULES, schedule.name, "schedule.name")):
        if name not in registry:
            raise KdlibError(f"{where}.{key} = {name!r} is unknown; valid: {', '.join(registry.names())}")


def member_optimizer_state(state: dict, stacked: int, size: int, own: list[range], g: int) -> dict:
    """Network ``g``'s share of the state of one optimizer over a stack: the optimizer's parameters are the
    stacked network's ``stacked`` tensors, then each network's own (loss-term) parameters at indices
    ``own[g]``. The result is the state an optimizer over network ``g`` alone (its network's parameters,
    then its own) would have: every per-element entry cut to ``g``'s block, 0-dim entries (a step
    count) copied. Exact for elementwise optimizers (SGD with momentum and weight decay, Adam, AdamW)."""
    from kdlib.models.stacked import member_slices

    keep = list(range(stacked)) + list(own[g])
    out = {}
    for new, old in enumerate(keep):
        if old in state["state"]:
            cut = old < stacked
            out[new] = {k: (member_slices(v, size)[g].clone() if cut and torch.is_tensor(v) else v)
                        for k, v in state["state"][old].items()}
    (group,) = state["param_groups"]
    return {"state": out, "param_groups": [{**group, "params": list(range(len(keep)))}]}


def stacked_optimizer_state(members: list[dict], stacked: int, own: list[range]) -> dict:
    """The inverse of :func:`member_optimizer_state`: one optimizer state from every network's share."""
    state = {}
    for i in range(stacked):
        entries = [m["state"].get(i) for m in members]
        if entries[0] is None:
            continue
        state[i] = {k: (torch.cat([e[k] for e in entries]) if torch.is_tensor(v) and v.dim() > 0 else v)
                    for k, v in entries[0].items()}
    for g, m in enumerate(members):
        for j, index in enumerate(own[g]):
            if stacked + j in m["state"]:
                state[index] = m["state"][stacked + j]
    group = {k: v for k, v in members[0]["param_groups"][0].items() if k != "params"}
    total = stacked + sum(len(r) for r in own)
    return {"state": state, "param_groups": [{**group, "params": list(range(total))}]}
