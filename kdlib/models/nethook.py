"""Capture the outputs of named layers during a forward pass, in a context manager.

::

    with capture_layers(model, ["layer3", "layer4"]) as captured:
        model(images)
        feats = captured["layer4"]        # [B, C, H, W], detached

``detach=False`` keeps the autograd graph (a feature-distillation loss backpropagates through the
captured tensor); :meth:`Capture.io_dict` gives torchdistill's layout ``{path: {"output": tensor}}``,
which its losses read. One mechanism serves dissection, the training step and the loss terms' set-up.

Hooks are removed when the ``with`` block ends, also when it ends with an error. Nothing is kept in
module globals: each :class:`Capture` owns its tensors.

Two ways a hooked tensor goes wrong, and what happens:

* a later in-place op (``ReLU(inplace=True)``, ``out += identity``) overwrites the captured tensor after
  the hook saw it. With ``clone=True`` the hook stores a copy, so the capture is right whatever follows;
  with ``clone=False`` (no copy) the capture checks the tensor's version counter when read and refuses
  with :class:`~kdlib.errors.KdlibError` if it changed;
* a module called more than once in one forward (one ReLU reused, as in torchvision's blocks) would
  give two tensors for one name: refused.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from kdlib.errors import KdlibError


def layer_names(model: nn.Module) -> list[str]:
    """Names of every sub-module of ``model``, as ``dict(model.named_modules())`` has them (root excluded)."""
    return [name for name, _ in model.named_modules() if name]


class Capture(Mapping[str, torch.Tensor]):
    """The outputs of the hooked layers from the most recent forward pass (read-only mapping)."""

    def __init__(self, model: nn.Module, names: Sequence[str], clone: bool, require_4d: bool, detach: bool = True):
        modules = dict(model.named_modules())
        names = list(names)
        if not names:
            raise KdlibError("no layer names given; valid: one or more of " + ", ".join(layer_names(model)))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise KdlibError(f"layer {dup[0]!r} is named twice; valid: distinct layer names")
        for name in names:
            if name not in modules or not name:
                raise KdlibError(
                    f"layer {name!r} is not in {type(model).__name__}; valid: {', '.join(layer_names(model))}"
                )
        self.names = names
        self.clone = clone
        self.require_4d = require_4d
        self.detach = detach
        self._model = model
        self._modules = {n: modules[n] for n in names}
        self._tensors: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- hooks -----------------------------------------------------------------------------------

    def _attach(self) -> None:
        self._handles.append(self._model.register_forward_pre_hook(self._reset))
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook_for(name)))

    def _detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _reset(self, module: nn.Module, args) -> None:
        self._tensors.clear()
        self._versions.clear()

    def _hook_for(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if name in self._tensors:
                raise KdlibError(
                    f"layer {name!r} ran twice in one forward pass, so its output is ambiguous; "
                    "valid: a module called once per forward (give each use its own module)"
                )
            if not isinstance(output, torch.Tensor):
                raise KdlibError(
                    f"layer {name!r} returned {type(output).__name__}; valid: a layer whose output is one tensor"
                )
            if self.require_4d and output.dim() != 4:
                raise KdlibError(
                    f"layer {name!r} output has shape {tuple(output.shape)}; "
                    "valid: a convolutional layer with 4-D output [batch, units, height, width]"
                )
            out = output.detach() if self.detach else output
            if self.clone:
                out = out.clone()
            self._tensors[name] = out
            self._versions[name] = out._version

        return hook

    # -- mapping ---------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._modules:
            raise KdlibError(f"layer {name!r} is not captured; valid: {', '.join(self.names)}")
        if name not in self._tensors:
            raise KdlibError(
                f"layer {name!r} did not run in the last forward pass; valid: layers the model's forward calls"
            )
        tensor = self._tensors[name]
        if tensor._version != self._versions[name]:
            raise KdlibError(
                f"layer {name!r} output was changed in place after it was captured (an in-place op such as "
                "ReLU(inplace=True) or +=); valid: capture_layers(..., clone=True) or an out-of-place model"
            )
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def io_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The last forward's outputs in torchdistill's layout, ``{path: {"output": tensor}}``, for every
        captured layer that ran."""
        return {name: {"output": self[name]} for name in self.names if name in self._tensors}

    def __len__(self) -> int:
        return len(self.names)


class capture_layers:
    """Context manager: hook ``names`` of ``model``; yields a :class:`Capture` mapping name -> output.

    ``clone=True`` copies each output inside the hook (safe against later in-place ops);
    ``require_4d=True`` (the default) refuses outputs that are not ``[batch, units, height, width]``;
    ``detach=False`` keeps the outputs in the autograd graph (for losses on features).
    Unknown names raise :class:`~kdlib.errors.KdlibError` listing the model's layers.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | str, clone: bool = False, require_4d: bool = True,
                 detach: bool = True):
        if isinstance(names, str):
            names = [names]
        self.capture = Capture(model, names, clone=clone, require_4d=require_4d, detach=detach)

    def __enter__(self) -> Capture:
        self.capture._attach()
        return self.capture

    def __exit__(self, *exc) -> None:
        self.capture._detach()
