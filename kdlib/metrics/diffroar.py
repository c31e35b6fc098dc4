"""DiffROAR (Shah, Jain & Netrapalli 2021, arXiv 2102.12781; their code ``harshays/inputgradients``).

For a fraction k of input coordinates (channel x height x width, each channel of each image ranked on
its own by |attribution|), the top-k copy of the data keeps the k largest coordinates and the bottom-k
copy the k smallest; every other coordinate is set to one scalar, the mean of the training data as the
network sees it (``fill``; about 0 after normalisation, not exactly). A fresh network of the same
architecture is retrained on each masked training set and tested on the test set masked the same way
(the attributions of both come from the network being scored; ``train_images``: the first n training
images in a class-balanced order, for a short retraining)::

    PredPower(k, side) = test accuracy of the network retrained on the side's masked data
    DiffROAR(k)        = PredPower(k, top) - PredPower(k, bottom)

With ``runs`` retrainings per side the difference is averaged over all (top run, bottom run) pairs, as
the authors' code does, and its standard deviation over pairs reported. DiffROAR > 0 means the
attribution ranks discriminative coordinates first; the random-attribution control (uniform random
ranks, ``random_control``) gives about 0. A layer method's map (one channel) ranks all three channels
alike. Retraining is an injected callable (``retrain(train_images, train_labels, test_images,
test_labels, seed) -> accuracy``, :class:`kdlib.train.retrain.Retrainer` in a study), so this module
does not depend on kdlib.train. Keep-masks (the masked data sets, as packed bits) are cached in
``cache_dir`` under a key of the network's weights, the method, the data, k and the side; the retrainer
caches its own results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from kdlib import atomic
from kdlib.data.masks import balanced_order
from kdlib.digest import json_digest, state_digest, tensor_digest
from kdlib.errors import KdlibError
from kdlib.metrics import saliency
from kdlib.metrics.base import Metric, MetricInputs, Scores
from kdlib.metrics.checks import check_aligned, check_maps
from kdlib.params.metrics import DiffRoarParams, check_fraction
from kdlib.registry import METRICS

SIDES = ("top", "bottom")
RANDOM = "random"
GIVEN = "given"
Retrain = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], float]


def keep_mask(scores: torch.Tensor, k: float, side: str) -> torch.Tensor:
    """bool [N, C, H, W]: per image and channel, the ``round(k * H * W)`` (at least 1) coordinates with
    the largest (``top``) or smallest (``bottom``) score; ties broken by position (stable sort)."""
    check_fraction([k], "k")
    if side not in SIDES:
        raise KdlibError(f"side = {side!r} is not valid; valid: {', '.join(SIDES)}")
    n, c, h, w = scores.shape
    count = max(1, int(round(k * h * w)))
    flat = scores.reshape(n, c, h * w)
    order = torch.argsort(flat, dim=-1, descending=side == "top", stable=True)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(-1, order[..., :count], True)
    return keep.reshape(n, c, h, w)


def masked(images: torch.Tensor, keep: torch.Tensor, fill: float) -> torch.Tensor:
    """``images`` with every coordinate outside ``keep`` set to ``fill``."""
    return torch.where(keep, images, torch.full_like(images, fill))


def pair_stats(top: list[float], bottom: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof 0) of ``top[i] - bottom[j]`` over all pairs (i, j)."""
    diffs = torch.tensor(top, dtype=torch.float64)[:, None] - torch.tensor(bottom, dtype=torch.float64)[None, :]
    return float(diffs.mean()), float(diffs.std(unbiased=False)) if diffs.numel() > 1 else 0.0


class _KeepCache:
    """Keep-masks on disk as packed bits, keyed by what they are made from."""

    def __init__(self, root: Optional[Path]):
        self.root = Path(root) if root is not None else None

    def path(self, key: dict) -> Optional[Path]:
        return None if self.root is None else self.root / f"keep-{json_digest(key)}.npy"

    def load(self, key: dict, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        bits = np.unpackbits(np.load(path))[: math.prod(shape)]
        return torch.from_numpy(bits.astype(bool)).reshape(shape)

    def save(self, key: dict, keep: torch.Tensor) -> None:
        path = self.path(key)
        if path is not None:
            with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, np.packbits(keep.numpy().reshape(-1)))


