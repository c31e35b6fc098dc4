"""What each pass of dissection reads: batches of probe images and of decoded labels, and the
activations pass 1 keeps for pass 2.

Pass 1 reads only images (``dataset.image_tensor(i)`` for a :class:`~kdlib.data.broden.BrodenDataset`:
resized and normalised exactly as ``dataset[i]["image"]``, no segmentation decoded; any other dataset's
``dataset[i]["image"]``). Pass 2 reads the decoded labels from the label cache
(:mod:`kdlib.data.broden_labels`) as a :class:`~kdlib.dissect.labels.BatchLabels`, and the images too
only when pass 1 could not keep its activations (:class:`FeatureCache`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from kdlib.data.broden_labels import DecodedLabels
from kdlib.dissect.labels import collate_decoded
from kdlib.errors import KdlibError


class ProbeParts(Dataset):
    """Item ``i`` of the probe set with the parts a pass reads: ``image`` (when ``images``), ``labels``
    (image i's :class:`~kdlib.data.broden_labels.DecodedImage`, when ``labels`` is given) and ``index``."""

    def __init__(self, dataset, images: bool, labels: DecodedLabels | None, indices: Sequence[int] | None = None):
        if not images and labels is None:
            raise ValueError("a pass reads images, labels or both")
        self.dataset = dataset
        self.images = images
        self.labels = labels
        self.indices = range(len(dataset)) if indices is None else indices
        self.image_tensor = getattr(dataset, "image_tensor", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.indices[j]  # the image's number in the whole probe set (a shard reads some of them)
        item: dict[str, Any] = {"index": i}
        if self.images:
            item["image"] = self.image_tensor(i) if self.image_tensor is not None else self.dataset[i]["image"]
        if self.labels is not None:
            item["labels"] = self.labels.image(i)
        return item


class CollateParts:
    """Stacks images (one size per batch) and turns decoded labels into a :class:`BatchLabels`."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels

    def __call__(self, items) -> dict[str, Any]:
        index = [it["index"] for it in items]
        batch: dict[str, Any] = {"index": torch.tensor(index, dtype=torch.long)}
        if "image" in items[0]:
            shapes = sorted({tuple(it["image"].shape) for it in items})
            if len(shapes) > 1:
                raise KdlibError(
                    f"images of different sizes in one batch ({[s[1:] for s in shapes]}); "
                    "valid: one size (set image_size)"
                )
            batch["image"] = torch.stack([it["image"] for it in items])
        if "labels" in items[0]:
            batch["labels"] = collate_decoded([it["labels"] for it in items], index, self.num_labels)
        return batch


def make_loader(dataset, batch_size: int, device: torch.device, num_workers: int = 0, images: bool = True,
                labels: DecodedLabels | None = None, indices: Sequence[int] | None = None) -> DataLoader:
    """Batches in dataset order with the parts asked for (see :class:`ProbeParts`); ``indices``: the
    images read (default: all)."""
    return DataLoader(
        ProbeParts(dataset, images, labels, indices),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=CollateParts(int(dataset.num_labels)),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


class FeatureCache:
    """Pass 1's activations, kept for pass 2 while their total size stays within ``budget_mb``.

    ``add(index, feats)`` keeps one batch (``feats``: layer -> tensor, on its device). The first batch
    that would take the total over the budget drops everything kept and turns the cache off for the run,
    so it never holds more than the budget. ``complete`` says whether every batch was kept; ``batches``
    are (index, feats) pairs in the order they were added. ``budget_mb = 0`` keeps nothing."""

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self.batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.bytes = 0
        self.peak = 0
        self.state = "filling" if self.budget > 0 else "off"

    def add(self, index: torch.Tensor, feats: Mapping[str, torch.Tensor]) -> None:
        if self.state != "filling":
            return
        size = sum(t.numel() * t.element_size() for t in feats.values())
        if self.bytes + size > self.budget:
            self.clear()
            self.state = "over budget"
            return
        self.batches.append((index.cpu(), dict(feats)))
        self.bytes += size
        self.peak = max(self.peak, self.bytes)

    @property
    def complete(self) -> bool:
        """Every batch added so far is kept (and there was at least one)."""
        return self.state == "filling" and bool(self.batches)

    def clear(self) -> None:
        self.batches = []
        self.bytes = 0

    def summary(self) -> dict[str, Any]:
        """For the run's metadata: the budget, whether pass 2 could use kept activations, the most kept."""
        used = self.state == "filling" and self.peak > 0
        state = "used" if used else "not needed" if self.state == "filling" else self.state
        return {"budget_mb": self.budget / 2**20, "used": used, "state": state, "peak_mb": self.peak / 2**20}
