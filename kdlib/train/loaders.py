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


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin)
