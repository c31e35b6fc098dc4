"""A frozen network's inference form: BatchNorm folded into the convolution before it.

For a network in eval mode, ``BN(conv(x)) = conv'(x)`` with rescaled weights and a bias (torch's
``fuse_conv_bn_eval``); outputs agree to float rounding (~1e-6 relative) and one kernel runs instead of
two. The module tree keeps its names (folded BatchNorms become ``nn.Identity``), so forward hooks on
``layer3`` and the like still fire. Used for a distillation teacher, which never trains.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _foldable(conv, bn) -> bool:
    return isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``convN``/``bnN`` pair and every consecutive
    ``Conv2d, BatchNorm2d`` pair of an ``nn.Sequential`` folded. ``model`` itself is unchanged."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for i in ("1", "2", "3"):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if _foldable(conv, bn):
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
        if isinstance(module, nn.Sequential):
            for j in range(len(module) - 1):
                if _foldable(module[j], module[j + 1]):
                    module[j] = fuse_conv_bn_eval(module[j], module[j + 1])
                    module[j + 1] = nn.Identity()
    return model
