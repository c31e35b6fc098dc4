"""Seeded loaders over a classification split: the order of one epoch depends on its seed alone."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, pin: bool) -> DataLoader:
    """One epoch's loader: order and worker seeds come from ``seed`` alone (see :mod:`kdlib.train.seeding`)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers,
        pin_memory=pin, drop_last=False, persistent_workers=False,
    )


def rank_loader(dataset: Dataset, batches: list[list[int]], num_workers: int, pin: bool) -> DataLoader:
    """A loader over the given batches of indices, in order (a data-parallel rank's share of an epoch)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin)
