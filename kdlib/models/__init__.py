"""Models built by name: ``build("resnet18_w8", num_classes=24)``. A model knows no loss and no data.

Names (see :func:`names`):

* CIFAR-stem ResNets for small images, :mod:`kdlib.models.resnet_cifar`: ``resnet8``, ``resnet14``,
  ``resnet20``, ``resnet18``, ``resnet34``, each with an optional width suffix ``_w<N>``;
* torchvision's ImageNet architectures, untrained, :mod:`kdlib.models.torchvision_models`:
  ``tv_resnet18``, ``tv_vgg16_bn``, ``tv_mobilenet_v2``, ...

Every activation is an out-of-place module called once per forward, so forward hooks (dissection,
Captum, feature distillation) see exactly one tensor per module. :func:`kdlib.models.inference.fold_batchnorm`
gives a frozen network's inference form (a distillation teacher's).
"""

from __future__ import annotations

import re

from torch import nn

from kdlib.errors import KdlibError
from kdlib.models import resnet_cifar, torchvision_models  # noqa: F401  (registers the models)
from kdlib.registry import MODELS

_WIDTH = re.compile(r"^(?P<base>.+?)_w(?P<width>\d+)$")


def names() -> list[str]:
    """Registered model names; ``[_w<N>]`` marks the ones that take a width suffix."""
    return [f"{n}[_w<N>]" if getattr(MODELS.get(n), "takes_width", False) else n for n in MODELS.names()]


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """A freshly initialised model ``name`` with ``num_classes`` outputs; ``kwargs`` go to its builder."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise KdlibError(f"num_classes = {num_classes!r} is not valid; valid: an integer >= 2")
    base, match = name, _WIDTH.match(name)
    if match and match["base"] in MODELS and getattr(MODELS.get(match["base"]), "takes_width", False):
        base = match["base"]
        width = int(match["width"])
        if width < 1:
            raise KdlibError(f"model {name!r} has width {width}; valid: a width suffix _w<N> with N >= 1")
        if "width" in kwargs:
            raise KdlibError(f"model {name!r} sets the width twice (suffix and model_kwargs.width); valid: one of them")
        kwargs["width"] = width
    if base not in MODELS:
        raise KdlibError(f"unknown model {name!r}; valid: {', '.join(names())}")
    try:
        return MODELS.get(base)(num_classes, **kwargs)
    except TypeError as exc:
        raise KdlibError(f"model {name!r}: model_kwargs {sorted(kwargs)} are not accepted ({exc})") from None
