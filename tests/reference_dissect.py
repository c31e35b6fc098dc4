"""Two slow reference implementations of Network Dissection, written from the definition
(see ``kdlib/dissect/engine.py``), to check the engine against and to time it against.

* :func:`naive`: the seed's structure: dump every activation, one ``torch.quantile`` per unit, then
  Python loops over units, images, segmentation layers and the labels present, one IoU term at a time.
* :func:`per_image`: NetDissect-Lite's structure: dump every activation, quantiles, then a Python loop
  over images; within it a loop over units that resizes each unit's map on its own when its maximum
  passes the threshold, and counts labels under the mask with ``bincount``.

Both make each (unit, image) mask one map at a time with the definition's rule,
:func:`kdlib.dissect.tally.unit_mask` (bilinear upsampling with fixed float32 arithmetic; empty when the
map's maximum is ``<= T``): the upsampling is part of the definition, shared so that "exact" means the
same bits. ``tests/test_dissect.py`` pins that upsampling against ``F.interpolate`` on its own.

Both return a :class:`Counts` with the same fields as a :class:`~kdlib.dissect.result.LayerResult`'s
raw counts, and their own IoU (computed here, not by kdlib).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdlib.data.broden import collate_broden
from kdlib.models.nethook import capture_layers
from kdlib.dissect.tally import unit_mask


@dataclass
class Counts:
    thresholds: torch.Tensor  # [U]
    intersection: torch.Tensor  # [U, L]
    activation_cat: torch.Tensor  # [U, C]
    truth: torch.Tensor  # [L]
    label_category: torch.Tensor  # [L]

    @property
    def iou(self) -> torch.Tensor:
        U, L = self.intersection.shape
        out = torch.zeros((U, L), dtype=torch.float64)
        for l in range(1, L):
            c = int(self.label_category[l])
            if c < 0:
                continue
            inter = self.intersection[:, l].double()
            union = self.activation_cat[:, c].double() + float(self.truth[l]) - inter
            out[:, l] = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))
        return out

    def detector_units(self, iou_threshold: float) -> set[int]:
        iou = self.iou[:, self.label_category >= 0]
        return {u for u in range(iou.shape[0]) if iou.shape[1] and float(iou[u].max()) > iou_threshold}


def dump_activations(model, dataset, layer: str, batch_size: int = 64) -> torch.Tensor:
    """Every probe image's activations of ``layer``: [N, U, h, w] (the full dump the engine avoids)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_broden)
    chunks = []
    model.eval()
    with torch.no_grad(), capture_layers(model, [layer], clone=True) as captured:
        for batch in loader:
            model(batch["image"])
            chunks.append(captured[layer].float())
    return torch.cat(chunks)


def _label_category(dataset) -> torch.Tensor:
    cat = dataset.primary_category.clone().long()
    cat[0] = -1
    return cat


def naive(model, dataset, layer: str, quantile: float, batch_size: int = 64, mask_fn=unit_mask) -> Counts:
    acts = dump_activations(model, dataset, layer, batch_size)
    thresholds = torch.stack([torch.quantile(acts[:, u].reshape(-1), 1.0 - quantile) for u in range(acts.shape[1])])
    return naive_tally(acts, thresholds, dataset, mask_fn)


