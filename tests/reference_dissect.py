"""Reference implementations of Network Dissection, written from the definition (see
``kdlib/dissect/engine.py``) and independent of the engine: nothing here imports ``kdlib.dissect``.

Own pieces, each from the definition:

* :func:`hooked`: layer capture with one plain forward hook;
* :func:`primary_categories`: each label's primary category, read from ``c_<category>.csv`` with the
  ``csv`` module: the category where the label's ``coverage`` is largest (present with zero coverage
  still counts), ties to the later category in ``category.csv`` order; -1 for label 0 and labels in none;
* :func:`read_labels`: an image's segmentation layers and image-level labels, read from ``index.csv``
  and the PNGs (label = R + 256 G) with PIL;
* :func:`upsample`: bilinear upsampling (``align_corners=False``: output pixel i reads source position
  ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, between ``floor`` and ``min(floor + 1, n_in - 1)``, with
  weights ``w1 = pos - floor`` and ``w0 = 1 - w1`` computed in float64 and stored in float32), in the
  arithmetic the definition fixes (float32, along x then along y, ``w0 * a + w1 * b``), with NumPy;
  ``exact=True`` gives the same sampling in float64, for deriving bounds;
* :func:`mask`: ``upsample(map) > T``, empty when the map's maximum is ``<= T``;
* batches: images stacked in order, ``batch_size`` at a time.

:func:`naive` (the seed's loops: units, images, layers, labels, one IoU term at a time) and
:func:`per_image` (NetDissect-Lite's structure: per image, per unit whose map passes, one mask, labels
counted with ``bincount``) return a :class:`Counts` with a :class:`~kdlib.dissect.result.LayerResult`'s
raw counts and their own IoU. :func:`netdissect_lite_like` (at the end) adds NetDissect-Lite's
approximate quantile and PIL's resize, for the benchmark.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class Counts:
    thresholds: torch.Tensor  # [U]
    intersection: torch.Tensor  # [U, L]
    activation_cat: torch.Tensor  # [U, C]
    truth: torch.Tensor  # [L]
    label_category: torch.Tensor  # [L]
    unit_area: torch.Tensor | None = None  # [U]

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

    def best_per_category(self) -> torch.Tensor:
        """[U, C]: each unit's best IoU over the labels whose primary category is c (0 if none)."""
        iou = self.iou
        C = int(self.activation_cat.shape[1])
        out = torch.zeros((iou.shape[0], C), dtype=torch.float64)
        for c in range(C):
            members = (self.label_category == c).nonzero().flatten()
            if members.numel():
                out[:, c] = iou[:, members].max(dim=1).values
        return out

    def detector_units(self, iou_threshold: float) -> set[int]:
        iou = self.iou[:, self.label_category >= 0]
        return {u for u in range(iou.shape[0]) if iou.shape[1] and float(iou[u].max()) > iou_threshold}


# --------------------------------------------------------------------------------------------
# Own pieces
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def hooked(model, layer: str):
    """``with hooked(model, "layer4") as out: model(x); out[0]``: the layer's output (a copy)."""
    out: list[torch.Tensor] = []

    def keep(module, args, output) -> None:  # returns None: the output itself is left as it is
        out[:] = [output.detach().clone()]

    handle = dict(model.named_modules())[layer].register_forward_hook(keep)
    try:
        yield out
    finally:
        handle.remove()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def primary_categories(root, categories, num_labels: int) -> np.ndarray:
    """[num_labels] int64: the index (in ``categories``) of each label's primary category, or -1."""
    root = Path(root)
    coverage = np.full((len(categories), num_labels), -1.0)  # -1: absent from the category
    for ci, cat in enumerate(categories):
        for row in _rows(root / f"c_{cat}.csv"):
            number = int(row["number"])
            if 0 < number < num_labels:
                coverage[ci, number] = float(row.get("coverage") or 0.0)
    out = np.full(num_labels, -1, dtype=np.int64)
    for label in range(1, num_labels):
        best = -1
        for ci in range(len(categories)):  # ties: the later category wins (>=)
            if coverage[ci, label] >= 0 and (best < 0 or coverage[ci, label] >= coverage[best, label]):
                best = ci
        out[label] = best
    return out


