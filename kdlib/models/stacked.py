"""Several networks of one architecture as one stacked network: grouped convolutions, one forward.

At 32 px a small ResNet's training step is mostly per-operator overhead, so ``G`` networks cost far
less as one network with ``G`` times the channels than as ``G`` networks in turn. The stacked network
is a copy of the architecture in which every ``Conv2d`` has ``G`` times the channels and ``G`` times
the groups, every ``BatchNorm2d`` ``G`` times the features, and every ``Linear`` is a batched matrix
product (:class:`StackedLinear`); the input image is repeated once per member. Member ``g`` owns
channel block ``g`` of every layer (member-major along dim 1), so the members never mix: their outputs
are those of the ``G`` networks run alone, up to float rounding (the kernels sum in another order).

Every parameter and buffer of the stack is the members' tensors concatenated along dim 0 (0-dim
buffers such as ``num_batches_tracked`` are shared, as the members step together), so
:meth:`StackedNetwork.member_state` gives back an ordinary state dict of member ``g`` and
:meth:`StackedNetwork.load_member_states` the reverse. :func:`member_slices` cuts any layer output or
per-parameter tensor (an optimizer's momentum) the same way.

Layer paths are those of the architecture: hooks go on ``stacked.body`` (``body.get_submodule("layer3")``).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from kdlib.errors import KdlibError

# Modules that act on each channel (or pass the tensor through), so member blocks stay apart.
CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Identity,
               nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.Dropout)
PROBE_TOLERANCE = 1e-4  # relative: the stack must reproduce each member's float32 logits at set-up


class StackedLinear(nn.Module):
    """``G`` linear maps on member-major input ``[B, G * in]`` -> ``[B, G * out]``; weight ``[G * out, in]``."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.size = len(linears)
        self.in_features, self.out_features = linears[0].in_features, linears[0].out_features
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]))
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears])) if linears[0].bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, batch = self.size, x.shape[0]
        weight = self.weight.view(g, self.out_features, self.in_features).transpose(1, 2)
        x = x.reshape(batch, g, self.in_features).transpose(0, 1)  # [G, B, in]
        if self.bias is None:
            out = torch.bmm(x, weight)
        else:
            out = torch.baddbmm(self.bias.view(g, 1, self.out_features), x, weight)
        return out.transpose(0, 1).reshape(batch, g * self.out_features)


def _stacked_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c, g = convs[0], len(convs)
    out = nn.Conv2d(c.in_channels * g, c.out_channels * g, c.kernel_size, c.stride, c.padding, c.dilation,
                    c.groups * g, c.bias is not None, c.padding_mode)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _stacked_batchnorm(norms: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = norms[0]
    out = nn.BatchNorm2d(b.num_features * len(norms), b.eps, b.momentum, b.affine, b.track_running_stats)
    out.load_state_dict(_concat([m.state_dict() for m in norms]))
    return out


def _stacked_module(modules: Sequence[nn.Module], path: str, arch: str) -> nn.Module:
    first = modules[0]
    if type(first) is nn.Conv2d:
        return _stacked_conv(modules)
    if type(first) is nn.BatchNorm2d:
        return _stacked_batchnorm(modules)
    if type(first) is nn.Linear:
        return StackedLinear(modules)
    if isinstance(first, CHANNELWISE):
        return copy.deepcopy(first)
    raise KdlibError(
        f"model {arch} cannot be stacked: layer {path!r} is a {type(first).__name__}; "
        "valid: train.stack: 1, or a model of Conv2d, BatchNorm2d, Linear, ReLU and pooling layers"
    )


def _concat(states: Sequence[dict]) -> dict:
    return {k: (v if v.dim() == 0 else torch.cat([s[k] for s in states])) for k, v in states[0].items()}


def member_slices(tensor: torch.Tensor, size: int, dim: int = 0) -> tuple[torch.Tensor, ...]:
    """The ``size`` member blocks of a stacked tensor along ``dim`` (views); a 0-dim tensor is shared."""
    if tensor.dim() == 0:
        return (tensor,) * size
    if tensor.shape[dim] % size:
        raise KdlibError(f"a tensor of shape {tuple(tensor.shape)} does not split into {size} members along dim {dim}")
    return tensor.chunk(size, dim)


class StackedNetwork(nn.Module):
    """``networks`` (same architecture, same shapes) as one module: ``[B, 3, H, W] -> [B, G, K]`` logits."""

    def __init__(self, networks: Sequence[nn.Module], arch: str = "the model"):
        super().__init__()
        if len(networks) < 2:
            raise KdlibError(f"a stack of {len(networks)} network(s); valid: 2 or more (one network trains alone)")
        self.size = len(networks)
        self.arch = arch
        keys = [list(n.state_dict()) for n in networks]
        if any(k != keys[0] for k in keys) or any(
            a.shape != b.shape for n in networks[1:] for a, b in zip(networks[0].state_dict().values(), n.state_dict().values())
        ):
            raise KdlibError(f"networks of different architectures cannot be stacked; valid: {self.size} copies of {arch}")
        self.body = copy.deepcopy(networks[0])
        named = [dict(n.named_modules()) for n in networks]
        for path, module in list(self.body.named_modules()):
            if not path or list(module.children()):
                continue  # containers: their children are replaced
            parent, _, leaf = path.rpartition(".")
            setattr(self.body.get_submodule(parent) if parent else self.body, leaf,
                    _stacked_module([m[path] for m in named], path, arch))
        self._probe(networks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) and images.dim() == 4 else torch.contiguous_format
        stacked = images.repeat(1, self.size, 1, 1).contiguous(memory_format=fmt)
        out = self.body(stacked)
        return out.view(out.shape[0], self.size, -1)

    def member_state(self, g: int) -> dict[str, torch.Tensor]:
        """Member ``g``'s ordinary state dict (the keys and shapes of one network of the architecture)."""
        return {k: member_slices(v, self.size)[g].clone() for k, v in self.body.state_dict().items()}

    def load_member_states(self, states: Sequence[dict]) -> None:
        if len(states) != self.size:
            raise KdlibError(f"{len(states)} member states for a stack of {self.size}; valid: one per member")
        self.body.load_state_dict(_concat(states))

    def _probe(self, networks: Sequence[nn.Module]) -> None:
        """Refuse an architecture whose forward mixes members (e.g. a reshape the stack cannot see)."""
        param = next(networks[0].parameters())
        probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(param.device)
        modes = [n.training for n in networks]
        try:
            for n in networks:
                n.eval()
            self.eval()
            with torch.no_grad():
                got = self(probe)
                want = torch.stack([n(probe) for n in networks], dim=1)
        except (RuntimeError, ValueError) as exc:
            raise KdlibError(f"model {self.arch} cannot be stacked ({type(exc).__name__}); valid: train.stack: 1") from None
        finally:
            for n, mode in zip(networks, modes):
                n.train(mode)
            self.train()
        scale = want.abs().max().clamp_min(1e-6)
        if got.shape != want.shape or ((got - want).abs().max() / scale) > PROBE_TOLERANCE:
            raise KdlibError(f"model {self.arch} cannot be stacked (its members' outputs mix); valid: train.stack: 1")
