"""Pass 2 of dissection: dataset-level IoU counts, streamed per batch, every unit and label at once.

For one layer with thresholds ``T`` (one per unit), each batch adds, with tensor ops only:

* ``intersection[u, l]``: pixels where unit u's mask and label l coincide, summed over images and over
  the segmentation layers of an image (a pixel labelled l in two layers counts twice, as in
  NetDissect-Lite); an image-level label (scene) covers the whole image, so it adds the mask's area;
* ``activation_cat[u, c]``: the term A of the IoU: the mask's area summed over the images where the
  mask overlaps at least one label whose primary category is c (an image-level label always overlaps);
* ``unit_area[u]``: the mask's area over all images;
* label areas (``truth``, :func:`label_areas`): pixels of each label, image-level labels counting
  ``sh * sw`` per image. Label 0 ("unlabelled") is never counted.

Masks follow the rule of :mod:`kdlib.dissect.upsample` (``upsample_bilinear(map) > T``, empty when the
map's maximum is ``<= T``); (image, unit) pairs whose maximum is ``<= T`` are skipped, and for the others
only the pixels that can pass are evaluated (:class:`~kdlib.dissect.upsample.SparseMasks`), exactly.

Labels are counted per vertical segment of a mask, not per pixel: the masks come as segments (a column's
mask pixels within one row cell, :meth:`~kdlib.dissect.upsample.SparseMasks.segments`) and each
segmentation layer as vertical runs of equal labels (:class:`~kdlib.dissect.labels.BatchLabels`), so a
segment's labels are the runs between those of its first and last pixel, with the rows they share
(usually one run per layer). Per chunk of firing (image, unit) pairs, a fixed number of large tensor
ops, whatever the number of units, images or labels: the sparse masks (about twenty ops), two lookups
of runs per (segment, layer), one ``index_add`` over (unit, label) for the intersections and one count
over (pair, category bits) for the A term. ``chunk_elements`` bounds every intermediate, so memory does
not grow with the number of images or units.
"""

from __future__ import annotations

import torch

from kdlib.dissect.labels import BatchLabels, from_pixel
from kdlib.dissect.upsample import UPSAMPLE, SparseMasks, sparse_masks, unit_mask, upsample_bilinear  # noqa: F401
from kdlib.errors import KdlibError

_BYTE_BITS = (torch.arange(256).unsqueeze(1) >> torch.arange(8)).bitwise_and_(1).float()  # [256, 8]


