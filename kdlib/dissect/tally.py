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

Per chunk of firing (image, unit) pairs, a fixed number of large tensor ops, whatever the number of
units, images or labels: the sparse masks (a dozen ops), one lookup of the packed labels under the mask
pixels (:class:`~kdlib.dissect.labels.BatchLabels`), one ``scatter_add`` over (unit, label) for the
intersections, and one over (pair, category bits) for the A term. ``chunk_elements`` bounds every
intermediate, so memory does not grow with the number of images or units.
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
        if chunk_elements is None:
            chunk_elements = 1 << 24 if device.type == "cuda" else 1 << 21
        self.chunk_elements = int(chunk_elements)
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
            labels = from_pixel(labels, scalar, self.label_category.cpu(), self.num_categories).to(feats.device)
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
        pair, flat = masks.pixels(maps, self.thresholds.index_select(0, u), self.chunk_elements)
        self.pixels_masked += pair.numel()
        area = torch.bincount(pair, minlength=k)  # mask pixels per pair
        overlap = torch.zeros((k, C), dtype=torch.bool, device=maps.device)
        if pair.numel() > 0:
            rows = (b * (labels.size[0] * labels.size[1])).index_select(0, pair).add_(flat)  # batch pixel of each
            if labels.words.shape[1] > 0:
                keys = labels.unpack(rows).add_((u * L).index_select(0, pair).unsqueeze(1))  # unit * L + label
                self.intersection.view(-1).scatter_add_(0, keys.view(-1), _ones(keys.numel(), keys.device))
            overlap |= _categories_met(pair, labels.bits.index_select(0, rows), k, C)
        if labels.scalar.shape[1] > 0:  # an image-level label lies under every mask pixel of its image
            nums = labels.scalar.index_select(0, b)  # [k, M]
            weight = area.unsqueeze(1).expand_as(nums)
            self.intersection.view(-1).index_add_(0, (nums + (u * L).unsqueeze(1)).view(-1), weight.reshape(-1))
            met = torch.zeros((k, C + 1), dtype=torch.long, device=maps.device)
            met.scatter_add_(1, self.category_column[nums], (weight > 0).long())
            overlap |= met[:, :C] > 0
        self.intersection[:, 0] = 0  # label 0: unlabelled pixels, absent layers, padding of image-level labels
        self.activation_cat.index_add_(0, u, overlap.long() * area.unsqueeze(1))
        self.unit_area.index_add_(0, u, area)

    def activation(self) -> torch.Tensor:
        """A per (unit, label): the A term of the label's primary category (0 for labels in none)."""
        return activation_per_label(self.activation_cat, self.label_category)


def _ones(n: int, device) -> torch.Tensor:
    return torch.ones(1, dtype=torch.long, device=device).expand(n)


def _categories_met(pair: torch.Tensor, bits: torch.Tensor, k: int, C: int) -> torch.Tensor:
    """[k, C] bool: whether some pixel of pair p has a label of category c (``bits``: per pixel, bit c),
    one count over (pair, byte of bits) per 8 categories."""
    out = torch.zeros((k, C), dtype=torch.bool, device=pair.device)
    for first in range(0, C, 8):
        width = min(8, C - first)
        byte = (bits >> first).bitwise_and_((1 << width) - 1) if first else bits
        seen = torch.zeros(k << width, dtype=torch.long, device=pair.device)
        seen.scatter_add_(0, (pair << width).add_(byte), _ones(pair.numel(), pair.device))
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