def naive_tally(acts: torch.Tensor, thresholds: torch.Tensor, dataset, mask_fn=unit_mask) -> Counts:
    """The seed's loops: for each unit, each image, each segmentation layer, each label present.
    ``mask_fn`` as in :func:`per_image_tally`."""
    N, U = acts.shape[:2]
    L, C = dataset.num_labels, len(dataset.categories)
    label_category = _label_category(dataset)
    items = [dataset[i] for i in range(N)]
    truth = torch.zeros(L, dtype=torch.long)
    for i, item in enumerate(items):
        sh, sw = dataset.rows[i].sh, dataset.rows[i].sw
        for segs in item["pixel"].values():
            for seg in segs:
                for label in seg.unique().tolist():
                    if label:
                        truth[label] += int((seg == label).sum())
        for labels in item["scalar"].values():
            for label in labels.tolist():
                if label:
                    truth[label] += sh * sw
    inter = torch.zeros((U, L), dtype=torch.long)
    act_cat = torch.zeros((U, C), dtype=torch.long)
    for u in range(U):
        for i, item in enumerate(items):
            size = (dataset.rows[i].sh, dataset.rows[i].sw)
            mask = mask_fn(acts[i, u], thresholds[u], size)
            area = int(mask.sum())
            touched: set[int] = set()
            for segs in item["pixel"].values():
                for seg in segs:
                    for label in seg.unique().tolist():
                        if label == 0:
                            continue
                        both = int((mask & (seg == label)).sum())
                        inter[u, label] += both
                        if both > 0 and label_category[label] >= 0:
                            touched.add(int(label_category[label]))
            for labels in item["scalar"].values():
                for label in labels.tolist():
                    if label == 0:
                        continue
                    inter[u, label] += area
                    if label_category[label] >= 0:
                        touched.add(int(label_category[label]))
            for c in touched:
                act_cat[u, c] += area
    return Counts(thresholds, inter, act_cat, truth, label_category)


def interpolate_mask(fmap: torch.Tensor, threshold, size) -> torch.Tensor:
    """The mask with ``F.interpolate`` for the upsampling: one C call per map, as NetDissect-Lite's
    ``imresize``. Within a float32 ulp of :func:`unit_mask` (so not bit for bit); the benchmark times
    ``per_image`` with it, so the reference pays what NetDissect-Lite's resize costs, not more."""
    if not bool(fmap.max() > threshold):
        return torch.zeros(tuple(size), dtype=torch.bool)
    return F.interpolate(fmap[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0] > threshold


def per_image(model, dataset, layer: str, quantile: float, batch_size: int = 64, mask_fn=unit_mask) -> Counts:
    acts = dump_activations(model, dataset, layer, batch_size)
    thresholds = torch.quantile(acts.transpose(0, 1).reshape(acts.shape[1], -1), 1.0 - quantile, dim=1)
    return per_image_tally(acts, thresholds, dataset, mask_fn)


def per_image_tally(acts: torch.Tensor, thresholds: torch.Tensor, dataset, mask_fn=unit_mask) -> Counts:
    """NetDissect-Lite's tally loop: per image, per unit whose map passes the threshold. ``mask_fn(map,
    threshold, size)`` makes one mask (default: the definition's :func:`unit_mask`)."""
    N, U = acts.shape[:2]
    L, C = dataset.num_labels, len(dataset.categories)
    label_category = _label_category(dataset)
    labelcat = torch.zeros((L, C), dtype=torch.long)  # one-hot of the primary category (correctly)
    known = label_category >= 0
    labelcat[torch.arange(L)[known], label_category[known]] = 1
    maxima = acts.amax(dim=(2, 3))
    inter = torch.zeros((U, L), dtype=torch.long)
    act_cat = torch.zeros((U, C), dtype=torch.long)
    truth = torch.zeros(L, dtype=torch.long)
    for i in range(N):
        item = dataset[i]
        sh, sw = dataset.rows[i].sh, dataset.rows[i].sw
        pixels = torch.cat(list(item["pixel"].values())) if item["pixel"] else None
        scalars = [l for labels in item["scalar"].values() for l in labels.tolist()]
        if pixels is not None:
            counts = torch.bincount(pixels.reshape(-1), minlength=L)
            counts[0] = 0
            truth += counts
        for s in scalars:
            if s:
                truth[s] += sh * sw
        for u in range(U):
            if maxima[i, u] <= thresholds[u]:
                continue
            ys, xs = mask_fn(acts[i, u], thresholds[u], (sh, sw)).nonzero(as_tuple=True)
            area = ys.numel()
            cat_hits = torch.zeros(C, dtype=torch.long)
            if pixels is not None:
                both = torch.bincount(pixels[:, ys, xs].reshape(-1), minlength=L)
                both[0] = 0
                inter[u] += both
                cat_hits += both @ labelcat
            for s in scalars:
                if s:
                    inter[u, s] += area
                    cat_hits += labelcat[s]
            act_cat[u] += area * (cat_hits > 0).long()
    return Counts(thresholds, inter, act_cat, truth, label_category)
