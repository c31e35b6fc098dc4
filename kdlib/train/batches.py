"""Where a training session's batches come from: one epoch's ``(images, targets, indices)``, from its seed.

Two sources with one interface (``train.batches``):

* :class:`MemoryBatches` (``memory``, the fast path): the split as one uint8 tensor on the device; an
  epoch's plan (the order, and every position's crop offsets and flip) is drawn up front from seeds
  derived from the network's seed and the epoch, and each batch is one gather
  (:func:`kdlib.data.tensors.augment`). The order is the permutation the ``DataLoader`` path draws for
  the same seed and epoch (:func:`loader_order`), so both paths visit the images in the same order and,
  without augmentation, give the same batches bit for bit; only the augmentation draws differ.
* :class:`LoaderBatches` (``loader``, kdlib 0.1's pipeline): a seeded ``DataLoader`` over the PIL
  split with torchvision's transforms; augmentation draws come from the global RNG (or the workers'
  seeds), which the session seeds per epoch.

The plan of an epoch depends only on (seed, epoch), never on which process asks, so under torchrun
each rank takes its contiguous chunk of every batch of the same plan (:mod:`kdlib.train.distributed`):
the ranks' batches together are the single-process batch.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from kdlib.data.tensors import augment, padding, split_tensor, to_input
from kdlib.train import distributed
from kdlib.train.loaders import eval_loader, rank_loader, train_loader
from kdlib.train.seeding import derive

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (float, normalised), targets, dataset indices


def loader_order(n: int, seed: int) -> torch.Tensor:
    """The order in which kdlib's training ``DataLoader`` visits ``n`` images for generator seed ``seed``.

    Each DataLoader iterator draws a base seed for its workers from the generator before the sampler's
    ``randperm``, and kdlib 0.1 made two iterators per epoch (``tqdm.auto``'s ``tqdm`` calls ``iter()``
    on what it wraps when it is built, and the loop calls it again), so the permutation follows two draws.
    """
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator)


def _layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class MemoryBatches:
    """Batches of a split held in memory, augmented on the device, whole batches at a time."""

    def __init__(self, split, image_size: int, batch_size: int, augmented: bool, device: torch.device,
                 channels_last: bool, progress: bool = False):
        self.images = split_tensor(split, image_size, progress).to(device)
        self.targets = split.targets.to(device)
        self.batch_size, self.augmented, self.channels_last = batch_size, augmented, channels_last
        self.device = device

    def __len__(self) -> int:
        return math.ceil(self.targets.numel() / self.batch_size)

    def plan(self, seed: int, epoch: int, prefix: tuple = ()) -> tuple[torch.Tensor, ...]:
        """The epoch's order and, per position, crop offsets and flip (CPU tensors)."""
        n = self.targets.numel()
        order = loader_order(n, derive(seed, *prefix, "order", epoch))
        draws = torch.Generator().manual_seed(derive(seed, *prefix, "augment", epoch))
        span = 2 * padding(self.images.shape[-1]) + 1
        dy = torch.randint(0, span, (n,), generator=draws)
        dx = torch.randint(0, span, (n,), generator=draws)
        flip = torch.randint(0, 2, (n,), generator=draws)
        return order, dy, dx, flip

    def epoch(self, seed: int, epoch: int, prefix: tuple = ()) -> Iterator[Batch]:
        order, dy, dx, flip = self.plan(seed, epoch, prefix)
        for start in range(0, order.numel(), self.batch_size):
            pick = distributed.share(torch.arange(start, min(start + self.batch_size, order.numel())))
            index = order[pick].to(self.device)
            images = self.images[index]
            if self.augmented:
                images = augment(images, dy[pick], dx[pick], flip[pick])
            yield _layout(to_input(images), self.channels_last), self.targets[index], index


class LoaderBatches:
    """Batches from a seeded ``DataLoader`` over the PIL split (torchvision transforms in the loader)."""

    def __init__(self, split, batch_size: int, num_workers: int, device: torch.device, channels_last: bool):
        self.split, self.batch_size, self.num_workers = split, batch_size, num_workers
        self.device, self.channels_last = device, channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def epoch(self, seed: int, epoch: int, prefix: tuple = ()) -> Iterator[Batch]:
        if distributed.ranks().parallel:
            yield from self._rank_epoch(seed, epoch, prefix)
            return
        loader = train_loader(self.split, self.batch_size, derive(seed, *prefix, "order", epoch), self.num_workers,
                              self.device.type == "cuda")
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # the iterator kdlib 0.1 discarded
        for images, targets, indices in loader:
            yield (_layout(images.to(self.device, non_blocking=True), self.channels_last),
                   targets.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True))


    def _rank_epoch(self, seed: int, epoch: int, prefix: tuple) -> Iterator[Batch]:
        """Under torchrun: this rank's chunk of every batch of the single-process order
        (:func:`loader_order`); the transforms' draws come from each rank's global RNG."""
        order = loader_order(len(self.split), derive(seed, *prefix, "order", epoch))
        chunks = [distributed.share(order[i:i + self.batch_size]).tolist() for i in range(0, order.numel(), self.batch_size)]
        for images, targets, indices in rank_loader(self.split, chunks, self.num_workers, self.device.type == "cuda"):
            yield (_layout(images.to(self.device, non_blocking=True), self.channels_last),
                   targets.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True))


class LoaderEval:
    """A validation or test split streamed through a ``DataLoader`` each time it is iterated."""

    def __init__(self, split, batch_size: int, num_workers: int, device: torch.device, channels_last: bool):
        self.split, self.batch_size, self.num_workers = split, batch_size, num_workers
        self.device, self.channels_last = device, channels_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, targets, _ in eval_loader(self.split, self.batch_size, self.num_workers, self.device.type == "cuda"):
            yield _layout(images.to(self.device, non_blocking=True), self.channels_last), targets.to(self.device, non_blocking=True)


def eval_batches(split, memory: bool, image_size: int, batch_size: int, num_workers: int, device: torch.device,
                 channels_last: bool):
    """A validation or test split as an iterable of ``(images, targets)`` batches on the device: in memory,
    a list decoded once; otherwise a :class:`LoaderEval`."""
    if not memory:
        return LoaderEval(split, batch_size, num_workers, device, channels_last)
    images = split_tensor(split, image_size).to(device)
    targets = split.targets.to(device)
    return [(_layout(to_input(images[i:i + batch_size]), channels_last), targets[i:i + batch_size])
            for i in range(0, targets.numel(), batch_size)]
