"""Network Dissection (Bau et al. 2017) as NetDissect-Lite computes it, exact and streaming.

For each unit k of a layer:

1. **Threshold** ``T_k``: the exact ``1 - q`` quantile of all the unit's activations (every spatial
   position of every probe image, at the feature map's own resolution), as ``torch.quantile`` defines it
   (linear interpolation). Pass 1 keeps each unit's top-k values on the device and merges them per
   batch (:mod:`kdlib.dissect.quantile`).
2. **Masks**: per image, the unit's map is upsampled to the segmentation resolution with bilinear
   interpolation (``F.interpolate``'s sampling, ``align_corners=False``, computed with fixed float32
   arithmetic so that the bits do not depend on the batch or the device:
   :func:`kdlib.dissect.upsample.upsample_bilinear`; NetDissect-Lite used scipy's ``imresize``, which is
   gone) and thresholded strictly: ``mask = map > T_k``; a map whose maximum is ``<= T_k`` has an empty
   mask (:func:`kdlib.dissect.upsample.unit_mask`). The tally evaluates only the pixels that can pass,
   with the same bits (:class:`kdlib.dissect.upsample.SparseMasks`).
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

**Settings** are one :class:`~kdlib.params.DissectParams` (its defaults are the only ones), with keyword
overrides for interactive use validated by the same dataclass: ``dissect(model, dataset)``,
``dissect(model, dataset, study.dissect)``, ``dissect(model, dataset, layers=["layer4"], quantile=0.01)``.

Both passes run every unit and every concept at once with tensor ops and several layers share each
forward pass. Pass 1 keeps the captured activations (on the device) while they fit in
``feature_cache_mb``; when every layer's activations fit, pass 2 reuses them and reads only the labels
(no second forward pass, no image decoding). When they do not fit, the kept ones are dropped as soon as
the budget is crossed and pass 2 runs the model again. Labels are decoded once per probe set into the
label cache (:mod:`kdlib.data.broden_labels`), which pass 2 reads. Memory does not grow with the number
of probe images beyond those budgets (apart from the exact top-k buffer, ``q`` of each unit's positions),
and what a run will allocate is estimated before it does (:mod:`kdlib.dissect.budget`). The model is put
in eval mode and moved to ``device`` for the run, then restored.

**Threads** (``threads``; CPU only): the run sets ``torch.set_num_threads(threads)`` and restores the old
value afterwards; None leaves torch's setting. The default is 1: a batch is a few hundred tensor ops,
each an OpenMP parallel region at 2 threads, and when the second thread is descheduled (another busy
process on the machine) every region waits for it. Measured on the shared 2-core machine: 2 threads
were 5x slower than 1 for the study's dissection and 5-22x slower in the Broden regime; alone on a
quiet machine 2 threads gain at most the forward pass's share. Raise it on a dedicated many-core machine.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlib.data.broden_labels import label_cache
from kdlib.device import resolve_device, torch_threads
from kdlib.dissect import budget, shard
from kdlib.dissect import cache as cache_mod
from kdlib.dissect.batches import FeatureCache, make_loader
from kdlib.dissect.labels import from_pixel
from kdlib.dissect.quantile import TopK
from kdlib.dissect.result import DissectResult, LayerResult
from kdlib.dissect.tally import UPSAMPLE, IoUTally, TopExamples, default_chunk
from kdlib.errors import KdlibError
from kdlib.models.nethook import capture_layers
from kdlib.params import DissectParams, replace_from_dict



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
    merge: Callable[[Any], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Pass 1: per layer, each unit's ``1 - quantile`` activation quantile (tensor [units] on ``device``).

    ``stat(units, n, quantile, device=...)`` builds the per-layer statistic (default: exact :class:`TopK`;
    the benchmark passes an approximate one); it needs ``add(feats)`` and ``threshold()``. ``keep``: a
    :class:`FeatureCache` that keeps the activations for pass 2 while they fit. ``merge(stat)``: called on
    each statistic before its threshold is read (sharded runs merge the ranks' top-k there,
    :mod:`kdlib.dissect.shard`); ``num_images`` counts every rank's images.
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
    for layer in layers:
        if merge is not None:
            merge(stats[layer])
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
    batches: Iterable[Mapping[str, Any]],
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

    A batch holds ``labels`` (a :class:`~kdlib.dissect.labels.BatchLabels`) or collated ``pixel`` and
    ``scalar`` tensors, ``index``, and ``image`` unless ``features`` (index, {layer: activations}) per
    batch, kept by pass 1 (:class:`~kdlib.dissect.batches.FeatureCache`), replace the model."""
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
            labels = batch.get("labels")
            if labels is None:
                labels = from_pixel(batch["pixel"], batch["scalar"], num_labels)
            labels = labels.to(device)
            truth += labels.areas
            for layer in layers:
                maxima = feats[layer].amax(dim=(2, 3))
                tallies[layer].add(feats[layer], labels, maxima=maxima)
                if examples > 0:
                    tops.setdefault(layer, TopExamples(feats[layer].shape[1], examples, device=device))
                    tops[layer].add(feats[layer], batch["index"], maxima)
    if shard.world()[1] > 1:
        _merge_ranks(tallies, tops, truth)
    return tallies, tops, truth


