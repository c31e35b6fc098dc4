"""Data-parallel training under ``torchrun``: the process group, each rank's share of a batch, the DDP
wrapper and the checks that every rank trains the same thing.

::

    torchrun --nproc_per_node=2 -m kdlib.train params/default.yaml
    torchrun --nnodes 2 --node-rank R --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m kdlib.train params/default.yaml --out /shared/outputs/study

* **Process group**: :func:`init_from_env` reads torchrun's ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``;
  gloo on the CPU, NCCL on CUDA (rank on ``cuda:LOCAL_RANK``), with a timeout
  (``KDLIB_DIST_TIMEOUT`` seconds, default :data:`TIMEOUT_S`) so that a rank that dies makes the others
  fail instead of waiting for ever.
* **Batches**: every rank draws the same epoch plan from (seed, epoch) (:mod:`kdlib.train.batches`), so
  the global batch is the single-process batch; rank r takes the r-th of ``WORLD_SIZE`` contiguous
  chunks of it (:func:`share`); ``batch_size`` must be a multiple of the world size. A ragged last batch
  is split as evenly as it goes, and each rank's loss is weighted by ``world * its images / batch
  images`` (:func:`loss_weight`), so that DDP's mean of the ranks' gradients is the gradient of the
  batch mean.
* **Gradients**: the student is wrapped in ``DistributedDataParallel`` (gradients averaged in
  backward); parameters an objective owns (projection heads) are averaged by :func:`average_gradients`.
* **BatchNorm**: on CUDA the student's BatchNorms become ``SyncBatchNorm`` (batch statistics over the
  global batch, as one process). torch's SyncBatchNorm does not run on the CPU, so under gloo each rank
  normalises with the statistics of its own chunk (DDP's default), and the weights differ from one
  process's by that (see the README's Scale-out section and ``tests/test_train_ddp.py``); running
  statistics are rank 0's, broadcast at every forward.
* **Files**: rank 0 alone writes (checkpoints, metrics, params, done; atomically); the others wait at a
  barrier, then all read the same files, so resume loads one checkpoint on every rank.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from kdlib.digest import json_digest
from kdlib.errors import KdlibError

TIMEOUT_S = 300


@dataclass(frozen=True)
class Ranks:
    """This process's rank, the world size and its rank on its machine."""

    rank: int = 0
    size: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def ranks() -> Ranks:
    """The ranks of the initialised process group, or one process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks()


def timeout_s() -> float:
    text = os.environ.get("KDLIB_DIST_TIMEOUT", str(TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise KdlibError(f"KDLIB_DIST_TIMEOUT = {text!r} is not valid; valid: seconds > 0")
    return value


def init_from_env() -> Ranks:
    """Initialise the default process group from torchrun's environment when ``WORLD_SIZE`` > 1 (see the
    module docstring); the ranks (one process when not under torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return ranks()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return ranks()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if ranks().parallel:
        dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; the CPU stays the CPU."""
    r = ranks()
    if device.type == "cuda" and r.parallel:
        return torch.device("cuda", r.local)
    return device


def check_batch(batch_size: int, n: int, where: str) -> None:
    """One line unless every rank gets a share of every batch of ``n`` images."""
    size = ranks().size
    if batch_size % size:
        raise KdlibError(f"{where}.batch_size = {batch_size} does not divide among {size} processes; "
                         f"valid: a multiple of the world size {size}")
    if 0 < n % batch_size < size:
        raise KdlibError(f"{where}: the last batch of {n} images holds {n % batch_size}, fewer than the {size} processes; "
                         "valid: a batch_size that leaves no last batch smaller than the world size")


def check_same(content, what: str) -> None:
    """One line on every rank unless ``content`` (plain data, e.g. the runs' identities) is the same on all."""
    r = ranks()
    if not r.parallel:
        return
    digests: list[Optional[str]] = [None] * r.size
    dist.all_gather_object(digests, json_digest(content, 16))
    differ = [i for i, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise KdlibError(f"{what}: the params differ across ranks (rank {differ[0]}'s digest {digests[differ[0]]} != "
                         f"rank 0's {digests[0]}); valid: the same params file and options on every rank")


def share(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous chunk of a global batch (of indices)."""
    r = ranks()
    return torch.tensor_split(batch, r.size)[r.rank] if r.parallel else batch


def loss_weight(local: int, total: int) -> float:
    """The factor of a rank's mean loss over ``local`` of the batch's ``total`` images (module docstring)."""
    return ranks().size * local / total


def wrap(network: nn.Module, device: torch.device) -> nn.Module:
    """The student as DistributedDataParallel (SyncBatchNorm on CUDA); ``network`` itself when alone.
    The wrapper shares ``network``'s parameters, so hooks, checkpoints and evaluation use ``network``."""
    if not ranks().parallel:
        return network
    if device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        if converted is not network:
            raise KdlibError("the student's top module is a BatchNorm; valid: a network containing its BatchNorms")
        return nn.parallel.DistributedDataParallel(network, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(network)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters outside the DDP wrapper over the ranks."""
    r = ranks()
    if not r.parallel:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= r.size


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a copy); ``t`` when alone."""
    if not ranks().parallel:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out
