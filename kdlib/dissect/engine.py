"""Network Dissection (Bau et al. 2017) as NetDissect-Lite computes it, exact and streaming.

For each unit k of a layer:

1. **Threshold** ``T_k``: the exact ``1 - q`` quantile of all the unit's activations (every spatial
   position of every probe image, at the feature map's own resolution), as ``torch.quantile`` defines it
   (linear interpolation). Pass 1 keeps each unit's top-k values on the device and merges them per
   batch (:mod:`kdlib.dissect.quantile`).
2. **Masks**: per image, the unit's map is upsampled to the segmentation resolution with bilinear
   interpolation (``F.interpolate``'s sampling, ``align_corners=False``, computed with fixed float32
   arithmetic so that the bits do not depend on the batch or the device:
   :func:`kdlib.dissect.tally.upsample_bilinear`; NetDissect-Lite used scipy's ``imresize``, which is
   gone) and thresholded strictly: ``mask = map > T_k``; a map whose maximum is ``<= T_k`` has an empty
   mask (:func:`kdlib.dissect.tally.unit_mask`).
3. **Dataset-level IoU** for every (unit k, concept c), over the whole probe set (pass 2,
   :mod:`kdlib.dissect.tally`)::

       I = sum over images of |mask AND label_c|
       IoU = I / (A + sum over images of |label_c| - I)

   where A sums |mask| over the images in which the mask overlaps at least one label of c's category
   (NetDissect-Lite's rule). An image-level label (a scene) covers its whole image, so it always
   overlaps a non-empty mask. Label 0 ("unlabelled") is ignored. Each label belongs to its *primary
   category*, the category where it covers the most pixels (``BrodenDataset.primary_category``).
   NetDissect-Lite's own code, run on NumPy >= 1.23, fills every category in its ``onehot`` helper, so
   its A sums all categories and its IoUs come out too low; kdlib uses the primary category only.
   This is the *dataset-level* definition of Network Dissection, not the per-image IoU of the blog's
   pseudocode (which thresholds IoU image by image).
4. Each unit's best concept per category and overall; a unit is a **detector** when its best IoU is
   above ``iou_threshold`` (0.04 in Network Dissection; Han et al. use 0.05).

Both passes run every unit and every concept at once with tensor ops and several layers share each
forward pass. Pass 1 keeps the captured activations (on the device) while they fit in
``feature_cache_mb``; when every layer's activations fit, pass 2 reuses them and reads only the labels
(no second forward pass, no image decoding). When they do not fit, the kept ones are dropped as soon as
the budget is crossed and pass 2 runs the model again. So memory does not grow with the number of probe
images beyond that budget (apart from the exact top-k buffer, ``q`` of each unit's positions). The model
is put in eval mode and moved to ``device`` for the run, then restored.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kdlib.data.broden import collate_broden
from kdlib.dissect import cache as cache_mod
from kdlib.models.nethook import capture_layers
from kdlib.dissect.quantile import TopK, check_quantile
from kdlib.dissect.result import DissectResult, LayerResult
from kdlib.dissect.tally import UPSAMPLE, IoUTally, TopExamples, label_areas
from kdlib.device import resolve_device
from kdlib.errors import KdlibError


class _Part(Dataset):
    """One part of each probe item: ``"images"`` (pass 1) or ``"labels"`` (pass 2 on kept activations).

    Images come from ``dataset.image_tensor(i)`` (a :class:`BrodenDataset`: the model's input, resized
    and normalised exactly as ``dataset[i]["image"]``, no segmentation decoded), else from
    ``dataset[i]["image"]``. Labels of a Broden-like dataset (``rows`` and ``load_segmentation``) are read
    as ``BrodenDataset.__getitem__`` reads them, with an empty ``[0, sh, sw]`` placeholder for the image
    (nothing decoded); any other dataset's items are used whole."""

    def __init__(self, dataset, part: str):
        if part not in ("images", "labels"):
            raise ValueError(part)
        self.dataset = dataset
        self.part = part
        self.image_tensor = getattr(dataset, "image_tensor", None)
        rows = getattr(dataset, "rows", None)
        self.label_rows = rows if rows is not None and hasattr(dataset, "load_segmentation") else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.part == "images":
            image = self.image_tensor(i) if self.image_tensor is not None else self.dataset[i]["image"]
            return {"image": image, "index": i}
        if self.label_rows is None:
            return self.dataset[i]
        row = self.label_rows[i]
        return {
            "image": torch.empty((0, row.sh, row.sw)),
            "pixel": {cat: self.dataset.load_segmentation(i, cat) for cat in row.pixel},
            "scalar": {cat: torch.tensor(nums, dtype=torch.long) for cat, nums in row.scalar.items()},
            "index": i,
        }


