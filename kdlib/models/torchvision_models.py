"""torchvision's ImageNet architectures for real data, built untrained (weights are never downloaded).

Registered as ``tv_<torchvision name>`` (``tv_resnet18``, ``tv_vgg16_bn``, ``tv_mobilenet_v2``, ...), so
they never shadow the CIFAR-stem ``resnet18``. ResNets use :mod:`kdlib.models.blocks` (one ReLU module
per activation); in every model all activations are made out-of-place, which keeps forward hooks exact.
Stages of the ResNets are ``layer1`` .. ``layer4``; VGG and MobileNet layers are named by torchvision's
paths (``features.28``).
"""

from __future__ import annotations

import torchvision
from torchvision.models import resnet as tv_resnet

from kdlib.errors import KdlibError
from kdlib.models.blocks import BasicBlock, Bottleneck, no_inplace
from kdlib.registry import MODELS

_RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}
_OTHERS = ("vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def _refuse_weights(kwargs: dict) -> None:
    if "weights" in kwargs:
        raise KdlibError(
            f"model_kwargs.weights = {kwargs['weights']!r} is not allowed; valid: no weights key "
            "(kdlib never downloads weights; start from a kdlib checkpoint instead)"
        )


def _resnet(tv_name: str):
    block, layers = _RESNETS[tv_name]

    def build(num_classes: int, **kwargs):
        _refuse_weights(kwargs)
        return no_inplace(tv_resnet.ResNet(block, layers, num_classes=num_classes, **kwargs))

    return build


def _other(tv_name: str):
    def build(num_classes: int, **kwargs):
        _refuse_weights(kwargs)
        return no_inplace(torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs))

    return build


for _name in _RESNETS:
    MODELS.add(f"tv_{_name}", _resnet(_name))
for _name in _OTHERS:
    MODELS.add(f"tv_{_name}", _other(_name))
