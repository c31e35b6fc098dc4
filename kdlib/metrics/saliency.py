"""Attribution maps by name, from Captum: ``attribute(model, images, labels, spec)``.

A method is written in params as a name or a mapping ``{name: ..., <option>: ...}`` and parsed once by
:func:`parse_method` into an :class:`AttributionSpec`. Names and the Captum class each stands for:

=====================  ===========================  ==============================================
name                   Captum                       kdlib's defaults
=====================  ===========================  ==============================================
``saliency``           ``Saliency``                 ``abs: true`` (Captum's): |d output / d input|
``gradient``           ``Saliency``                 ``abs: false``: the signed input gradient
``input_x_gradient``   ``InputXGradient``
``integrated_gradients`` ``IntegratedGradients``    ``n_steps: 16``, baseline 0 (the mean image)
``guided_backprop``    ``GuidedBackprop``
``layer_gradcam``      ``LayerGradCam`` at ``layer`` ``relu_attributions: true`` (Grad-CAM's ReLU);
                                                    upsampled to the image (``upsample: bilinear``)
=====================  ===========================  ==============================================

Options every method takes: ``output`` (``logit``: the target class's logit, as Captum attributes it;
``loss``: the cross-entropy loss of the target, attributed as Captum's output ``-log_softmax``, so a
``gradient`` is exactly the loss's input gradient), ``target`` (``label``: the true class; ``prediction``:
the network's top class). Any other key is passed to the Captum method's ``attribute`` and must be one
of its parameters. Maps come back as float32 ``[N, C, H, W]`` on the CPU (C = 3 for input methods, 1 for
layer methods), computed in batches with the network in eval mode.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from captum import attr as captum_attr
from torch import nn

from kdlib.errors import KdlibError
from kdlib.metrics.checks import check_maps
from kdlib.models.nethook import layer_names


@dataclass(frozen=True)
class MethodInfo:
    captum_class: type
    layer: bool = False  # attributes a layer (needs ``layer``), upsampled to the input
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodInfo] = {
    "saliency": MethodInfo(captum_attr.Saliency, defaults={"abs": True}),
    "gradient": MethodInfo(captum_attr.Saliency, defaults={"abs": False}),
    "input_x_gradient": MethodInfo(captum_attr.InputXGradient),
    "integrated_gradients": MethodInfo(captum_attr.IntegratedGradients, defaults={"n_steps": 16}),
    "guided_backprop": MethodInfo(captum_attr.GuidedBackprop),
    "layer_gradcam": MethodInfo(captum_attr.LayerGradCam, layer=True, defaults={"relu_attributions": True}),
}
OUTPUTS = ("logit", "loss")
TARGETS = ("label", "prediction")
UPSAMPLE = ("bilinear", "nearest")
_NOT_OPTIONS = {"self", "inputs", "target", "additional_forward_args", "return_convergence_delta",
                "attribute_to_layer_input", "grad_kwargs", "attr_dim_summation"}


@dataclass(frozen=True)
class AttributionSpec:
    """One attribution method with every option resolved: what a map is made with, and its label."""

    name: str
    output: str = "logit"
    target: str = "label"
    layer: Optional[str] = None
    upsample: str = "bilinear"
    options: tuple[tuple[str, Any], ...] = ()  # Captum ``attribute`` keyword arguments, sorted

    @property
    def label(self) -> str:
        """``gradient[output=loss]``: the name and every option that differs from kdlib's defaults."""
        info = METHODS[self.name]
        extra = [("output", self.output)] if self.output != "logit" else []
        extra += [("target", self.target)] if self.target != "label" else []
        extra += [("layer", self.layer)] if info.layer else []
        extra += [(k, v) for k, v in self.options if info.defaults.get(k, object()) != v]
        return self.name + (f"[{','.join(f'{k}={v}' for k, v in extra)}]" if extra else "")

    def plain(self) -> dict[str, Any]:
        """The spec as plain data (for cache keys and manifests)."""
        return {"name": self.name, "output": self.output, "target": self.target, "layer": self.layer,
                "upsample": self.upsample, "options": dict(self.options)}


def _captum_options(info: MethodInfo) -> list[str]:
    params = inspect.signature(info.captum_class.attribute).parameters
    return sorted(p for p in params if p not in _NOT_OPTIONS)


