"""CIFAR-stem ResNets for small images (He et al., CVPR 2016, section 4.2).

A 3x3 stem convolution without max-pooling keeps the spatial resolution of 24-64 px inputs, so the last
stage still has a few pixels per unit for dissection. Two families, both with BasicBlocks:

* ``resnet8`` / ``resnet14`` / ``resnet20``: 3 stages of ``n`` blocks (depth ``6n + 2``), widths
  ``w, 2w, 4w`` (``w = 16`` by default, the paper's CIFAR networks);
* ``resnet18`` / ``resnet34``: 4 stages of ``[2, 2, 2, 2]`` / ``[3, 4, 6, 3]`` blocks, widths
  ``w, 2w, 4w, 8w`` (``w = 64`` by default, torchvision's widths).

A ``_w<N>`` suffix sets ``w`` (``resnet18_w8``: widths 8, 16, 32, 64). Stages are named ``layer1`` ..
``layerN`` as in torchvision, so dissection and feature distillation find them by name.
"""

from __future__ import annotations

from torch import nn

from kdlib.models.blocks import BasicBlock, init_resnet
from kdlib.registry import MODELS


class CifarResNet(nn.Module):
    """stem (conv3x3-bn-relu) -> layer1..layerN -> global average pool -> fc."""

    def __init__(self, blocks_per_stage: list[int], width: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        in_ch = width
        for i, blocks in enumerate(blocks_per_stage):
            out_ch = width * 2**i
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", _stage(in_ch, out_ch, blocks, stride))
            in_ch = out_ch
        self.num_stages = len(blocks_per_stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_resnet(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _family(blocks_per_stage: list[int], default_width: int):
    def build(num_classes: int, width: int = default_width) -> CifarResNet:
        return CifarResNet(blocks_per_stage, width, num_classes)

    build.default_width = default_width  # type: ignore[attr-defined]
    build.takes_width = True  # type: ignore[attr-defined]
    return build


for _name, _blocks, _width in (
    ("resnet8", [1, 1, 1], 16),
    ("resnet14", [2, 2, 2], 16),
    ("resnet20", [3, 3, 3], 16),
    ("resnet18", [2, 2, 2, 2], 64),
    ("resnet34", [3, 4, 6, 3], 64),
):
    MODELS.add(_name, _family(_blocks, _width))
