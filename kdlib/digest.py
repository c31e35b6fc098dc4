"""Content digests: the one way kdlib names a thing by what it was made from.

``json_digest(obj)`` is the SHA-256 of ``obj`` as JSON with sorted keys (``json.dumps``' default
separators), cut to ``length`` hex digits: run ids, world folder names, training identities and cache
keys all use it, so the same plain data always gives the same name. ``tensor_digest`` /
``state_digest`` do the same for tensors (dtype, shape and bytes) and state dicts. torch is imported
only by those two, so params and the world generator stay free of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch


def json_digest(obj: Any, length: int = 16) -> str:
    """SHA-256 hex digest of ``obj`` as sorted-key JSON (non-JSON values by ``str``), ``length`` digits."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _update_tensor(h: Any, tensor: "torch.Tensor") -> None:
    import torch

    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(tensor: "torch.Tensor", length: int = 16) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_tensor(h, tensor)
    return h.hexdigest()[:length]


def state_digest(state: "Mapping[str, torch.Tensor] | torch.nn.Module", length: int = 16) -> str:
    """SHA-256 of a state dict (or a module's): every entry's name, dtype, shape and bytes, in order."""
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(f"{name}:".encode())
        _update_tensor(h, tensor)
    return h.hexdigest()[:length]