def _merge_ranks(tallies: Mapping[str, IoUTally], tops: Mapping[str, TopExamples], truth: torch.Tensor) -> None:
    """Sharded runs: every rank's counts summed and top examples merged (:mod:`kdlib.dissect.shard`)."""
    shard.sum_counts([truth])
    for layer, tally in tallies.items():
        seen = torch.tensor([tally.pairs_seen, tally.pairs_upsampled, tally.pixels_masked], device=truth.device)
        shard.sum_counts([tally.intersection, tally.activation_cat, tally.unit_area, seen])
        tally.pairs_seen, tally.pairs_upsampled, tally.pixels_masked = (int(v) for v in seen.tolist())
        if layer in tops:
            shard.merge_examples(tops[layer])


def resolve_settings(settings: DissectParams | None, overrides: Mapping[str, Any]) -> DissectParams:
    """``settings`` (default: ``DissectParams()``) with ``overrides`` validated by the same dataclass.

    Conveniences, not checks: a single layer name may be a string, a device a ``torch.device``."""
    if settings is None:
        settings = DissectParams()
    if not isinstance(settings, DissectParams):
        raise KdlibError(
            f"settings = {settings!r} is not DissectParams; valid: a kdlib.params.DissectParams, "
            "or keyword overrides such as layers=['layer4']"
        )
    overrides = dict(overrides)
    if isinstance(overrides.get("layers"), str):
        overrides["layers"] = [overrides["layers"]]
    if isinstance(overrides.get("device"), torch.device):
        overrides["device"] = str(overrides["device"])
    return replace_from_dict(settings, overrides, "dissect") if overrides else settings


def _at_image_size(dataset, image_size: int | None):
    """``dataset`` as the model sees it at ``image_size`` (a shallow copy when it differs; None: as it is)."""
    if image_size is None or getattr(dataset, "image_size", image_size) == image_size:
        return dataset
    if not hasattr(dataset, "image_size"):
        raise KdlibError(f"image_size = {image_size} but {type(dataset).__name__} cannot resize; valid: a BrodenDataset")
    view = copy.copy(dataset)
    view.image_size = image_size
    return view


def _threads(threads: int | None, device: torch.device):
    """The engine's thread policy (module docstring): torch's thread count for a CPU run, restored after."""
    return torch_threads(threads if device.type == "cpu" else None)


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