def read_labels(root, categories, row: dict[str, str]) -> tuple[np.ndarray, list[int]]:
    """One ``index.csv`` row's segmentation layers [D, sh, sw] (int64, categories in ``categories``
    order, layers in cell order) and image-level labels, read from the PNGs."""
    layers, scalars = [], []
    for cat in categories:
        for item in (s for s in (row.get(cat) or "").split(";") if s):
            if item.isdigit():
                scalars.append(int(item))
            else:
                rgb = np.asarray(Image.open(Path(root) / "images" / item).convert("RGB"), dtype=np.int64)
                layers.append(rgb[..., 0] + 256 * rgb[..., 1])
    sh, sw = int(row["sh"]), int(row["sw"])
    return (np.stack(layers) if layers else np.zeros((0, sh, sw), np.int64)), scalars


def all_labels(root, categories, n: int | None = None) -> list[tuple[np.ndarray, list[int]]]:
    """:func:`read_labels` of the first ``n`` images (all by default)."""
    rows = _rows(Path(root) / "index.csv")
    return [read_labels(root, categories, row) for row in rows[:n]]


def _axis(n_in: int, n_out: int):
    pos = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = pos - i0
    return i0, i1, (1.0 - w1), w1


def upsample(fmap: np.ndarray, size: tuple[int, int], exact: bool = False) -> np.ndarray:
    """Bilinear upsampling of one map [h, w] to ``size`` (module docstring): float32 arithmetic as the
    definition fixes it, or float64 throughout with ``exact=True``."""
    dtype = np.float64 if exact else np.float32
    m = np.asarray(fmap, dtype=dtype)
    y0, y1, wy0, wy1 = _axis(m.shape[0], size[0])
    x0, x1, wx0, wx1 = _axis(m.shape[1], size[1])
    wy0, wy1, wx0, wx1 = (w.astype(dtype) for w in (wy0, wy1, wx0, wx1))
    a = m[:, x0] * wx0 + m[:, x1] * wx1  # along x: each product and the sum rounded to float32
    return a[y0] * wy0[:, None] + a[y1] * wy1[:, None]


def mask(fmap, threshold, size) -> np.ndarray:
    """The unit's mask: ``upsample(map) > T``, empty when the map's maximum is ``<= T``."""
    fmap = np.asarray(fmap, dtype=np.float32)
    threshold = np.float32(threshold)
    if not fmap.max() > threshold:
        return np.zeros(size, dtype=bool)
    return upsample(fmap, size) > threshold


