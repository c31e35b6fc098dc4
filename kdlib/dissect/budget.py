"""Sizes that allocate, checked before they do.

:class:`~kdlib.params.DissectParams` bounds every setting that sizes an allocation (image size, batch
size, examples, the feature cache). What those bounds cannot tell depends on the probe set, the model and
the machine, so before pass 1 the engine

1. estimates the input side from ``index.csv`` alone (the largest image and segmentation of a batch, as
   stored or at ``image_size``) and refuses when that already exceeds the free memory;
2. runs the model once on the smallest probe image (:func:`probe_shapes`): each dissected layer's
   [units, h, w], and one line naming the image when a layer's map has no pixel (an image too small for
   the layer) or the model cannot run on it at all;
3. estimates the whole run (:func:`estimate`: images, activations and their copies, the exact top-k
   buffers, kept activations up to their budget, label batches, tally counts and chunks, examples) and
   refuses with the estimate when it exceeds the free memory of the device (``MemAvailable`` of
   ``/proc/meminfo`` on the CPU, ``torch.cuda.mem_get_info`` on CUDA).

The model's own intermediate activations are not in the estimate (they depend on its architecture), so
it is a lower bound: a refusal is certain to be right, an acceptance is not a guarantee.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from kdlib.dissect.quantile import topk_size
from kdlib.errors import KdlibError
from kdlib.models.nethook import capture_layers

GiB = 2**30


def free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _where(dataset, i: int) -> str:
    rows = getattr(dataset, "rows", None)
    if rows is None:
        return f"probe item {i}"
    return f"probe image {rows[i].image} (index.csv row {i + 2})"


def input_shape(dataset, i: int) -> tuple[int, int]:
    """Image ``i``'s (height, width) as the model sees it, from the index (nothing decoded)."""
    size = getattr(dataset, "image_size", None)
    if size is not None:
        return int(size), int(size)
    rows = getattr(dataset, "rows", None)
    if rows is not None:
        return int(rows[i].ih), int(rows[i].iw)
    return tuple(dataset[i]["image"].shape[-2:])


def largest_image(dataset) -> int:
    """The index of the probe image with the most pixels as the model sees it (the first of ties)."""
    rows = getattr(dataset, "rows", None)
    if rows is None or getattr(dataset, "image_size", None) is not None:
        return 0
    return max(range(len(rows)), key=lambda i: (rows[i].ih * rows[i].iw, -i))


def smallest_image(dataset) -> int:
    """The index of the probe image with the fewest pixels as the model sees it (the first of ties)."""
    rows = getattr(dataset, "rows", None)
    if rows is None or getattr(dataset, "image_size", None) is not None:
        return 0
    return min(range(len(rows)), key=lambda i: (rows[i].ih * rows[i].iw, i))


def probe_shapes(model: nn.Module, dataset, layers, device: torch.device) -> dict[str, tuple[int, int, int]]:
    """[units, h, w] of each layer on the smallest probe image; one line naming the image when a map has
    no pixel or the model cannot run on the image."""
    i = smallest_image(dataset)
    image = dataset.image_tensor(i) if hasattr(dataset, "image_tensor") else dataset[i]["image"]
    h, w = image.shape[-2:]
    with torch.no_grad(), capture_layers(model, layers, clone=True) as captured:
        try:
            model(image.unsqueeze(0).to(device))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KdlibError(
                f"the model cannot run on {_where(dataset, i)}, {h}x{w} px ({first}); "
                "valid: probe images the model accepts (set image_size)"
            ) from None
        shapes = {layer: tuple(int(s) for s in captured[layer].shape[1:]) for layer in layers}
    for layer, (units, mh, mw) in shapes.items():
        if mh * mw == 0 or units == 0:
            raise KdlibError(
                f"layer {layer!r} gives a map of {units} units at {mh}x{mw} on {_where(dataset, i)}, {h}x{w} px; "
                "valid: probe images large enough for the layer (set image_size)"
            )
    return shapes


def estimate(settings, images: int, image_hw: tuple[int, int], seg_hw: tuple[int, int], depth: int,
             shapes: Mapping[str, tuple[int, int, int]], num_labels: int, chunk_elements: int) -> dict[str, int]:
    """Bytes of what the run allocates, by part (see the module docstring)."""
    B = settings.batch_size
    H, W = image_hw
    S = seg_hw[0] * seg_hw[1]
    per_map = {layer: u * h * w * 4 for layer, (u, h, w) in shapes.items()}
    every = sum(per_map.values())
    return {
        "image batches": 2 * B * 3 * H * W * 4,  # the batch and its copy on the device
        "activation batches": 3 * B * every,  # the layer's output, the captured copy, float32
        "exact top-k": sum(3 * u * topk_size(images * h * w, settings.quantile) * 4 for u, h, w in shapes.values()),
        "kept activations": min(int(settings.feature_cache_mb * 2**20), images * every),
        "label batches": 2 * B * S * depth * (4 + 24),  # run numbers per pixel, and up to one run per pixel
        "tally counts": sum(u * (num_labels + 16) * 8 for u, _, _ in shapes.values()) + 48 * chunk_elements,
        "examples": sum(2 * u * settings.examples * h * w * 4 for u, h, w in shapes.values()),
    }


def check_fits(parts: Mapping[str, int], device: torch.device, what: str) -> None:
    """Refuse with the estimate when ``parts`` together exceed the free memory of ``device``."""
    free = free_bytes(device)
    need = sum(parts.values())
    if free is None or need <= free:
        return
    largest = max(parts, key=parts.get)
    raise KdlibError(
        f"{what} needs at least {_size(need)} on {device} ({largest}: {_size(parts[largest])}) "
        f"but {_size(free)} are free; valid: a smaller batch_size, image_size or feature_cache_mb, or fewer layers"
    )


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"
