"""One batch's labels in the layout the tally reads (:class:`BatchLabels`), made from decoded images.

The tally counts labels under vertical segments of the masks, so a batch keeps each segmentation layer
as vertical runs (:func:`kdlib.data.broden_labels.vertical_runs`): for every pixel of every layer the
number of the run it lies in (``run_index``), and per run its first row, last row and label. The runs of
one column of one layer are consecutive, so the runs a segment crosses are the numbers between the runs
of its first and last pixel. Layers an image lacks (``d >= depths[b]``) are never read. Image-level labels, the label areas of the batch (``truth``) and the image indices come
with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdlib.data.broden_labels import DecodedImage, decode_image
from kdlib.errors import KdlibError


@dataclass
class BatchLabels:
    """``run_index`` int32 [B * D * S] (image b, layer d, pixel s at ``(b * D + d) * S + s``); ``run_first``,
    ``run_last``, ``run_label`` int64 [runs];
    ``depth`` D, ``depths`` [B] each image's own layer count; ``scalar`` int64 [B, M] (0-padded image-level labels); ``areas`` int64 [L] (pixels per
    label; label 0 not counted); ``size`` (sh, sw); ``index`` [B]."""

    run_index: torch.Tensor
    run_first: torch.Tensor
    run_last: torch.Tensor
    run_label: torch.Tensor
    depth: int
    depths: torch.Tensor
    scalar: torch.Tensor
    areas: torch.Tensor
    size: tuple[int, int]
    index: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.scalar.shape[0])

    def to(self, device: torch.device) -> "BatchLabels":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return BatchLabels(move(self.run_index), move(self.run_first), move(self.run_last), move(self.run_label),
                           self.depth, move(self.depths), move(self.scalar), move(self.areas), self.size, self.index)


def collate_decoded(images: Sequence[DecodedImage], index: Sequence[int], num_labels: int) -> BatchLabels:
    """A :class:`BatchLabels` from decoded images (:class:`~kdlib.data.broden_labels.DecodedImage`).

    All images must share the segmentation size; labels must be below ``num_labels``."""
    if not images:
        raise KdlibError("empty batch; valid: at least one probe image")
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        raise KdlibError(f"segmentation sizes {sizes} in one batch; valid: one size per batch")
    (sh, sw), B = sizes[0], len(images)
    S, D = sh * sw, max(im.depth for im in images)
    first = np.cumsum([0] + [len(im.runs) for im in images])
    run_index = np.zeros((B, D, S), dtype=np.int32)
    areas = np.zeros(num_labels, dtype=np.int64)
    M = max(im.scalar.size for im in images)
    scalar = np.zeros((B, M), dtype=np.int64)
    for b, im in enumerate(images):
        run_index[b, : im.depth] = im.run_index + np.int32(first[b])
        scalar[b, : im.scalar.size] = im.scalar
        if im.hist_labels.size and int(im.hist_labels.max()) >= num_labels:
            raise KdlibError(f"label {int(im.hist_labels.max())} in a batch; valid: label numbers below {num_labels}")
        areas[im.hist_labels] += im.hist_counts  # each label once per image
    runs = np.concatenate([im.runs for im in images]).astype(np.int64)
    return BatchLabels(
        run_index=torch.from_numpy(run_index.reshape(-1)),
        run_first=torch.from_numpy(np.ascontiguousarray(runs[:, 0])),
        run_last=torch.from_numpy(np.ascontiguousarray(runs[:, 1])),
        run_label=torch.from_numpy(np.ascontiguousarray(runs[:, 2])),
        depth=D,
        depths=torch.tensor([im.depth for im in images], dtype=torch.long),
        scalar=torch.from_numpy(scalar),
        areas=torch.from_numpy(areas),
        size=(sh, sw),
        index=torch.as_tensor(list(index), dtype=torch.long),
    )


def from_pixel(pixel: torch.Tensor, scalar: torch.Tensor, num_labels: int, index: torch.Tensor | None = None) -> BatchLabels:
    """A :class:`BatchLabels` from collated tensors: ``pixel`` int64 [B, D, sh, sw] (0-padded layers),
    ``scalar`` int64 [B, M] (0-padded). For direct use of the tally (the engine reads decoded images
    from the label cache instead)."""
    if pixel.dim() != 4 or scalar.dim() != 2 or scalar.shape[0] != pixel.shape[0]:
        raise KdlibError(f"labels of shapes {tuple(pixel.shape)} and {tuple(scalar.shape)}; valid: [B, D, sh, sw] and [B, M]")
    B, D, sh, sw = pixel.shape
    low = min(int(pixel.min()) if pixel.numel() else 0, int(scalar.min()) if scalar.numel() else 0)
    top = max(int(pixel.max()) if pixel.numel() else 0, int(scalar.max()) if scalar.numel() else 0)
    if low < 0 or top >= num_labels:
        raise KdlibError(f"label {top if top >= num_labels else low} in a batch; valid: label numbers 0..{num_labels - 1}")
    images = [decode_image(list(pixel[b].cpu().numpy()), [int(s) for s in scalar[b] if s], (sh, sw)) for b in range(B)]
    return collate_decoded(images, (torch.arange(B) if index is None else index).tolist(), num_labels)
