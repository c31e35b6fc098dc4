"""The one image normalisation shared by training, evaluation and dissection.

Every model in kdlib sees RGB floats in [0, 1] normalised by ImageNet's channel mean and standard
deviation (the convention torchvision's ResNets use), for generated and real data alike, so a network
trained on the concept world is dissected on exactly the statistics it was trained on.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] floats in [0, 1] -> normalised model input."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def eval_transform(image_size: int | None = None) -> T.Compose:
    """PIL image -> normalised tensor; resized (shorter side, then centre crop) only if ``image_size`` is given."""
    steps: list = []
    if image_size is not None:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def train_transform(image_size: int, augment: bool = True) -> T.Compose:
    """Training transform: CIFAR-style random crop (padding 1/8 of the size) and horizontal flip when ``augment``."""
    if not augment:
        return eval_transform(image_size)
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
