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

Masks: the unit's map is upsampled to the segmentation size with ``F.interpolate(mode="bilinear",
align_corners=False)`` and compared strictly, ``mask = map > T``. Bilinear upsampling gives convex
combinations of the map's values, so a map whose maximum is ``<= T`` has an empty mask: those
(image, unit) pairs are skipped without upsampling, which keeps the answer exact and, with a top-0.5%
threshold, skips most of the work. The rest are upsampled in chunks bounded by ``chunk_elements``, so
memory does not depend on the number of images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.errors import KdlibError

UPSAMPLE = "bilinear, align_corners=False"


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
    """Streaming IoU counts for one layer: ``add(feats, pixel, scalar)`` per batch, then :meth:`iou`.

    ``label_category``: int64 [num_labels], each label's primary category (index into the categories),
    -1 for label 0 and labels in no category.
    """

    def __init__(
        self,
        thresholds: torch.Tensor,
        label_category: torch.Tensor,
        num_categories: int,
        chunk_elements: int = 1 << 24,
    ):
        self.thresholds = thresholds.detach().float()
        device = self.thresholds.device
        self.units = self.thresholds.numel()
        self.num_labels = label_category.numel()
        self.num_categories = num_categories
        self.label_category = label_category.to(device=device, dtype=torch.long)
        self.chunk_elements = int(chunk_elements)
        self.intersection = torch.zeros((self.units, self.num_labels), dtype=torch.long, device=device)
        self.activation_cat = torch.zeros((self.units, num_categories), dtype=torch.long, device=device)
        self.unit_area = torch.zeros(self.units, dtype=torch.long, device=device)
        self.pairs_seen = 0
        self.pairs_upsampled = 0

    def add(self, feats: torch.Tensor, pixel: torch.Tensor, scalar: torch.Tensor) -> None:
        """One batch: ``feats`` [B, U, h, w]; ``pixel`` int64 [B, D, sh, sw]; ``scalar`` int64 [B, M]."""
        if feats.dim() != 4 or feats.shape[1] != self.units:
            raise KdlibError(f"activations of shape {tuple(feats.shape)}; valid: [batch, {self.units}, h, w]")
        feats = feats.float()
        size = tuple(pixel.shape[-2:])
        thr = self.thresholds
        fires = feats.amax(dim=(2, 3)) > thr  # [B, U]; a map with max <= T has an empty mask
        b_all, u_all = fires.nonzero(as_tuple=True)
        self.pairs_seen += fires.numel()
        self.pairs_upsampled += b_all.numel()
        per_chunk = max(1, self.chunk_elements // max(1, size[0] * size[1]))
        for start in range(0, b_all.numel(), per_chunk):
            self._add_pairs(feats, pixel, scalar, b_all[start : start + per_chunk], u_all[start : start + per_chunk], size)

    def _add_pairs(self, feats, pixel, scalar, b, u, size) -> None:
        L, C, U = self.num_labels, self.num_categories, self.units
        k = b.numel()
        maps = feats[b, u].unsqueeze(1)  # [k, 1, h, w]
        up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).squeeze(1)
        mask = up > self.thresholds[u].view(-1, 1, 1)  # [k, sh, sw]
        kk, yy, xx = mask.nonzero(as_tuple=True)
        area = torch.bincount(kk, minlength=k)  # mask pixels per pair
        overlap = torch.zeros(k * C, dtype=torch.bool, device=feats.device)
        if pixel.shape[1] > 0 and kk.numel() > 0:
            labels = pixel[b[kk], :, yy, xx]  # [nnz, D]: every layer's label under each masked pixel
            flat = (u[kk].unsqueeze(1) * L + labels).reshape(-1)
            self.intersection += torch.bincount(flat, minlength=U * L).view(U, L)
            cats = self.label_category[labels]
            hit = cats >= 0
            overlap[(kk.unsqueeze(1) * C + cats)[hit]] = True
        if scalar.shape[1] > 0:
            scal = scalar[b]  # [k, M]
            cats = self.label_category[scal]
            hit = cats >= 0
            overlap[(torch.arange(k, device=b.device).unsqueeze(1) * C + cats)[hit]] = True
            present = scal > 0
            self.intersection.view(-1).index_add_(
                0, (u.unsqueeze(1) * L + scal)[present], area.unsqueeze(1).expand_as(scal)[present]
            )
        self.activation_cat.index_add_(0, u, overlap.view(k, C).long() * area.unsqueeze(1))
        self.unit_area.index_add_(0, u, area)
        self.intersection[:, 0] = 0

    def activation(self) -> torch.Tensor:
        """A per (unit, label): the A term of the label's primary category (0 for labels in none)."""
        return activation_per_label(self.activation_cat, self.label_category)


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

    def add(self, feats: torch.Tensor, index: torch.Tensor) -> None:
        feats = feats.float()
        B, U = feats.shape[:2]
        maps_b = feats.transpose(0, 1)  # [U, B, h, w]
        if self.maps is None:
            self.maps = feats.new_empty((U, 0) + tuple(feats.shape[2:]))
        values = torch.cat([self.values, feats.amax(dim=(2, 3)).t()], dim=1)
        images = torch.cat([self.images, index.to(feats.device).unsqueeze(0).expand(U, B)], dim=1)
        maps = torch.cat([self.maps, maps_b], dim=1)
        keep = min(self.n, values.shape[1])
        top = torch.topk(values, keep, dim=1).indices  # sorted, highest first
        self.values = values.gather(1, top)
        self.images = images.gather(1, top)
        self.maps = maps[torch.arange(U, device=feats.device).unsqueeze(1), top]