def interpolate_mask(fmap, threshold, size) -> np.ndarray:
    """The mask with ``F.interpolate`` for the upsampling: one C call per map, as NetDissect-Lite's
    ``imresize``. Within a float32 ulp of :func:`mask` (so not bit for bit); the benchmark times
    ``per_image`` with it, so the reference pays what NetDissect-Lite's resize costs, not more."""
    fmap = torch.as_tensor(np.asarray(fmap, dtype=np.float32))
    if not bool(fmap.max() > float(threshold)):
        return np.zeros(tuple(size), dtype=bool)
    up = F.interpolate(fmap[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return (up > float(threshold)).numpy()


def dump_activations(model, dataset, layer: str, batch_size: int = 64) -> torch.Tensor:
    """Every probe image's activations of ``layer``: [N, U, h, w] (the full dump the engine avoids)."""
    chunks = []
    model.eval()
    image = getattr(dataset, "image_tensor", None) or (lambda i: dataset[i]["image"])
    with torch.no_grad(), hooked(model, layer) as out:
        for start in range(0, len(dataset), batch_size):
            model(torch.stack([image(i) for i in range(start, min(start + batch_size, len(dataset)))]))
            chunks.append(out[0].float())
    return torch.cat(chunks)


def quantiles(acts: torch.Tensor, quantile: float) -> torch.Tensor:
    """Each unit's exact ``1 - quantile`` quantile (``torch.quantile``, one unit at a time)."""
    return torch.stack([torch.quantile(acts[:, u].reshape(-1), 1.0 - quantile) for u in range(acts.shape[1])])


# --------------------------------------------------------------------------------------------
# The two references
# --------------------------------------------------------------------------------------------


def naive(model, dataset, layer: str, quantile: float, batch_size: int = 64, mask_fn=mask) -> Counts:
    acts = dump_activations(model, dataset, layer, batch_size)
    return naive_tally(acts, quantiles(acts, quantile), dataset, mask_fn)


def naive_tally(acts: torch.Tensor, thresholds: torch.Tensor, dataset, mask_fn=mask) -> Counts:
    """The seed's loops: for each unit, each image, each segmentation layer, each label present.
    ``mask_fn(map, threshold, size)`` makes one mask (default: :func:`mask`)."""
    N, U = acts.shape[:2]
    L, C = dataset.num_labels, len(dataset.categories)
    category = primary_categories(dataset.root, dataset.categories, L)
    items = all_labels(dataset.root, dataset.categories, N)
    truth = np.zeros(L, dtype=np.int64)
    for layers, scalars in items:
        for seg in layers:
            for label in np.unique(seg):
                if label:
                    truth[label] += int((seg == label).sum())
        for label in scalars:
            truth[label] += layers.shape[1] * layers.shape[2]
    inter = np.zeros((U, L), dtype=np.int64)
    act_cat = np.zeros((U, C), dtype=np.int64)
    area_of = np.zeros(U, dtype=np.int64)
    for u in range(U):
        for i, (layers, scalars) in enumerate(items):
            m = mask_fn(acts[i, u].numpy(), float(thresholds[u]), layers.shape[1:])
            area = int(m.sum())
            area_of[u] += area
            touched: set[int] = set()
            for seg in layers:
                for label in np.unique(seg):
                    if label == 0:
                        continue
                    both = int((m & (seg == label)).sum())
                    inter[u, label] += both
                    if both > 0 and category[label] >= 0:
                        touched.add(int(category[label]))
            for label in scalars:
                inter[u, label] += area
                if area > 0 and category[label] >= 0:
                    touched.add(int(category[label]))
            for c in touched:
                act_cat[u, c] += area
    return Counts(thresholds, torch.from_numpy(inter), torch.from_numpy(act_cat), torch.from_numpy(truth),
                  torch.from_numpy(category), torch.from_numpy(area_of))


def per_image(model, dataset, layer: str, quantile: float, batch_size: int = 64, mask_fn=mask) -> Counts:
    acts = dump_activations(model, dataset, layer, batch_size)
    thresholds = torch.quantile(acts.transpose(0, 1).reshape(acts.shape[1], -1), 1.0 - quantile, dim=1)
    return per_image_tally(acts, thresholds, dataset, mask_fn)


def per_image_tally(acts: torch.Tensor, thresholds: torch.Tensor, dataset, mask_fn=mask, labels=None) -> Counts:
    """NetDissect-Lite's tally loop: per image, per unit whose map passes the threshold, one mask
    (``mask_fn``) and ``bincount`` of the labels under it. ``labels``: :func:`all_labels`, if read."""
    N, U = acts.shape[:2]
    L, C = dataset.num_labels, len(dataset.categories)
    category = primary_categories(dataset.root, dataset.categories, L)
    labelcat = np.zeros((L, C), dtype=np.int64)  # one-hot of the primary category (correctly)
    labelcat[np.flatnonzero(category >= 0), category[category >= 0]] = 1
    labels = all_labels(dataset.root, dataset.categories, N) if labels is None else labels
    feats, thr = acts.numpy(), thresholds.numpy()
    maxima = feats.reshape(N, U, -1).max(axis=2)
    inter, act_cat = np.zeros((U, L), np.int64), np.zeros((U, C), np.int64)
    truth, area_of = np.zeros(L, np.int64), np.zeros(U, np.int64)
    for i, (layers, scalars) in enumerate(labels):
        size = layers.shape[1:]
        truth += np.bincount(layers.ravel(), minlength=L)[:L]
        for s in scalars:
            truth[s] += size[0] * size[1]
        for u in np.flatnonzero(maxima[i] > thr):
            m = mask_fn(feats[i, u], thr[u], size)
            area = int(np.count_nonzero(m))
            both = np.bincount(layers[:, m].ravel(), minlength=L)[:L] if layers.shape[0] else np.zeros(L, np.int64)
            for s in scalars:
                both[s] += area
            both[0] = 0
            inter[u] += both
            area_of[u] += area
            act_cat[u] += area * (both @ labelcat > 0)
    truth[0] = 0
    return Counts(thresholds, torch.from_numpy(inter), torch.from_numpy(act_cat), torch.from_numpy(truth),
                  torch.from_numpy(category), torch.from_numpy(area_of))


# --------------------------------------------------------------------------------------------
# A NetDissect-Lite-structured baseline (for the benchmark), written from its published structure
# --------------------------------------------------------------------------------------------


class QuantileSketch:
    """An approximate streaming quantile per unit, of the kind NetDissect-Lite uses (its ``vecquantile``):
    levels of buffers of ``capacity`` values, level l's values weighing ``2**l``; a full level is sorted
    and every other value (from a random offset) moves up a level. Memory ``units * capacity * log(n)``."""

    def __init__(self, units: int, capacity: int = 2048, seed: int = 1):
        self.units, self.capacity = units, capacity
        self.levels: list[np.ndarray] = [np.zeros((units, 0), np.float32)]
        self.rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        """``values`` [units, m]."""
        self.levels[0] = np.concatenate([self.levels[0], values.astype(np.float32)], axis=1)
        level = 0
        while self.levels[level].shape[1] > self.capacity:
            full = np.sort(self.levels[level], axis=1)
            keep = full.shape[1] - full.shape[1] % 2
            up = full[:, int(self.rng.integers(2)) : keep : 2]
            self.levels[level] = full[:, keep:]
            if level + 1 == len(self.levels):
                self.levels.append(np.zeros((self.units, 0), np.float32))
            self.levels[level + 1] = np.concatenate([self.levels[level + 1], up], axis=1)
            level += 1

    def quantile(self, level: float) -> np.ndarray:
        values = np.concatenate(self.levels, axis=1)
        weights = np.concatenate([np.full(l.shape[1], 2.0**i) for i, l in enumerate(self.levels)])
        order = np.argsort(values, axis=1)
        cum = np.cumsum(weights[order], axis=1)
        rank = np.argmax(cum >= level * cum[:, -1:], axis=1)
        return np.take_along_axis(values, order, axis=1)[np.arange(self.units), rank]


def pil_mask(fmap, threshold, size) -> np.ndarray:
    """The mask with PIL's bilinear resize of a float image (what ``scipy.misc.imresize(mode='F')``, which
    NetDissect-Lite called, did), ``> T``; empty when the map's maximum is ``<= T``."""
    fmap = np.asarray(fmap, dtype=np.float32)
    if not fmap.max() > threshold:
        return np.zeros(tuple(size), dtype=bool)
    return np.asarray(Image.fromarray(fmap, mode="F").resize((int(size[1]), int(size[0])), Image.BILINEAR)) > threshold


def netdissect_lite_like(model, dataset, layer: str, quantile: float, labels, batch_size: int = 64,
                         thresholds: torch.Tensor | None = None) -> Counts:
    """Dissection with NetDissect-Lite's structure: a forward pass keeping every activation, its
    approximate quantile (:class:`QuantileSketch`; or the ``thresholds`` given), then per image, for each
    unit whose map reaches its threshold, one bilinear resize of the map to the mask size
    (:func:`pil_mask`) and the labels under the mask counted with ``np.bincount``
    (:func:`per_image_tally`). ``labels``: :func:`all_labels`, decoded beforehand (the baseline is not
    charged for PNG decoding)."""
    acts = dump_activations(model, dataset, layer, batch_size)
    if thresholds is None:
        sketch = QuantileSketch(acts.shape[1])
        for start in range(0, acts.shape[0], batch_size):
            sketch.add(acts[start : start + batch_size].transpose(0, 1).reshape(acts.shape[1], -1).numpy())
        thresholds = torch.from_numpy(sketch.quantile(1.0 - quantile).astype(np.float32))
    return per_image_tally(acts, thresholds, dataset, pil_mask, labels)