def _collate_images(items):
    return {"image": torch.stack([it["image"] for it in items]), "index": torch.tensor([it["index"] for it in items])}


class _CollateLabels:
    """``collate_broden``, with a batch that has no pixel labels at all shaped [B, 0, sh, sw] from the
    index (so image-level labels cover ``sh * sw`` pixels, as in NetDissect-Lite)."""

    def __init__(self, dataset):
        self.rows = getattr(dataset, "rows", None)

    def __call__(self, items):
        batch = collate_broden(items)
        if batch["pixel"].shape[1] == 0 and self.rows is not None:
            sizes = {(self.rows[int(i)].sh, self.rows[int(i)].sw) for i in batch["index"]}
            if len(sizes) > 1:
                raise KdlibError(f"segmentation sizes {sorted(sizes)} in one batch; valid: one size per batch")
            batch["pixel"] = torch.zeros((len(items), 0, *sizes.pop()), dtype=torch.long)
        return batch


def make_loader(dataset, batch_size: int, parts: str, device: torch.device, num_workers: int = 0) -> DataLoader:
    """Batches in dataset order. ``parts``: ``"images"`` (image and index), ``"labels"`` (labels and
    index, images not decoded where the dataset allows) or ``"all"``."""
    if parts not in ("images", "labels", "all"):
        raise KdlibError(f"parts = {parts!r}; valid: images, labels, all")
    return DataLoader(
        dataset if parts == "all" else _Part(dataset, parts),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate_images if parts == "images" else _CollateLabels(dataset),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


class FeatureCache:
    """Pass 1's activations, kept for pass 2 while their total size stays within ``budget_mb``.

    ``add(index, feats)`` keeps one batch (``feats``: layer -> tensor, on its device). The first batch
    that would take the total over the budget drops everything kept and turns the cache off for the run,
    so it never holds more than the budget. ``complete`` says whether every batch was kept; ``batches``
    are (index, feats) pairs in the order they were added. ``budget_mb = 0`` keeps nothing."""

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self.batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.bytes = 0
        self.peak = 0
        self.state = "filling" if self.budget > 0 else "off"

    def add(self, index: torch.Tensor, feats: Mapping[str, torch.Tensor]) -> None:
        if self.state != "filling":
            return
        size = sum(t.numel() * t.element_size() for t in feats.values())
        if self.bytes + size > self.budget:
            self.clear()
            self.state = "over budget"
            return
        self.batches.append((index.cpu(), dict(feats)))
        self.bytes += size
        self.peak = max(self.peak, self.bytes)

    @property
    def complete(self) -> bool:
        """Every batch added so far is kept (and there was at least one)."""
        return self.state == "filling" and bool(self.batches)

    def clear(self) -> None:
        self.batches = []
        self.bytes = 0

    def summary(self) -> dict[str, Any]:
        """For the run's metadata: the budget, whether pass 2 could use kept activations, the most kept."""
        used = self.state == "filling" and self.peak > 0
        state = "used" if used else "not needed" if self.state == "filling" else self.state
        return {"budget_mb": self.budget / 2**20, "used": used, "state": state, "peak_mb": self.peak / 2**20}


def _features(captured, layer: str) -> torch.Tensor:
    feats = captured[layer]
    if not torch.is_floating_point(feats):
        raise KdlibError(f"layer {layer!r} output has dtype {feats.dtype}; valid: floating-point activations")
    feats = feats.float()
    if torch.isnan(feats).any():
        raise KdlibError(f"layer {layer!r} produced NaN activations; valid: a model with finite outputs")
    return feats


def compute_thresholds(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    layers: Sequence[str],
    quantile: float,
    num_images: int,
    device: torch.device,
    progress: bool = True,
    stat: Callable[..., Any] = TopK,
    total: int | None = None,
    keep: FeatureCache | None = None,
) -> dict[str, torch.Tensor]:
    """Pass 1: per layer, each unit's ``1 - quantile`` activation quantile (tensor [units] on ``device``).

    ``stat(units, n, quantile, device=...)`` builds the per-layer statistic (default: exact :class:`TopK`;
    the benchmark passes an approximate one); it needs ``add(feats)`` and ``threshold()``. ``keep``: a
    :class:`FeatureCache` that keeps the activations for pass 2 while they fit.
    """
    stats: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.no_grad(), capture_layers(model, layers, clone=True) as captured:
        for batch in tqdm(batches, total=total, desc="dissect pass 1/2: quantiles", disable=not progress, leave=False):
            model(batch["image"].to(device, non_blocking=True))
            kept = {}
            for layer in layers:
                feats = kept[layer] = _features(captured, layer)
                if layer not in stats:
                    shapes[layer] = tuple(feats.shape[1:])
                    units, h, w = shapes[layer]
                    stats[layer] = stat(units, num_images * h * w, quantile, device=device)
                elif tuple(feats.shape[1:]) != shapes[layer]:
                    raise KdlibError(
                        f"layer {layer!r} gave maps of shape {tuple(feats.shape[1:])} after {shapes[layer]}; "
                        "valid: one image size for the whole probe set (pass image_size= to BrodenDataset)"
                    )
                stats[layer].add(feats)
            if keep is not None:
                keep.add(batch["index"], kept)
    if not stats:
        raise KdlibError("the probe set yielded no batches; valid: a dataset with at least one image")
    return {layer: stats[layer].threshold() for layer in layers}


def _layer_features(model, batches, layers, device, features):
    """(batch, {layer: activations}) per batch: from a forward pass, or from ``features`` kept by pass 1
    (then the model is not run; the batches must come in the same order)."""
    if features is None:
        with torch.no_grad(), capture_layers(model, layers, clone=True) as captured:
            for batch in batches:
                model(batch["image"].to(device, non_blocking=True))
                yield batch, {layer: _features(captured, layer) for layer in layers}
        return
    kept = iter(features)
    for batch in batches:
        index, feats = next(kept, (None, None))
        if index is None or not torch.equal(index, batch["index"].cpu()):
            raise KdlibError("kept activations and label batches are out of step; valid: the same batches in both passes")
        yield batch, feats
    if next(kept, None) is not None:
        raise KdlibError("more kept activations than label batches; valid: the same batches in both passes")


def compute_tallies(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    layers: Sequence[str],
    thresholds: Mapping[str, torch.Tensor],
    label_category: torch.Tensor,
    num_categories: int,
    device: torch.device,
    examples: int = 8,
    progress: bool = True,
    total: int | None = None,
    chunk_elements: int | None = None,
    features: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]] | None = None,
) -> tuple[dict[str, IoUTally], dict[str, TopExamples], torch.Tensor]:
    """Pass 2: per layer, the IoU counts (:class:`IoUTally`) and top examples; and the label areas.

    ``features``: (index, {layer: activations}) per batch, kept by pass 1 (:class:`FeatureCache`); then
    the model is not run and ``batches`` need only the labels."""
    num_labels = label_category.numel()
    label_category = label_category.to(device)
    tallies = {
        layer: IoUTally(thresholds[layer].to(device), label_category, num_categories, chunk_elements) for layer in layers
    }
    tops: dict[str, TopExamples] = {}
    truth = torch.zeros(num_labels, dtype=torch.long, device=device)
    desc = "dissect pass 2/2: IoU" + (" (kept activations)" if features is not None else "")
    batches = tqdm(batches, total=total, desc=desc, disable=not progress, leave=False)
    with contextlib.closing(_layer_features(model, batches, layers, device, features)) as stream:
        for batch, feats in stream:
            pixel = batch["pixel"].to(device, non_blocking=True)
            scalar = batch["scalar"].to(device, non_blocking=True)
            truth += label_areas(pixel, scalar, num_labels)
            for layer in layers:
                maxima = feats[layer].amax(dim=(2, 3))
                tallies[layer].add(feats[layer], pixel, scalar, maxima)
                if examples > 0:
                    tops.setdefault(layer, TopExamples(feats[layer].shape[1], examples, device=device))
                    tops[layer].add(feats[layer], batch["index"], maxima)
    return tallies, tops, truth