@METRICS.register("diffroar")
class DiffRoar(Metric):
    """DiffROAR(k) curve and its mean, for the network's attribution and the random control."""

    name = "diffroar"
    params_class = DiffRoarParams
    directions = {"diffroar": "higher", "diffroar_sd": "none", "top_accuracy": "none", "bottom_accuracy": "none"}

    def spec(self, default_layer: Optional[str] = None) -> saliency.AttributionSpec:
        return saliency.parse_method(self.params.method, "metrics.diffroar.method", default_layer)

    def fill_value(self, train_images: torch.Tensor) -> float:
        return float(train_images.double().mean()) if self.params.fill is None else float(self.params.fill)

    def __call__(self, model, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, retrain: Retrain, cache_dir: str | Path | None = None, batch_size: int = 256,
                 device="cpu", default_layer: Optional[str] = None, progress: bool = False,
                 attributions: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Scores:
        """Scores by setting: ``<method>/k=<k>`` and ``<method>/mean`` (and ``random/...`` for the control).

        ``attributions`` (train maps, test maps) replaces computing them from ``model`` (setting
        ``given/...``; ``model`` may then be None), as Quantus takes precomputed ``a_batch``."""
        if tuple(train_images.shape[1:]) != tuple(test_images.shape[1:]):
            raise KdlibError(f"train images {tuple(train_images.shape[1:])} and test images {tuple(test_images.shape[1:])} "
                             "differ in size; valid: images of one size")
        spec = self.spec(default_layer)
        if self.params.train_images is not None and self.params.train_images < len(train_images):
            keep = torch.sort(balanced_order(train_labels)[: self.params.train_images]).values
            train_images, train_labels = train_images[keep], train_labels[keep]
            attributions = None if attributions is None else (attributions[0][keep], attributions[1])
        data = {"train": tensor_digest(train_images), "train_labels": tensor_digest(train_labels),
                "test": tensor_digest(test_images), "test_labels": tensor_digest(test_labels)}
        cache = _KeepCache(cache_dir)
        fill = self.fill_value(train_images)
        if attributions is not None:
            given = {"train": attributions[0], "test": attributions[1]}
            for split, maps in given.items():
                check_maps(maps, f"diffroar {split} attributions")
                check_aligned(maps, train_images if split == "train" else test_images, f"diffroar {split} attributions")
            sources = [(GIVEN, {"given": {k: tensor_digest(v) for k, v in given.items()}},
                        lambda split, x, y: given[split])]
        else:
            sources = [(spec.label, {"weights": state_digest(model), "method": spec.plain()},
                        lambda split, x, y: saliency.attribute(model, x, y, spec, batch_size, device))]
        if self.params.random_control:
            sources.append((RANDOM, {"random": self.params.seed}, None))
        out: Scores = {}
        bar = tqdm(total=len(sources) * len(self.params.ks) * 2 * self.params.runs, desc="diffroar", disable=not progress, leave=False)
        for label, source_key, attribute in sources:
            keeps = self._keep_masks(cache, {**source_key, "data": data}, attribute, train_images, train_labels, test_images, test_labels)
            out.update(self._curve(label, keeps, fill, train_images, train_labels, test_images, test_labels, retrain, bar))
        bar.close()
        return out

    def _keep_masks(self, cache: _KeepCache, key: dict, attribute, *data) -> dict:
        """{(k, side, split): keep mask}, read from the cache or computed from the attributions."""
        train_images, train_labels, test_images, test_labels = data
        splits = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
        wanted = [(k, side, split) for k in self.params.ks for side in SIDES for split in splits]
        found = {w: cache.load({**key, "k": w[0], "side": w[1], "split": w[2]}, tuple(splits[w[2]][0].shape)) for w in wanted}
        if all(v is not None for v in found.values()):
            return found
        scores = {split: self._scores(attribute, x, y, split) for split, (x, y) in splits.items()}
        for k, side, split in wanted:
            keep = keep_mask(scores[split], k, side)
            cache.save({**key, "k": k, "side": side, "split": split}, keep)
            found[(k, side, split)] = keep
        return found

    def _scores(self, attribute, images: torch.Tensor, labels: torch.Tensor, split: str) -> torch.Tensor:
        """|attribution| expanded to the images' channels, or uniform random scores for the control."""
        if attribute is None:
            gen = torch.Generator().manual_seed(int(json_digest({"random": self.params.seed, "split": split}, 15), 16))
            return torch.rand(images.shape, generator=gen)
        maps = check_maps(attribute(split, images, labels), "diffroar attributions").abs()
        return maps.expand_as(images) if maps.shape[1] == 1 else maps

    def _curve(self, label: str, keeps: dict, fill: float, train_images, train_labels, test_images, test_labels,
               retrain: Retrain, bar) -> Scores:
        out: Scores = {}
        for k in self.params.ks:
            acc = {side: [] for side in SIDES}
            for side in SIDES:
                x_train = masked(train_images, keeps[(k, side, "train")], fill)
                x_test = masked(test_images, keeps[(k, side, "test")], fill)
                for run in range(self.params.runs):
                    acc[side].append(float(retrain(x_train, train_labels, x_test, test_labels, self.run_seed(run))))
                    bar.update(1)
            mean, sd = pair_stats(acc["top"], acc["bottom"])
            out[f"{label}/k={k:g}"] = {"diffroar": mean, "diffroar_sd": sd, "top_accuracy": sum(acc["top"]) / len(acc["top"]),
                                       "bottom_accuracy": sum(acc["bottom"]) / len(acc["bottom"])}
        out[f"{label}/mean"] = {"diffroar": sum(out[f"{label}/k={k:g}"]["diffroar"] for k in self.params.ks) / len(self.params.ks)}
        return out

    def run_seed(self, run: int) -> int:
        """The seed of retraining run ``run`` (the same for both sides and every k: paired initialisations)."""
        return int(json_digest({"diffroar": self.params.seed, "run": run}, 15), 16)

    def evaluate(self, inputs: MetricInputs) -> Scores:
        if inputs.train is None or inputs.retrain is None:
            raise KdlibError("diffroar needs the training split and a retrain callable; valid: run it through the metrics step")
        return self(inputs.model, inputs.train.images, inputs.train.labels, inputs.data.images, inputs.data.labels,
                    inputs.retrain, inputs.cache_dir, inputs.maps.batch_size, inputs.maps.device, inputs.default_layer,
                    inputs.progress)
