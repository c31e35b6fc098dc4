"""The classification splits of a study: what training trains on and what metrics evaluate on.

Data come from the study's generated world (``ensure_world``) or, with ``data.imagefolder``, any
ImageFolder root with ``train/`` and ``val/`` (``test/`` optional). Every item is
``(image, label, dataset index)``: CRD's memory bank is indexed by the dataset index, and the object
masks of :mod:`kdlib.data.masks` by the same index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdlib.data.imagefolder import load_split, split_root
from kdlib.data.transforms import eval_transform, train_transform
from kdlib.errors import KdlibError
from kdlib.params import StudyParams, TrainParams


class IndexedSplit(Dataset):
    """An ImageFolder split yielding ``(image, label, index)``; with ``cache``, images are decoded once."""

    def __init__(self, root: Path, split: str, transform, cache: bool = False, progress: bool = False):
        self.folder = load_split(root, split)
        self.transform = transform
        self.classes = list(self.folder.classes)
        self.targets = torch.tensor(self.folder.targets, dtype=torch.long)
        self.images = None
        if cache:
            samples = self.folder.samples
            self.images = [self.folder.loader(p) for p, _ in tqdm(samples, desc=f"load {split}", disable=not progress, leave=False)]

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        image = self.images[index] if self.images is not None else self.folder.loader(self.folder.samples[index][0])
        return self.transform(image), int(self.targets[index]), index


@dataclass
class Splits:
    train: IndexedSplit
    val: IndexedSplit
    test: Optional[IndexedSplit]
    classes: list[str]
    image_size: int
    root: Path


def data_root(study: StudyParams) -> Path:
    """The ImageFolder root of a study: ``data.imagefolder``, else the generated world (made if absent)."""
    if study.data.imagefolder is not None:
        root = Path(study.data.imagefolder)
        if not root.is_dir():
            raise KdlibError(f"data.imagefolder = {str(root)!r} does not exist; valid: a folder with train/ and val/")
        return split_root(root)
    from kdlib.data.world import ensure_world  # local: the generator is only needed when data is absent

    return split_root(ensure_world(study))


def load_splits(study: StudyParams, train: TrainParams, progress: bool = False) -> Splits:
    root = data_root(study)
    size = train.image_size
    if size is None:
        if study.data.imagefolder is not None:
            raise KdlibError(f"{study.source}: train.image_size is missing; valid: an integer (required with data.imagefolder)")
        size = study.world.image_size
    train_set = IndexedSplit(root, "train", train_transform(size, train.augment), cache=train.cache_images, progress=progress)
    val_set = IndexedSplit(root, "val", eval_transform(size))
    test_set = IndexedSplit(root, "test", eval_transform(size)) if (root / "test").is_dir() else None
    for name, split in (("val", val_set), ("test", test_set)):
        if split is not None and split.classes != train_set.classes:
            raise KdlibError(f"{root}/{name} has classes {split.classes[:3]}...; valid: the same class folders as {root}/train")
    return Splits(train_set, val_set, test_set, train_set.classes, size, root)
