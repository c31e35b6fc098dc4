"""Per-layer dissection cache that stores the arguments it was made from and is rebuilt when they differ.

A cache entry is one file ``<cache_dir>/<layer>-<hash of key>.pt`` holding the layer's result and its
key: the model's weights (a hash of every parameter and buffer), the model class, the layer, the
dataset's fingerprint, the quantile, the image and segmentation resolutions, the upsampling rule, the
number of examples kept per unit and the engine version. A different key gives a different file; an
entry whose stored key differs from the one asked for (edited, or a hash collision) is never used.
Writes are atomic, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kdlib.atomic import atomic_path
from kdlib.dissect.result import LayerResult

ENGINE_VERSION = 2  # 2: upsampling with fixed float32 arithmetic (kdlib.dissect.tally.upsample_bilinear)


def weights_hash(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the model's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(**fields: Any) -> dict[str, Any]:
    """A JSON-normalised key (tuples become lists), so a stored key compares equal to a fresh one."""
    return json.loads(json.dumps({**fields, "engine": ENGINE_VERSION}, sort_keys=True, default=str))


def _path(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe_layer = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(key.get("layer", "layer")))
    return Path(cache_dir) / f"{safe_layer}-{digest}.pt"


def load(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> LayerResult | None:
    """The cached result for ``key``, or None when there is none or its stored key differs."""
    path = _path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable entry is rebuilt, not trusted
        return None
    if not isinstance(entry, dict) or entry.get("key") != dict(key):
        return None
    return LayerResult.from_state(entry["result"], from_cache=True)


def store(cache_dir: str | os.PathLike, key: Mapping[str, Any], result: LayerResult) -> Path:
    path = _path(cache_dir, key)
    with atomic_path(path) as tmp:
        torch.save({"key": dict(key), "result": result.state()}, tmp)
    return path
