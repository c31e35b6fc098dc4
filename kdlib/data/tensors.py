"""A classification split as one uint8 tensor, and the training augmentation done on whole batches.

``split_tensor(split, size)`` decodes every image once into ``[N, 3, size, size]`` uint8 (28 MB for the
default world's 7,680 training images). :func:`augment` applies the CIFAR-style training augmentation
of :func:`kdlib.data.transforms.train_transform` (random crop with reflect padding of ``size // 8``,
then a horizontal flip) to a whole batch with one gather, each image with its own offsets and flip;
:func:`to_input` turns uint8 into the normalised float input every model sees. For the same offsets and
flip the result equals torchvision's transforms on the PIL image bit for bit (the same ``/ 255`` and
the same normalisation; ``tests/test_train_batches.py``), so only the random draws differ from the
``DataLoader`` path.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms as T
from tqdm.auto import tqdm

from kdlib.data.transforms import MEAN, STD
from kdlib.errors import KdlibError

MAX_BYTES = 4 * 2**30  # beyond this, train with batches: loader (images decoded per batch)


def padding(image_size: int) -> int:
    """The random crop's reflect padding: 1/8 of the image size, at least 1 (as ``train_transform``)."""
    return max(1, image_size // 8)


def split_tensor(split, image_size: int, progress: bool = False) -> torch.Tensor:
    """Every image of an ImageFolder split (:class:`kdlib.data.splits.IndexedSplit`) as ``[N, 3, S, S]``
    uint8, resized (shorter side) and centre-cropped to ``image_size`` where it has another size."""
    n = len(split)
    if n * 3 * image_size * image_size > MAX_BYTES:
        raise KdlibError(
            f"{n} images of {image_size} px need {n * 3 * image_size**2 / 2**30:.1f} GiB in memory; "
            f"valid: train.batches: loader for data this large"
        )
    resize = T.Compose([T.Resize(image_size), T.CenterCrop(image_size)])
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    cached = getattr(split, "images", None)
    for i in tqdm(range(n), desc="load images", disable=not progress, leave=False):
        image = cached[i] if cached is not None else split.folder.loader(split.folder.samples[i][0])
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = resize(image)
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Reflect-padding source index (edge not repeated, as ``numpy.pad(mode="reflect")``)."""
    index = index.abs()
    return torch.where(index >= length, 2 * (length - 1) - index, index)


def augment(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 -> the crop at offsets ``(dy, dx)`` of each image reflect-padded by
    :func:`padding` (offsets in ``[0, 2 * pad]``), mirrored left-right where ``flip``; channels_last."""
    batch, _, h, w = images.shape
    pad = padding(h)
    if pad >= min(h, w):
        raise KdlibError(f"images of {h}x{w} px are too small for a reflect padding of {pad}; valid: at least {pad + 1} px")
    dev = images.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    rows = _reflect(dy.view(-1, 1) + torch.arange(h, device=dev) - pad, h)  # [B, H]
    cols = torch.arange(w, device=dev).expand(batch, w)
    cols = torch.where(flip.view(-1, 1).bool(), cols.flip(1), cols)  # flip the crop, then pad-index it
    cols = _reflect(dx.view(-1, 1) + cols - pad, w)  # [B, W]
    which = torch.arange(batch, device=dev).view(-1, 1, 1)
    crops = images.permute(0, 2, 3, 1)[which, rows[:, :, None], cols[:, None, :]]  # [B, H, W, 3]
    return crops.permute(0, 3, 1, 2)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float32 model input (``ToTensor`` then ``Normalize``), in the
    images' memory format."""
    x = images.to(torch.float32).div(255)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)
