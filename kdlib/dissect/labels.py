"""One batch's labels in the layout the tally reads (:class:`BatchLabels`), made from decoded images.

The tally looks up labels only under mask pixels, so the batch keeps them pixel-major: per pixel of
the batch (image ``b``, pixel ``s`` -> row ``b * S + s``), every segmentation layer's label packed four to
an int64 word, and the primary categories of those labels as bits
(:mod:`kdlib.data.broden_labels`). Image-level labels, the label areas of the batch (``truth``) and the
image indices come with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdlib.data.broden_labels import LANES, DecodedImage, decode_image
from kdlib.errors import KdlibError


@dataclass
class BatchLabels:
    """``words`` int64 [B * S, W]; ``bits`` int64 [B * S]; ``scalar`` int64 [B, M] (0-padded image-level
    labels); ``areas`` int64 [L] (pixels per label; label 0 not counted); ``size`` (sh, sw); ``index`` [B]."""

    words: torch.Tensor
    bits: torch.Tensor
    scalar: torch.Tensor
    areas: torch.Tensor
    size: tuple[int, int]
    index: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.scalar.shape[0])

    def to(self, device: torch.device) -> "BatchLabels":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return BatchLabels(move(self.words), move(self.bits), move(self.scalar), move(self.areas), self.size, self.index)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """The labels of every layer at batch pixels ``rows``: int64 [n, W * lanes] (0 where a layer is
        absent)."""
        n, width = rows.numel(), self.words.shape[1]
        words = self.words.view(-1).index_select(0, rows) if width == 1 else self.words.index_select(0, rows)
        shifts = torch.arange(0, 16 * LANES, 16, device=rows.device)
        return (words.view(n, width, 1) >> shifts).bitwise_and_(0xFFFF).view(n, width * LANES)


def collate_decoded(images: Sequence[DecodedImage], index: Sequence[int], num_labels: int) -> BatchLabels:
    """A :class:`BatchLabels` from decoded images (:class:`~kdlib.data.broden_labels.DecodedImage`).

    All images must share the segmentation size; labels must be below ``num_labels``."""
    if not images:
        raise KdlibError("empty batch; valid: at least one probe image")
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        raise KdlibError(f"segmentation sizes {sizes} in one batch; valid: one size per batch")
    (sh, sw), B = sizes[0], len(images)
    S, W = sh * sw, max(im.words.shape[1] for im in images)
    words = np.zeros((B, S, W), dtype=np.int64)
    bits = np.zeros((B, S), dtype=np.int64)
    M = max(im.scalar.size for im in images)
    scalar = np.zeros((B, M), dtype=np.int64)
    areas = np.zeros(num_labels, dtype=np.int64)
    for b, im in enumerate(images):
        words[b, :, : im.words.shape[1]] = im.words
        bits[b] = im.bits
        scalar[b, : im.scalar.size] = im.scalar
        if im.hist_labels.size and int(im.hist_labels.max()) >= num_labels:
            raise KdlibError(f"label {int(im.hist_labels.max())} in a batch; valid: label numbers below {num_labels}")
        np.add.at(areas, im.hist_labels, im.hist_counts)
    return BatchLabels(
        words=torch.from_numpy(words.reshape(B * S, W)),
        bits=torch.from_numpy(bits.reshape(B * S)),
        scalar=torch.from_numpy(scalar),
        areas=torch.from_numpy(areas),
        size=(sh, sw),
        index=torch.as_tensor(list(index), dtype=torch.long),
    )


def from_pixel(pixel: torch.Tensor, scalar: torch.Tensor, label_category: torch.Tensor, num_categories: int,
               index: torch.Tensor | None = None) -> BatchLabels:
    """A :class:`BatchLabels` from collated tensors: ``pixel`` int64 [B, D, sh, sw] (0-padded layers),
    ``scalar`` int64 [B, M]; ``label_category`` [L] (primary category or -1). For direct use of the tally
    (the engine reads decoded images from the label cache instead)."""
    if pixel.dim() != 4 or scalar.dim() != 2 or scalar.shape[0] != pixel.shape[0]:
        raise KdlibError(f"labels of shapes {tuple(pixel.shape)} and {tuple(scalar.shape)}; valid: [B, D, sh, sw] and [B, M]")
    B, D, sh, sw = pixel.shape
    L = label_category.numel()
    top = max(int(pixel.max()) if pixel.numel() else 0, int(scalar.max()) if scalar.numel() else 0)
    if top >= L or (pixel.numel() and int(pixel.min()) < 0) or (scalar.numel() and int(scalar.min()) < 0):
        raise KdlibError(f"label {top} in a batch; valid: label numbers 0..{L - 1}")
    primary = label_category.cpu().numpy()
    images = [
        decode_image(list(pixel[b].cpu().numpy()), [int(s) for s in scalar[b] if s], (sh, sw), primary, num_categories)
        for b in range(B)
    ]
    index = torch.arange(B) if index is None else index
    return collate_decoded(images, index.tolist(), L)
