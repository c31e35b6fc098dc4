"""The training objective: a weighted sum of registered loss terms, built from params.

``loss: [{name: ce, weight: 0.1}, {name: kd, weight: 0.9, temperature: 4}]`` becomes
``0.1 * CE + 0.9 * KD_T=4``. Every term's weight is explicit; no term hides a second weight of its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kdlib.errors import KdlibError
from kdlib.losses.base import LossTerm, SetupContext, Stage, StepIO, options
from kdlib.registry import LOSSES


def build_term(spec: Mapping[str, Any], where: str = "loss") -> LossTerm:
    """One term from ``{name, weight, **options}``; unknown or missing options give one clear line."""
    name = spec.get("name")
    try:
        cls = LOSSES.get(name)
    except KdlibError as exc:
        raise KdlibError(f"{where}: {exc}") from None
    where = f"{where} ({name})"
    accepted = options(cls)
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight")}
    for key in kwargs:
        if key not in accepted:
            valid = ", ".join(["weight", *accepted]) if accepted else "weight only"
            raise KdlibError(f"{where}: {key!r} is not an option of {name}; valid: {valid}")
    for key, param in accepted.items():
        if param.default is param.empty and key not in kwargs:
            raise KdlibError(f"{where}: option {key!r} is missing; it is required")
    try:
        term = cls(**kwargs)
    except KdlibError as exc:
        raise KdlibError(f"{where}: {exc}") from None
    term.where = where
    return term


class Objective(nn.Module):
    """Weighted sum of terms. ``forward`` returns the total and each term's unweighted value."""

    def __init__(self, terms: Sequence[LossTerm], weights: Sequence[float], labels: Sequence[str]):
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.weights = [float(w) for w in weights]
        self.labels = list(labels)

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def views(self) -> int:
        views = {t.views for t in self.terms} - {1}
        if len(views) > 1:
            raise KdlibError(f"loss terms ask for different view counts {sorted(views)}; valid: at most one kind")
        return views.pop() if views else 1

    def student_layers(self) -> list[str]:
        return sorted({p for t in self.terms for p in t.student_layers()})

    def teacher_layers(self) -> list[str]:
        return sorted({p for t in self.terms for p in t.teacher_layers()})

    def setup(self, ctx: SetupContext) -> None:
        for term in self.terms:
            if term.needs_teacher and ctx.teacher is None:
                raise KdlibError(
                    f"{term.where} needs a teacher; valid: give the run teacher: {{run: NAME}} or {{checkpoint: PATH}}"
                )
            term.setup(ctx)

    def stages(self) -> list[Stage]:
        return [s for t in self.terms for s in t.stages()]

    @property
    def has_stages(self) -> bool:
        """Whether any term has a pre-training stage (known before set-up)."""
        return any(t.has_stages() for t in self.terms)

    def forward(self, io: StepIO) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {}
        total = None
        originals = io.originals()
        for label, weight, term in zip(self.labels, self.weights, self.terms):
            value = term(io if term.views > 1 else originals)
            values[label] = value.detach()
            if weight != 0:
                total = weight * value if total is None else total + weight * value
        if total is None:  # every weight is 0: a valid, if useless, objective
            total = io.logits.sum() * 0.0
        return total, values


def build_objective(specs: Sequence[Mapping[str, Any]], where: str = "loss") -> Objective:
    """The :class:`Objective` of a run's ``loss`` list (each ``{name, weight, **options}``)."""
    terms, weights, labels = [], [], []
    names = [s.get("name") for s in specs]
    for i, spec in enumerate(specs):
        terms.append(build_term(spec, f"{where}[{i}]"))
        weights.append(spec.get("weight", 1.0))
        name = spec.get("name")
        labels.append(name if names.count(name) == 1 else f"{name}{i}")
    return Objective(terms, weights, labels)
