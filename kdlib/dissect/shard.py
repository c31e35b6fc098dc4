"""Sharded dissection: under ``torchrun`` each rank dissects a shard of the probe set, and the ranks'
statistics are merged so that the result equals one process's.

::

    torchrun --nproc_per_node=2 -m kdlib.dissect --model resnet18_w8 --num-classes 24 --random-init \\
        --data data/world-default-s0 --out outputs/dissect-random --cache outputs/cache
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m kdlib.dissect ...

:func:`kdlib.dissect.dissect` shards whenever a process group of more than one rank is initialised
(the command line initialises one from torchrun's environment: gloo on the CPU, NCCL on CUDA with each
rank on ``cuda:LOCAL_RANK``). Rank r reads the contiguous range of images ``[r N / W, (r + 1) N / W)``.

* **Thresholds** (pass 1): each rank keeps the top-k of its own positions, with k the exact top-k size
  for all ``N h w`` positions; the global top-k is contained in the union of the ranks' top-k, so
  ``all_gather`` of every rank's buffer and one more top-k give every rank the buffer one process would
  have (:func:`merge_topk`), and the same thresholds, bit for bit.
* **Counts** (pass 2): intersections, the A term, mask areas and label areas are sums over images, so
  ``all_reduce(SUM)`` of each rank's counts is one process's count (:func:`sum_counts`); the top
  examples are gathered and merged by the same top-k rule (among equal maxima the order may differ).
* Every rank returns the whole result; only rank 0 writes (the per-layer cache, the command line's
  output folder). The decoded-label cache is built by rank 0 while the others wait, then read by all;
  across machines it must lie on a shared file system (``--cache`` / ``--label-cache``).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int) -> range:
    """The probe images this rank reads: a contiguous range, all ranks together covering ``range(n)``."""
    rank, size = world()
    return range(rank * n // size, (rank + 1) * n // size)


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE`` > 1); gloo on the
    CPU, NCCL when CUDA is present (each rank on ``cuda:LOCAL_RANK``). Returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _gather(t: torch.Tensor, fill: float = 0.0) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape except the last dimension, padded with ``fill``), trimmed back."""
    _, size = world()
    width = torch.tensor([t.shape[-1]], device=t.device)
    widths = [torch.zeros_like(width) for _ in range(size)]
    dist.all_gather(widths, width)
    top = int(max(w.item() for w in widths))
    padded = torch.nn.functional.pad(t, (0, top - t.shape[-1]), value=fill) if t.shape[-1] < top else t.contiguous()
    out = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(out, padded)
    return [o[..., : int(w.item())] for o, w in zip(out, widths)]


def merge_topk(stat) -> None:
    """Make ``stat`` (a :class:`~kdlib.dissect.quantile.TopK` fed this rank's shard) the top-k of every
    rank's positions, as if one process had added them all."""
    values = torch.cat(_gather(stat.values, fill=-float("inf")), dim=1)
    if values.shape[1] > stat.k:
        values = torch.topk(values, stat.k, dim=1, largest=True, sorted=False).values
    counts = torch.tensor([stat.count], device=values.device)
    dist.all_reduce(counts)
    stat.values, stat.count = values, int(counts.item())


def sum_counts(tensors: Sequence[torch.Tensor]) -> None:
    """``all_reduce(SUM)`` of each tensor, in place."""
    for t in tensors:
        dist.all_reduce(t)


def merge_examples(top) -> None:
    """Every rank's top examples (a :class:`~kdlib.dissect.tally.TopExamples`) merged by the same rule."""
    values = torch.cat(_gather(top.values, fill=-float("inf")), dim=1)
    images = torch.cat(_gather(top.images, fill=-1), dim=1)
    maps = torch.cat(_gather(top.maps.flatten(2).transpose(1, 2), fill=0.0), dim=2).transpose(1, 2)
    keep = torch.topk(values, min(top.n, values.shape[1]), dim=1).indices
    top.values, top.images = values.gather(1, keep), images.gather(1, keep)
    units = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    top.maps = maps[units, keep].view(values.shape[0], keep.shape[1], *top.maps.shape[2:])


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