def label_areas(pixel: torch.Tensor, scalar: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Pixels per label in one batch: int64 [num_labels]; ``pixel`` [B, D, sh, sw], ``scalar`` [B, M]."""
    size = pixel.shape[-2] * pixel.shape[-1]
    counts = torch.bincount(pixel.reshape(-1), minlength=num_labels)
    counts = counts + torch.bincount(scalar.reshape(-1), minlength=num_labels) * size
    if counts.numel() > num_labels:
        raise KdlibError(f"label {counts.numel() - 1} in a batch; valid: label numbers below {num_labels}")
    counts[0] = 0
    return counts


def default_chunk(device: torch.device) -> int:
    """Intermediate values per chunk of (image, unit) pairs: 2**21 on the CPU, 2**24 on CUDA."""
    return 1 << 24 if device.type == "cuda" else 1 << 21


class IoUTally:
    """Streaming IoU counts for one layer: ``add(feats, labels)`` per batch, then :meth:`activation`.

    ``label_category``: int64 [num_labels], each label's primary category (index into the categories),
    -1 for label 0 and labels in no category. ``labels`` is a :class:`~kdlib.dissect.labels.BatchLabels`
    (or, for direct use, ``add(feats, pixel, scalar)`` with collated int64 tensors [B, D, sh, sw] and
    [B, M]). ``chunk_elements``: intermediate values per chunk of (image, unit) pairs (None: 2**21 on the
    CPU, 2**24 on CUDA); it bounds the memory of a batch, and a batch of a few thousand firing pairs is
    one or two chunks (few, large tensor ops).
    """

    def __init__(
        self,
        thresholds: torch.Tensor,
        label_category: torch.Tensor,
        num_categories: int,
        chunk_elements: int | None = None,
    ):
        self.thresholds = thresholds.detach().float()
        device = self.thresholds.device
        self.units = self.thresholds.numel()
        self.num_labels = label_category.numel()
        self.num_categories = num_categories
        self.label_category = label_category.to(device=device, dtype=torch.long)
        # each label's column for the overlap count: its category, or C (dropped) for label 0 and labels in none
        self.category_column = torch.where(self.label_category >= 0, self.label_category, num_categories)
        self.category_column[0] = num_categories
        # each label's category as a bit (0 for label 0 and labels in none), for the overlap count
        if num_categories > 62:
            raise KdlibError(f"{num_categories} categories; valid: at most 62")
        self.label_bits = torch.where(self.category_column < num_categories, 1 << self.category_column.clamp(max=62), 0)
        self.chunk_elements = int(default_chunk(device) if chunk_elements is None else chunk_elements)
        self.intersection = torch.zeros((self.units, self.num_labels), dtype=torch.long, device=device)
        self.activation_cat = torch.zeros((self.units, num_categories), dtype=torch.long, device=device)
        self.unit_area = torch.zeros(self.units, dtype=torch.long, device=device)
        self.pairs_seen = 0
        self.pairs_upsampled = 0  # pairs whose map passes the threshold (the only ones evaluated)
        self.pixels_masked = 0

    def add(self, feats: torch.Tensor, labels, scalar: torch.Tensor | None = None, maxima: torch.Tensor | None = None) -> None:
        """One batch: ``feats`` [B, U, h, w]; ``labels`` a :class:`BatchLabels` (or ``pixel`` [B, D, sh, sw]
        with ``scalar`` [B, M]); ``maxima`` [B, U], the maps' maxima when already computed."""
        if feats.dim() != 4 or feats.shape[1] != self.units:
            raise KdlibError(f"activations of shape {tuple(feats.shape)}; valid: [batch, {self.units}, h, w]")
        if not isinstance(labels, BatchLabels):
            labels = from_pixel(labels, scalar, self.num_labels).to(feats.device)
        if labels.batch != feats.shape[0]:
            raise KdlibError(f"{labels.batch} label images for {feats.shape[0]} activation maps; valid: the same batch")
        feats = feats.float()
        masks = sparse_masks(tuple(feats.shape[2:]), labels.size, feats.device)
        if maxima is None:
            maxima = feats.amax(dim=(2, 3))
        fires = maxima > self.thresholds  # [B, U]; a map with max <= T has an empty mask
        u_all, b_all = fires.t().nonzero(as_tuple=True)  # unit-major: each unit's counts are updated together
        self.pairs_seen += fires.numel()
        self.pairs_upsampled += b_all.numel()
        maps = feats.view(-1, *feats.shape[2:])
        per_chunk = max(1, self.chunk_elements // masks.elements_per_map)
        for start in range(0, b_all.numel(), per_chunk):
            b, u = b_all[start : start + per_chunk], u_all[start : start + per_chunk]
            self._add_pairs(maps.index_select(0, b * self.units + u), labels, b, u, masks)

    def _add_pairs(self, maps, labels: BatchLabels, b, u, masks: SparseMasks) -> None:
        L, C, k = self.num_labels, self.num_categories, b.numel()
        pair, x, first, last = masks.segments(maps, self.thresholds.index_select(0, u), self.chunk_elements)
        length = last - first + 1
        area = torch.zeros(k, dtype=torch.long, device=maps.device).index_add_(0, pair, length)  # mask pixels per pair
        self.pixels_masked += int(length.sum())
        overlap = torch.zeros((k, C), dtype=torch.bool, device=maps.device)
        if labels.depth > 0 and pair.numel() > 0:
            seg, label, count = _runs_under(labels, b.index_select(0, pair), x, first, last)
            keys = (u * L).index_select(0, pair.index_select(0, seg)).add_(label)  # unit * L + label
            self.intersection.view(-1).index_add_(0, keys, count)
            overlap |= _categories_met(pair.index_select(0, seg), self.label_bits.index_select(0, label), k, C)
        if labels.scalar.shape[1] > 0:  # an image-level label lies under every mask pixel of its image
            nums = labels.scalar.index_select(0, b)  # [k, M]
            weight = area.unsqueeze(1).expand_as(nums)
            self.intersection.view(-1).index_add_(0, (nums + (u * L).unsqueeze(1)).view(-1), weight.reshape(-1))
            met = torch.zeros((k, C + 1), dtype=torch.long, device=maps.device)
            met.scatter_add_(1, self.category_column[nums], (weight > 0).long())
            overlap |= met[:, :C] > 0
        self.intersection[:, 0] = 0  # label 0: unlabelled pixels, and the padding of image-level labels
        self.activation_cat.index_add_(0, u, overlap.long() * area.unsqueeze(1))
        self.unit_area.index_add_(0, u, area)

    def activation(self) -> torch.Tensor:
        """A per (unit, label): the A term of the label's primary category (0 for labels in none)."""
        return activation_per_label(self.activation_cat, self.label_category)


def _runs_under(labels: BatchLabels, image, x, first, last) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For vertical segments (image, column x, rows first..last): every (segment, layer, run) they cross,
    as ``(segment, label, pixels in common)``, for the layers each image has. The runs of a column are
    consecutive, so a segment crosses the runs from the one of its first pixel to the one of its last."""
    sh, sw = labels.size
    D, S = labels.depth, sh * sw
    depth = labels.depths.index_select(0, image)  # layers of each segment's image
    if int(depth.min()) == D:  # every image has every layer
        seg = torch.arange(image.numel(), device=image.device).repeat_interleave(D)
        layer = torch.arange(D, device=image.device).repeat(image.numel())
    else:
        seg = torch.repeat_interleave(torch.arange(image.numel(), device=image.device), depth)
        layer = torch.arange(seg.numel(), device=image.device) - (torch.cumsum(depth, 0) - depth).index_select(0, seg)
    if seg.numel() == 0:  # no segment lies in an image with a pixel label
        return seg, seg, seg
    plane = (image.index_select(0, seg) * D + layer).mul_(S)
    lo = labels.run_index.index_select(0, plane + (first * sw + x).index_select(0, seg)).long()
    hi = labels.run_index.index_select(0, plane.add_((last * sw + x).index_select(0, seg))).long()
    crossed = hi - lo + 1  # runs per (segment, layer); mostly 1
    if int(crossed.max()) > 1:
        pos = torch.repeat_interleave(torch.arange(lo.numel(), device=image.device), crossed)
        run = lo.index_select(0, pos) + torch.arange(pos.numel(), device=image.device) - (torch.cumsum(crossed, 0) - crossed).index_select(0, pos)
        seg = seg.index_select(0, pos)
    else:
        run = lo
    top = torch.maximum(first.index_select(0, seg), labels.run_first.index_select(0, run))
    bottom = torch.minimum(last.index_select(0, seg), labels.run_last.index_select(0, run))
    return seg, labels.run_label.index_select(0, run), bottom.sub_(top).add_(1)


def _categories_met(pair: torch.Tensor, bits: torch.Tensor, k: int, C: int) -> torch.Tensor:
    """[k, C] bool: whether some event of pair p has a label of category c (``bits``: bit c per event),
    one count over (pair, byte of bits) per 8 categories."""
    out = torch.zeros((k, C), dtype=torch.bool, device=pair.device)
    for first in range(0, C, 8):
        width = min(8, C - first)
        byte = (bits >> first).bitwise_and_((1 << width) - 1)
        seen = torch.zeros(k << width, dtype=torch.long, device=pair.device)
        seen.index_add_(0, (pair << width).add_(byte), torch.ones_like(byte))
        table = _BYTE_BITS[: 1 << width, :width].to(pair.device)
        out[:, first : first + width] = ((seen.view(k, 1 << width) > 0).float() @ table) > 0
    return out


def activation_per_label(activation_cat: torch.Tensor, label_category: torch.Tensor) -> torch.Tensor:
    cat = label_category.to(activation_cat.device)
    out = activation_cat[:, cat.clamp(min=0)]
    out[:, cat < 0] = 0
    return out


def iou_from_counts(intersection: torch.Tensor, activation: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU = I / (A + truth - I), float64, 0 where the union is empty."""
    inter = intersection.double()
    union = activation.double() + truth.double().unsqueeze(0) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


class TopExamples:
    """Per unit, the ``n`` probe images with the highest map maximum, with their maps (for pictures)."""

    def __init__(self, units: int, n: int, device=None):
        self.n = n
        self.values = torch.empty((units, 0), device=device)
        self.images = torch.empty((units, 0), dtype=torch.long, device=device)
        self.maps: torch.Tensor | None = None

    def add(self, feats: torch.Tensor, index: torch.Tensor, maxima: torch.Tensor | None = None) -> None:
        """One batch: ``feats`` [B, U, h, w], ``index`` [B] (probe image numbers); ``maxima`` [B, U], the
        maps' maxima when already computed."""
        feats = feats.float()
        B, U = feats.shape[:2]
        if maxima is None:
            maxima = feats.amax(dim=(2, 3))
        if self.maps is None:
            self.maps = feats.new_empty((U, 0) + tuple(feats.shape[2:]))
        old = self.values.shape[1]
        values = torch.cat([self.values, maxima.t()], dim=1)
        images = torch.cat([self.images, index.to(feats.device).unsqueeze(0).expand(U, B)], dim=1)
        keep = min(self.n, values.shape[1])
        top = torch.topk(values, keep, dim=1).indices  # sorted, highest first
        self.values = values.gather(1, top)
        self.images = images.gather(1, top)
        # the kept maps, each from the old ones or from this batch (no copy of the whole batch)
        units = torch.arange(U, device=feats.device).unsqueeze(1)
        maps = feats.transpose(0, 1)[units, (top - old).clamp(min=0)]  # [U, keep, h, w]
        if old > 0:
            from_old = (top < old).view(U, keep, 1, 1)
            maps = torch.where(from_old, self.maps[units, top.clamp(max=old - 1)], maps)
        self.maps = maps
