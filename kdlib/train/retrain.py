"""Retraining on in-memory tensors: what DiffROAR's predictive power is measured with.

``Retrainer(model, num_classes, params)`` is the callable :class:`kdlib.metrics.diffroar.DiffRoar`
takes (kdlib.metrics never imports kdlib.train): ``retrain(train_images, train_labels, test_images,
test_labels, seed) -> test accuracy`` trains a fresh network of architecture ``model`` from scratch on
the given tensors for the short schedule of :class:`kdlib.params.metrics.RetrainParams` and returns its
accuracy on the test tensors. Batches are drawn by indexing the tensors (no per-image Python work, no
augmentation: masked coordinates stay where the attribution put them); initial weights and batch order
come from ``derive(seed, "retrain", ...)``; it runs in bfloat16 autocast with channels_last (``amp``,
``channels_last``), on ``threads`` torch threads on the CPU.

With ``cache_dir``, every result (accuracy, final weights, seconds) is stored under a key made of
everything it depends on (architecture, schedule, seed, and the digests of the four tensors), written
atomically, and read back instead of retraining. ``seconds`` and ``trained`` / ``reused`` report the cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdlib import atomic
from kdlib.device import resolve_device, torch_threads
from kdlib.digest import json_digest, tensor_digest
from kdlib.errors import KdlibError
from kdlib.models import build
from kdlib.params.metrics import RetrainParams
from kdlib.params.validate import to_dict
from kdlib.train.optim import build_optimizer, build_scheduler
from kdlib.train.seeding import derive, deterministic

EVAL_BATCH = 512


class Retrainer:
    """``retrain(train_images, train_labels, test_images, test_labels, seed) -> test accuracy``."""

    def __init__(self, model: str, num_classes: int, params: RetrainParams | None = None,
                 model_kwargs: Optional[dict[str, Any]] = None, cache_dir: str | Path | None = None):
        self.model, self.num_classes = model, num_classes
        self.model_kwargs = dict(model_kwargs or {})
        self.params = params or RetrainParams()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = resolve_device(self.params.device, "metrics.diffroar.retrain.device")
        build(model, num_classes, **self.model_kwargs)  # an unknown model: one line now, not after the attributions
        self.seconds, self.trained, self.reused = 0.0, 0, 0

    def get_params(self) -> dict[str, Any]:
        spec = to_dict(self.params)
        spec.pop("device")
        return {"model": self.model, "model_kwargs": self.model_kwargs, "num_classes": self.num_classes, **spec}

    def __call__(self, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, seed: int) -> float:
        if len(train_images) != len(train_labels) or len(test_images) != len(test_labels) or len(train_images) < 2:
            raise KdlibError(f"retrain: {len(train_images)} training images with {len(train_labels)} labels, {len(test_images)} "
                             f"test images with {len(test_labels)} labels; valid: as many labels as images, 2 or more training images")
        path = self._cache_path(train_images, train_labels, test_images, test_labels, seed)
        if path is not None and path.is_file():
            self.reused += 1
            return float(torch.load(path, map_location="cpu", weights_only=True)["accuracy"])
        start = time.perf_counter()
        with torch_threads(self.params.threads if self.device.type == "cpu" else None), deterministic(True):
            net = self._train(train_images, train_labels, seed)
            accuracy = self._accuracy(net, test_images, test_labels)
        took = time.perf_counter() - start
        self.seconds += took
        self.trained += 1
        if path is not None:
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            with atomic.atomic_path(path) as tmp:
                torch.save({"accuracy": accuracy, "seconds": took, "seed": seed, "state": state}, tmp)
        return accuracy

    def _cache_path(self, *tensors_and_seed) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        *tensors, seed = tensors_and_seed
        key = json_digest({"retrain": self.get_params(), "seed": seed, "data": [tensor_digest(t) for t in tensors]})
        return self.cache_dir / f"retrain-{key}.pt"

    def _network(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(seed, "retrain", "init"))
            net = build(self.model, self.num_classes, **self.model_kwargs)
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.params.channels_last else net

    def _train(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.nn.Module:
        p = self.params
        net = self._network(seed).train()
        optimizer = build_optimizer(net.parameters(), p.optimizer, "metrics.diffroar.retrain.optimizer")
        scheduler = build_scheduler(optimizer, p.schedule, p.epochs, "metrics.diffroar.retrain.schedule")
        x, y = self._placed(images), labels.to(self.device)
        order = torch.Generator().manual_seed(derive(seed, "retrain", "order"))
        for _ in range(p.epochs):
            perm = torch.randperm(len(x), generator=order).to(self.device)
            for batch in perm.split(p.batch_size):
                if len(batch) < 2:  # BatchNorm needs two samples; a lone last image waits for the next epoch
                    continue
                with self._autocast():
                    loss = F.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
        return net.eval()

    def _autocast(self):
        """bfloat16 autocast (CPU and CUDA alike: no loss scaling needed) when ``amp``."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.params.amp)

    def _placed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.params.channels_last else x

    @torch.no_grad()
    def _accuracy(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        correct = 0
        for start in range(0, len(images), EVAL_BATCH):
            with self._autocast():
                logits = net(self._placed(images[start:start + EVAL_BATCH]))
            correct += int((logits.argmax(dim=1).cpu() == labels[start:start + EVAL_BATCH]).sum())
        return correct / max(len(images), 1)