def parse_method(method: str | dict[str, Any], where: str = "method", default_layer: Optional[str] = None) -> AttributionSpec:
    """A params method entry (a name or ``{name, ...options}``) as a checked :class:`AttributionSpec`."""
    entry = {"name": method} if isinstance(method, str) else dict(method)
    name = entry.pop("name", None)
    if name not in METHODS:
        raise KdlibError(f"{where} = {name!r} is not an attribution method; valid: {', '.join(METHODS)}")
    info = METHODS[name]
    kdlib_keys = {"output": OUTPUTS, "target": TARGETS, **({"upsample": UPSAMPLE} if info.layer else {})}
    fixed = {"upsample": UPSAMPLE[0], **{k: entry.pop(k, choices[0]) for k, choices in kdlib_keys.items()}}
    for key, choices in kdlib_keys.items():
        if fixed[key] not in choices:
            raise KdlibError(f"{where}.{key} = {fixed[key]!r} is not valid; valid: {', '.join(choices)}")
    layer = entry.pop("layer", None)
    if info.layer:
        layer = layer if layer is not None else default_layer
        if not isinstance(layer, str):
            raise KdlibError(f"{where} ({name}) has no layer; valid: a layer name such as layer4")
    elif layer is not None:
        raise KdlibError(f"{where}.layer = {layer!r} is not an option of {name}; valid: a layer only for layer_gradcam")
    allowed = _captum_options(info)
    for key in entry:
        if key not in allowed:
            valid = ["output", "target"] + (["layer", "upsample"] if info.layer else []) + allowed
            raise KdlibError(f"{where}.{key} is not an option of {name} ({info.captum_class.__name__}); valid: {', '.join(valid)}")
    options = {**info.defaults, **entry}
    return AttributionSpec(name, fixed["output"], fixed["target"], layer, fixed["upsample"], tuple(sorted(options.items())))


def gradient_form(spec: AttributionSpec) -> Optional[tuple[AttributionSpec, str]]:
    """``(gradient spec, how)`` when ``spec``'s map follows from the signed input gradient of the same
    output and target: ``saliency`` (abs, Captum's default) is ``|gradient|``, ``input_x_gradient`` is
    ``input * gradient``, exactly as Captum computes them; so one backward pass serves all three."""
    plain = {"saliency": (("abs", True),), "input_x_gradient": ()}
    if spec.name not in plain or spec.options != plain[spec.name]:
        return None
    base = AttributionSpec("gradient", spec.output, spec.target, options=(("abs", False),))
    return base, ("abs" if spec.name == "saliency" else "times_input")


def _forward(model: nn.Module, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if output == "loss":
        return lambda x: -F.log_softmax(model(x), dim=1)  # [N, classes]; entry y is CE(x, y)
    return model


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        raise KdlibError(f"layer {layer!r} is not in {type(model).__name__}; valid: {', '.join(layer_names(model))}")
    return modules[layer]


def explainer(model: nn.Module, spec: AttributionSpec):
    """The Captum attribution object for ``spec`` on ``model`` (its layer checked)."""
    info = METHODS[spec.name]
    forward = _forward(model, spec.output)
    if info.layer:
        return info.captum_class(forward, _module(model, spec.layer))
    if info.captum_class is captum_attr.GuidedBackprop:
        if spec.output != "logit":
            raise KdlibError(f"guided_backprop.output = {spec.output!r} is not supported; valid: logit (it needs the model itself)")
        return info.captum_class(model)
    return info.captum_class(forward)


def targets_for(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    if target == "label":
        return labels
    with torch.no_grad():
        return model(images).argmax(dim=1)


def attribute(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: AttributionSpec,
              batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Maps of ``spec`` for every image: float32 ``[N, C, H, W]`` on the CPU, checked finite."""
    model = model.eval().to(device)
    method = explainer(model, spec)
    info = METHODS[spec.name]
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).clone().requires_grad_(True)
        y = targets_for(model, x, labels[start:start + batch_size].to(device), spec.target)
        maps = method.attribute(x, target=y, **dict(spec.options))
        if info.layer:
            maps = captum_attr.LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), spec.upsample)
        out.append(maps.detach().float().cpu())
    model.zero_grad(set_to_none=True)
    maps = torch.cat(out) if out else torch.zeros(0, 1, *images.shape[-2:])
    check_maps(maps, f"{spec.label} maps")
    return maps
