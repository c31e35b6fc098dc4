"""Residual blocks whose ReLUs are hook-safe: not in-place, and each module called once per forward.

torchvision's blocks call one in-place ``self.relu`` twice (three times in a Bottleneck). A forward hook
or a Captum rule on that module then sees two different tensors, and an in-place ReLU overwrites a
tensor another hook already captured. These subclasses keep torchvision's parameters and state-dict keys
(ReLUs have none) and give each activation its own module: ``relu`` (after bn1) and ``relu2``
(after the residual sum), plus ``relu3`` in the Bottleneck.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv_resnet


class BasicBlock(tv_resnet.BasicBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(tv_resnet.Bottleneck):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def init_resnet(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal (fan_out) convolutions, BatchNorm weight 1 bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def no_inplace(model: nn.Module) -> nn.Module:
    """Switch every activation with an ``inplace`` flag (ReLU, ReLU6, Hardswish, ...) to out-of-place."""
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(getattr(m, "inplace"), bool):
            m.inplace = False
    return model