def dissect(
    model: nn.Module,
    dataset,
    settings: DissectParams | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    label_cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides: Any,
) -> DissectResult:
    """Dissect ``settings.layers`` of ``model`` on ``dataset`` (a :class:`~kdlib.data.broden.BrodenDataset`).

    ``settings``: a :class:`~kdlib.params.DissectParams` (default: its defaults); ``overrides``: any of its
    fields, validated by it (``layers``, ``quantile``, ``iou_threshold``, ``batch_size``, ``examples``,
    ``feature_cache_mb``, ``image_size``, ``num_workers``, ``device``, ``threads``). Returns a
    :class:`DissectResult`: ``result["layer4"].thresholds``, ``.iou``, ``.tally``, ``.detectors()``,
    ``.summary()``; ``result.save(folder)``. Results keep the counts, so other IoU thresholds can be
    asked later. ``cache_dir``: reuse per-layer results made with the same weights, layer, dataset,
    quantile and resolution (anything else rebuilds them). ``label_cache_dir``: where the probe set's
    decoded labels are kept (:mod:`kdlib.data.broden_labels`; default ``<cache_dir>/labels``, else a
    temporary folder for this call). ``result.meta["feature_cache"]`` says whether pass 1's activations
    fitted their budget. See the module docstring for the exact definition.
    """
    settings = resolve_settings(settings, overrides)
    if len(dataset) == 0:
        raise KdlibError(f"the probe set {getattr(dataset, 'root', '')} has no images; valid: at least one image")
    if len(dataset) < shard.world()[1]:
        raise KdlibError(
            f"the probe set {getattr(dataset, 'root', '')} has {len(dataset)} images for {shard.world()[1]} ranks; "
            "valid: at least one image per rank"
        )
    dataset = _at_image_size(dataset, settings.image_size)
    dev = resolve_device(settings.device, "dissect.device")
    layers = list(settings.layers)
    capture_layers(model, layers)  # validates the names (one line listing the model's layers)
    meta = _metadata(dataset, settings)
    kept = FeatureCache(settings.feature_cache_mb)
    with _threads(settings.threads, dev), _prepared(model, dev):
        meta["model_weights"] = cache_mod.weights_hash(model)
        meta["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
        keys = {layer: _cache_key(meta, layer, dataset, settings) for layer in layers}
        done: dict[str, LayerResult] = {}
        if cache_dir is not None:
            for layer in layers:
                hit = cache_mod.load(cache_dir, keys[layer])
                if hit is not None:
                    done[layer] = hit.with_iou_threshold(settings.iou_threshold)
        todo = [layer for layer in layers if layer not in done]
        if todo:
            with _label_folder(label_cache_dir, cache_dir) as folder:
                fresh = _dissect_layers(model, dataset, todo, settings, dev, folder, kept, meta, progress)
            for layer, res in fresh.items():
                if cache_dir is not None and shard.world()[0] == 0:  # one writer
                    cache_mod.store(cache_dir, keys[layer], res)
                done[layer] = res
    return DissectResult(
        {layer: done[layer] for layer in layers},
        meta={**meta, "layers_from_cache": [l for l in layers if done[l].from_cache], "feature_cache": kept.summary()},
    )


def _metadata(dataset, settings: DissectParams) -> dict[str, Any]:
    try:
        fingerprint = dataset.fingerprint()
    except OSError as exc:
        raise KdlibError(
            f"probe set {getattr(dataset, 'root', '')} cannot be read ({exc.__class__.__name__}: {getattr(exc, 'filename', exc)}); "
            "valid: a complete Broden folder"
        ) from None
    return {
        "dataset": str(getattr(dataset, "root", "")),
        "dataset_fingerprint": fingerprint,
        "images": len(dataset),
        "categories": list(dataset.categories),
        "quantile": settings.quantile,
        "iou_threshold": settings.iou_threshold,
        "upsample": UPSAMPLE,
        "ranks": shard.world()[1],
    }


def _cache_key(meta: Mapping[str, Any], layer: str, dataset, settings: DissectParams) -> dict[str, Any]:
    rows = getattr(dataset, "rows", None)
    return cache_mod.cache_key(
        model=meta["model_weights"],
        model_class=meta["model_class"],
        layer=layer,
        dataset=meta["dataset_fingerprint"],
        quantile=settings.quantile,
        image_size=getattr(dataset, "image_size", None),
        segmentation=sorted({(r.sh, r.sw) for r in rows}) if rows is not None else None,
        upsample=UPSAMPLE,
        examples=settings.examples,
    )


@contextlib.contextmanager
def _label_folder(label_cache_dir, cache_dir):
    """Where the decoded labels live: ``label_cache_dir``, else ``<cache_dir>/labels``, else a temporary
    folder removed when the run ends."""
    if label_cache_dir is not None or cache_dir is not None:
        yield label_cache_dir if label_cache_dir is not None else os.path.join(cache_dir, "labels")
        return
    rank, size = shard.world()
    with tempfile.TemporaryDirectory(prefix="kdlib-labels-") as tmp:
        if size > 1:  # the ranks of one machine share rank 0's folder
            names = [tmp]
            torch.distributed.broadcast_object_list(names, src=0)
            tmp = names[0]
        yield tmp
        shard.barrier()  # nobody removes the folder while another rank reads it


def _check_memory(model, dataset, layers, settings: DissectParams, dev) -> dict[str, tuple[int, int, int]]:
    """The estimates of :mod:`kdlib.dissect.budget`: the input side first, then (after one forward pass
    of the smallest image) the whole run. Returns each layer's [units, h, w]."""
    rows = getattr(dataset, "rows", None)
    image_hw = budget.input_shape(dataset, budget.largest_image(dataset))
    seg_hw = max(((r.sh, r.sw) for r in rows), key=lambda s: s[0] * s[1]) if rows else image_hw
    depth = max(sum(len(f) for f in r.pixel.values()) for r in rows) if rows else 1
    args = (settings, len(dataset), image_hw, seg_hw, depth)
    budget.check_fits(budget.estimate(*args, {}, int(dataset.num_labels), 0), dev, "reading the probe set")
    shapes = budget.probe_shapes(model, dataset, layers, dev)
    budget.check_fits(budget.estimate(*args, shapes, int(dataset.num_labels), default_chunk(dev)), dev, "dissection")
    return shapes


def _labels(dataset, folder, progress: bool, num_workers: int, fingerprint: str):
    """The label cache; in a sharded run rank 0 builds it while the others wait, then all read it."""
    rank, size = shard.world()
    if rank == 0:
        labels = label_cache(dataset, folder, progress, num_workers, fingerprint)
    shard.barrier()
    return labels if rank == 0 else label_cache(dataset, folder, False, num_workers, fingerprint)


def _dissect_layers(model, dataset, layers, settings: DissectParams, dev, label_folder, kept: FeatureCache, meta,
                    progress: bool) -> dict[str, LayerResult]:
    """Both passes over ``layers`` (none of them cached)."""
    _check_memory(model, dataset, layers, settings, dev)
    label_category = dataset.primary_category.clone().long()
    label_category[0] = -1
    labels = _labels(dataset, label_folder, progress, settings.num_workers, meta["dataset_fingerprint"])
    B, workers, part = settings.batch_size, settings.num_workers, shard.shard(len(dataset))
    merge = shard.merge_topk if shard.world()[1] > 1 else None
    loader = make_loader(dataset, B, dev, workers, images=True, indices=part)
    thresholds = compute_thresholds(model, loader, layers, settings.quantile, len(dataset), dev, progress,
                                    total=len(loader), keep=kept, merge=merge)
    features = kept.batches if kept.complete else None
    loader = make_loader(dataset, B, dev, workers, images=features is None, labels=labels, indices=part)
    try:
        tallies, tops, truth = compute_tallies(
            model, loader, layers, thresholds, label_category, len(dataset.categories), dev, settings.examples,
            progress, total=len(loader), features=features,
        )  # fmt: skip
    finally:
        features = None
        kept.clear()
    return {
        layer: _layer_result(layer, tallies[layer], tops.get(layer), truth, label_category, dataset, settings.quantile,
                             settings.iou_threshold, meta)
        for layer in layers
    }  # fmt: skip
