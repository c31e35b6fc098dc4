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

Masks (:func:`unit_mask` is the rule, :func:`upsample_bilinear` the upsampling): the unit's map is
upsampled bilinearly to the segmentation size and compared strictly, ``mask = map > T``; a map whose
maximum is ``<= T`` has an empty mask. Bilinear upsampling gives convex combinations of the map's
values, so that rule only states what exact arithmetic gives anyway (in float32 a convex combination of
equal values can round one ulp above them, so it is stated, as NetDissect-Lite's code applies it). Those
(image, unit) pairs are skipped without upsampling; with a top-0.5% threshold that is most of them.
The rest are upsampled in chunks bounded by ``chunk_elements``, so memory does not depend on the number
of images.

Per chunk of pairs the counts come from one ``nonzero`` of the masks, one gather of the labels under the
masked pixels and one ``bincount`` over (pair, label): the per-pair label counts give the intersections
(summed into units with ``index_add_``) and, through a 0/1 label-by-category matrix, which categories
each mask overlaps.
"""

from __future__ import annotations

import functools

import torch

from kdlib.errors import KdlibError

UPSAMPLE = "bilinear, align_corners=False; separable float32: columns then rows, w0*a + w1*b; empty when max <= T"


def _axis_weights(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling along one axis (``align_corners=False``, as ``F.interpolate``): output i reads
    source position ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, between ``i0`` and ``i1 = min(i0 + 1,
    n_in - 1)`` with weights ``w0 = 1 - w1``, ``w1 = position - i0`` (computed in float64, stored in
    float32). Returns ``i0, i1, w0, w1``."""
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = pos - i0
    w0 = 1 - w1
    return i0.to(device), i1.to(device), w0.float().to(device), w1.float().to(device)


class _Upsampler:
    """:func:`upsample_bilinear` for one (map size, output size), weights made once."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], device):
        self.out_size = tuple(out_size)
        self.y = _axis_weights(in_size[0], out_size[0], device)
        self.x = _axis_weights(in_size[1], out_size[1], device)

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = self.y, self.x
        cols = maps.transpose(1, 2)  # [k, w, h]: interpolate along x first, on the small map
        a = cols.index_select(1, x0).mul_(wx0.unsqueeze(1))
        a.add_(cols.index_select(1, x1).mul_(wx1.unsqueeze(1)))
        a = a.transpose(1, 2).contiguous()  # [k, h, sw]
        out = a.index_select(1, y0).mul_(wy0.unsqueeze(1))  # then along y: whole rows, [k, sh, sw]
        return out.add_(a.index_select(1, y1).mul_(wy1.unsqueeze(1)))


@functools.lru_cache(maxsize=64)
def _upsampler(in_size: tuple[int, int], out_size: tuple[int, int], device: torch.device) -> _Upsampler:
    return _Upsampler(in_size, out_size, device)


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``maps`` [k, h, w] (float32) to ``size`` = (sh, sw): [k, sh, sw].

    The sampling is ``F.interpolate(mode="bilinear", align_corners=False)``'s. The arithmetic is fixed:
    first along x, ``w0 * a + w1 * b``, then along y the same way, each product and sum rounded to float32
    on its own (elementwise ops, no fused multiply-add). So a map gets the same bits alone or in any
    batch, on the CPU or on CUDA, which ``F.interpolate`` does not promise (its CPU kernel already gives
    other last bits for a batch shaped [1, k, h, w] than for [k, 1, h, w]). It agrees with
    ``F.interpolate`` to a few float32 ulps (a test pins that).
    """
    if maps.dim() != 3:
        raise KdlibError(f"maps of shape {tuple(maps.shape)}; valid: [k, h, w]")
    return _upsampler(tuple(maps.shape[1:]), (int(size[0]), int(size[1])), maps.device)(maps.float())


def unit_mask(fmap: torch.Tensor, threshold, size: tuple[int, int]) -> torch.Tensor:
    """The mask of one unit on one image: bool [sh, sw]; ``fmap`` [h, w]. The rule of the module docstring:
    ``upsample_bilinear(fmap) > threshold``, empty when ``fmap.max() <= threshold``."""
    if not bool(fmap.max() > threshold):
        return torch.zeros(tuple(size), dtype=torch.bool, device=fmap.device)
    return upsample_bilinear(fmap[None], size)[0] > threshold


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
    -1 for label 0 and labels in no category. Labels must be below ``num_labels`` (the engine checks
    that with :func:`label_areas` before adding a batch). ``chunk_elements``: upsampled pixels per chunk
    (None: 2**18 on the CPU, where a chunk that fits the cache is faster, 2**24 on CUDA).
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
        known = (self.label_category >= 0).nonzero(as_tuple=True)[0]
        # 0/1 [labels, categories]: each label's primary category (a zero row for label 0 and labels in none)
        self.label_onehot = torch.zeros((self.num_labels, num_categories), device=device)
        self.label_onehot[known, self.label_category[known]] = 1.0
        if chunk_elements is None:
            chunk_elements = 1 << 24 if device.type == "cuda" else 1 << 18
        self.chunk_elements = int(chunk_elements)
        self.intersection = torch.zeros((self.units, self.num_labels), dtype=torch.long, device=device)
        self.activation_cat = torch.zeros((self.units, num_categories), dtype=torch.long, device=device)
        self.unit_area = torch.zeros(self.units, dtype=torch.long, device=device)
        self.pairs_seen = 0
        self.pairs_upsampled = 0

    def add(self, feats: torch.Tensor, pixel: torch.Tensor, scalar: torch.Tensor, maxima: torch.Tensor | None = None) -> None:
        """One batch: ``feats`` [B, U, h, w]; ``pixel`` int64 [B, D, sh, sw]; ``scalar`` int64 [B, M];
        ``maxima`` [B, U], the maps' maxima when already computed."""
        if feats.dim() != 4 or feats.shape[1] != self.units:
            raise KdlibError(f"activations of shape {tuple(feats.shape)}; valid: [batch, {self.units}, h, w]")
        feats = feats.float()
        size = (int(pixel.shape[-2]), int(pixel.shape[-1]))
        upsample = _upsampler(tuple(feats.shape[2:]), size, feats.device)
        if maxima is None:
            maxima = feats.amax(dim=(2, 3))
        fires = maxima > self.thresholds  # [B, U]; a map with max <= T has an empty mask
        b_all, u_all = fires.nonzero(as_tuple=True)
        self.pairs_seen += fires.numel()
        self.pairs_upsampled += b_all.numel()
        if b_all.numel() == 0:
            return
        scalar_counts = None
        if scalar.shape[1] > 0:  # [B, L]: image-level labels of each image (label 0 dropped)
            scalar_counts = torch.zeros((feats.shape[0], self.num_labels), dtype=torch.long, device=feats.device)
            scalar_counts.scatter_add_(1, scalar, torch.ones_like(scalar))
            scalar_counts[:, 0] = 0
        per_chunk = max(1, self.chunk_elements // max(1, size[0] * size[1]))
        for start in range(0, b_all.numel(), per_chunk):
            b, u = b_all[start : start + per_chunk], u_all[start : start + per_chunk]
            self._add_pairs(feats, pixel, scalar_counts, b, u, upsample)

    def _add_pairs(self, feats, pixel, scalar_counts, b, u, upsample: _Upsampler) -> None:
        L = self.num_labels
        k = b.numel()
        B, D = pixel.shape[:2]
        S = upsample.out_size[0] * upsample.out_size[1]
        mask = upsample(feats[b, u]).view(k, S) > self.thresholds[u].unsqueeze(1)  # [k, S]
        kk, ss = mask.nonzero(as_tuple=True)
        area = torch.bincount(kk, minlength=k)  # mask pixels per pair
        if D > 0 and kk.numel() > 0:
            # every layer's label under each masked pixel: pixel.view(-1)[(b * D + d) * S + s], [nnz, D]
            where = (b * (D * S)).index_select(0, kk).add_(ss)
            where = where.unsqueeze(1) + torch.arange(0, D * S, S, device=where.device)
            keys = pixel.reshape(-1)[where].add_((kk * L).unsqueeze(1))  # (pair, label) as pair * L + label
            counts = torch.bincount(keys.view(-1), minlength=k * L).view(k, L)  # labels under each mask
        else:
            counts = torch.zeros((k, L), dtype=torch.long, device=feats.device)
        if scalar_counts is not None:  # an image-level label lies under every mask pixel of its image
            counts += scalar_counts.index_select(0, b) * area.unsqueeze(1)
        counts[:, 0] = 0
        overlap = ((counts > 0).float() @ self.label_onehot) > 0  # [k, C]: mask meets a label of category c
        self.intersection.index_add_(0, u, counts)
        self.activation_cat.index_add_(0, u, overlap.long() * area.unsqueeze(1))
        self.unit_area.index_add_(0, u, area)

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