def _check_args(layers, quantile, iou_threshold, batch_size, examples, feature_cache_mb) -> list[str]:
    check_quantile(quantile)
    if isinstance(feature_cache_mb, bool) or not isinstance(feature_cache_mb, (int, float)) or not 0 <= feature_cache_mb < float("inf"):
        raise KdlibError(f"feature_cache_mb = {feature_cache_mb!r} is not valid; valid: a size in MB >= 0 (0 turns the cache off)")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or not 0.0 <= iou_threshold < 1.0:
        raise KdlibError(f"iou_threshold = {iou_threshold!r} is out of range; valid: 0 <= iou_threshold < 1 (0.04 or 0.05)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KdlibError(f"batch_size = {batch_size!r} is not valid; valid: an integer >= 1")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise KdlibError(f"examples = {examples!r} is not valid; valid: an integer >= 0")
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers or not all(isinstance(l, str) and l for l in layers):
        raise KdlibError(f"layers = {layers!r} is not valid; valid: a list of module names such as ['layer4']")
    return layers


@contextlib.contextmanager
def _prepared(model: nn.Module, device: torch.device):
    """The model in eval mode on ``device`` (and, on CUDA, full fp32 convolutions and matmuls instead of
    TF32, so activations match the CPU's closely); everything restored afterwards."""
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    old_device = first.device if first is not None else None
    was_training = model.training
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    model.eval()
    if old_device is not None and old_device != device:
        model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield model
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        if old_device is not None and old_device != device:
            model.to(old_device)
        model.train(was_training)


def dissect(
    model: nn.Module,
    dataset,
    layers: Sequence[str] = ("layer3", "layer4"),
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    examples: int = 8,
    num_workers: int = 0,
    feature_cache_mb: float = 256,
) -> DissectResult:
    """Dissect ``layers`` of ``model`` on ``dataset`` (a :class:`~kdlib.data.broden.BrodenDataset`).

    Returns a :class:`DissectResult`: ``result["layer4"].thresholds``, ``.iou``, ``.tally``,
    ``.detectors()``, ``.summary()``; ``result.save(folder)``. ``quantile`` is the top share of
    activations kept per unit (0.005: top 0.5%); ``iou_threshold`` decides detectors (results keep the
    counts, so other thresholds can be asked later). ``device``: None picks CUDA when present.
    ``cache_dir``: reuse per-layer results made with the same weights, layer, dataset, quantile and
    resolution (anything else rebuilds them). ``examples``: top images kept per unit for pictures.
    ``feature_cache_mb``: keep pass 1's activations (on ``device``) up to this size, so that pass 2
    needs no second forward pass when they all fit (0: never keep them); the answer is the same either
    way. ``result.meta["feature_cache"]`` says whether they fitted.
    See the module docstring for the exact definition.
    """
    layers = _check_args(layers, quantile, iou_threshold, batch_size, examples, feature_cache_mb)
    if len(dataset) == 0:
        raise KdlibError(f"the probe set {getattr(dataset, 'root', '')} has no images; valid: at least one image")
    dev = resolve_device(device)
    capture_layers(model, layers)  # validates the names (one line listing the model's layers)
    categories = list(dataset.categories)
    label_category = dataset.primary_category.clone().long()
    label_category[0] = -1
    try:
        fingerprint = dataset.fingerprint()
    except OSError as exc:
        raise KdlibError(
            f"probe set {getattr(dataset, 'root', '')} cannot be read ({exc.__class__.__name__}: {getattr(exc, 'filename', exc)}); "
            "valid: a complete Broden folder"
        ) from None
    rows = getattr(dataset, "rows", None)
    seg_sizes = sorted({(r.sh, r.sw) for r in rows}) if rows is not None else None
    meta = {
        "dataset": str(getattr(dataset, "root", "")),
        "dataset_fingerprint": fingerprint,
        "images": len(dataset),
        "categories": categories,
        "quantile": quantile,
        "iou_threshold": iou_threshold,
        "upsample": UPSAMPLE,
    }

    with _prepared(model, dev):
        weights = cache_mod.weights_hash(model)
        meta["model_weights"] = weights
        meta["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
        keys = {
            layer: cache_mod.cache_key(
                model=weights,
                model_class=meta["model_class"],
                layer=layer,
                dataset=fingerprint,
                quantile=quantile,
                image_size=getattr(dataset, "image_size", None),
                segmentation=seg_sizes,
                upsample=UPSAMPLE,
                examples=examples,
            )
            for layer in layers
        }
        done: dict[str, LayerResult] = {}
        if cache_dir is not None:
            for layer in layers:
                hit = cache_mod.load(cache_dir, keys[layer])
                if hit is not None:
                    done[layer] = hit.with_iou_threshold(iou_threshold)
        todo = [layer for layer in layers if layer not in done]
        kept = FeatureCache(feature_cache_mb)
        if todo:
            loader = make_loader(dataset, batch_size, "images", dev, num_workers)
            thresholds = compute_thresholds(
                model, loader, todo, quantile, len(dataset), dev, progress, total=len(loader), keep=kept
            )
            features = kept.batches if kept.complete else None
            loader = make_loader(dataset, batch_size, "labels" if features is not None else "all", dev, num_workers)
            try:
                tallies, tops, truth = compute_tallies(
                    model, loader, todo, thresholds, label_category, len(categories), dev, examples, progress,
                    total=len(loader), features=features,
                )
            finally:
                features = None
                kept.clear()
            for layer in todo:
                res = _layer_result(layer, tallies[layer], tops.get(layer), truth, label_category, dataset, quantile, iou_threshold, meta)
                if cache_dir is not None:
                    cache_mod.store(cache_dir, keys[layer], res)
                done[layer] = res
    return DissectResult(
        {layer: done[layer] for layer in layers},
        meta={**meta, "layers_from_cache": [l for l in layers if done[l].from_cache], "feature_cache": kept.summary()},
    )


def _layer_result(layer, tally: IoUTally, top: TopExamples | None, truth, label_category, dataset, quantile, iou_threshold, meta) -> LayerResult:
    U = tally.units
    if top is None or top.maps is None:
        top_images = torch.empty((U, 0), dtype=torch.long)
        top_values = torch.empty((U, 0))
        top_maps = torch.empty((U, 0, 0, 0))
    else:
        top_images, top_values, top_maps = top.images.cpu(), top.values.cpu(), top.maps.cpu()
    layer_meta = {
        **meta,
        "pairs_seen": tally.pairs_seen,
        "pairs_upsampled": tally.pairs_upsampled,
    }
    return LayerResult(
        layer=layer,
        thresholds=tally.thresholds.cpu(),
        intersection=tally.intersection.cpu(),
        activation_cat=tally.activation_cat.cpu(),
        unit_area=tally.unit_area.cpu(),
        truth=truth.cpu(),
        label_category=label_category.cpu(),
        label_names=list(dataset.label_names),
        categories=list(dataset.categories),
        quantile=quantile,
        iou_threshold=iou_threshold,
        top_images=top_images,
        top_values=top_values,
        top_maps=top_maps,
        meta=layer_meta,
    )
