"""What every measure shares: hyper-parameters in ``__init__``, data in ``__call__``, declared directions.

A measure (Quantus's style) is built with its hyper-parameters, which are exactly the fields of its
section in :mod:`kdlib.params.metrics` and are validated by it (``FiveBand(soft_steps=11)``, or
``FiveBand(params)``); ``get_params()`` gives them back as plain data for the run manifest and cache
keys. Calling it with data returns ``{setting: {score: value}}``: a setting is an attribution method's
label (``gradient[output=loss]``), a layer, a k, ...; ``directions[score]`` says whether a higher or a
lower value is better, or ``none`` for a descriptive quantity (an entropy, an area). :meth:`evaluate`
takes the :class:`MetricInputs` a study step assembles, so the step handles every measure alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from kdlib.digest import json_digest, state_digest
from kdlib.errors import KdlibError
from kdlib.metrics import saliency
from kdlib.params.validate import from_dict, to_dict

Scores = dict[str, dict[str, float]]
DIRECTIONS = ("higher", "lower", "none")


class MapCache:
    """Attribution maps of one data set, computed once per (network weights, method) and reused by every
    measure of a step (Five-Band and object-centricity ask for the same saliency maps)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256, device: Any = "cpu"):
        self.images, self.labels, self.batch_size, self.device = images, labels, batch_size, device
        self._maps: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, model: nn.Module, spec: saliency.AttributionSpec) -> torch.Tensor:
        """``spec``'s maps of ``model`` (``saliency`` and ``input_x_gradient`` from the cached gradient)."""
        key = (state_digest(model), json_digest(spec.plain()))
        if key not in self._maps:
            derived = saliency.gradient_form(spec)
            if derived is not None:
                gradient = self.get(model, derived[0])
                self._maps[key] = gradient.abs() if derived[1] == "abs" else gradient * self.images
            else:
                self._maps[key] = saliency.attribute(model, self.images, self.labels, spec, self.batch_size, self.device)
        return self._maps[key]

    @torch.no_grad()
    def outputs(self, model: nn.Module) -> torch.Tensor:
        """``model``'s logits on the images (float32 [N, classes], CPU), computed once per weights."""
        key = (state_digest(model), "logits")
        if key not in self._maps:
            model = model.eval().to(self.device)
            parts = [model(self.images[i:i + self.batch_size].to(self.device)).float().cpu()
                     for i in range(0, len(self.images), self.batch_size)]
            self._maps[key] = torch.cat(parts)
        return self._maps[key]

    def keep(self, weights: set) -> None:
        """Forget the maps of every network whose weights digest is not in ``weights``."""
        self._maps = {k: v for k, v in self._maps.items() if k[0] in weights}


@dataclass
class MetricInputs:
    """Everything a study step can hand a measure for one network; a measure reads what it needs.

    ``data``: evaluation images, labels, masks (:class:`kdlib.data.masks.MaskedTensors`); ``train``:
    the training split (DiffROAR); ``reference``: the teacher a network is compared with (None for that
    teacher itself); ``dissection``: the network's :class:`~kdlib.dissect.DissectResult` (or None);
    ``retrain``: DiffROAR's retraining callable; ``default_layer``: the layer methods such as
    ``layer_gradcam`` use when params name none (the study's last dissected layer)."""

    model: nn.Module
    data: Any
    maps: MapCache
    hierarchy: Any = None
    reference: Optional[nn.Module] = None
    dissection: Any = None
    train: Any = None
    retrain: Optional[Callable[..., float]] = None
    default_layer: Optional[str] = None
    layers: list[str] = field(default_factory=list)
    cache_dir: Any = None
    progress: bool = False


def inputs_for(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: Optional[torch.Tensor] = None,
               batch_size: int = 256, device: Any = "cpu", **extra: Any) -> MetricInputs:
    """:class:`MetricInputs` for data given directly (what a measure's ``__call__`` builds)."""
    data = SimpleNamespace(images=images, labels=labels, masks=masks)
    return MetricInputs(model=model, data=data, maps=MapCache(images, labels, batch_size, device), **extra)


class Metric:
    """Base class: subclasses set ``name``, ``params_class``, ``directions`` and implement ``evaluate``."""

    name: ClassVar[str]
    params_class: ClassVar[type]
    directions: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bad = {k: v for k, v in cls.directions.items() if v not in DIRECTIONS}
        if bad:
            raise TypeError(f"{cls.__name__}.directions {bad}: each must be one of {DIRECTIONS}")  # a bug in kdlib

    def __init__(self, params: Any = None, **hyper: Any):
        if params is not None and hyper:
            raise KdlibError(f"{self.name}: params and keyword hyper-parameters {sorted(hyper)} together; valid: one of them")
        if params is None:
            params = from_dict(self.params_class, hyper, f"metrics.{self.name}")
        elif not isinstance(params, self.params_class):
            raise KdlibError(f"{self.name}: params of type {type(params).__name__}; valid: {self.params_class.__name__}")
        self.params = params

    def get_params(self) -> dict[str, Any]:
        """The measure's name and every hyper-parameter, as plain data."""
        return {"name": self.name, **to_dict(self.params)}

    def direction(self, score: str) -> str:
        """``higher``, ``lower`` or ``none`` (descriptive) for a score this measure returns."""
        try:
            return self.directions[score]
        except KeyError:
            raise KdlibError(f"{self.name} has no score {score!r}; valid: {', '.join(self.directions)}") from None

    def methods(self, methods: list, default_layer: Optional[str] = None) -> list[saliency.AttributionSpec]:
        specs = [saliency.parse_method(m, f"metrics.{self.name}.methods[{i}]", default_layer) for i, m in enumerate(methods)]
        labels = [s.label for s in specs]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise KdlibError(f"metrics.{self.name}.methods names {dup[0]!r} twice; valid: distinct methods")
        return specs

    def evaluate(self, inputs: MetricInputs) -> Scores:
        raise NotImplementedError


def mean_finite(values: torch.Tensor) -> float:
    """Mean over the finite entries (NaN where none is finite: a quantity no image defines)."""
    values = values.double()
    ok = torch.isfinite(values)
    return float(values[ok].mean()) if bool(ok.any()) else math.nan
