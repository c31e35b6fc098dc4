"""Cross-check against Quantus (a test-only dependency): the localisation measures that Quantus also
has give the same numbers on the same maps and masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdlib.data.masks import load_masked
from kdlib.metrics.gradient_alignment import GradientAlignment, magnitude
from kdlib.metrics.saliency import attribute, parse_method
from kdlib.models import build

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def maps_and_masks(tiny_world):
    data = load_masked(tiny_world, "test")
    torch.manual_seed(0)
    model = build("resnet8_w8", 6).eval()
    maps = attribute(model, data.images, data.labels, parse_method({"name": "gradient", "output": "loss"}))
    return model, data, maps


def _quantus(metric_class, a_batch, s_batch, x, y):
    metric = metric_class(abs=False, normalise=False, disable_warnings=True, return_aggregate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a_batch, s_batch=s_batch, device="cpu"), dtype=np.float64)


def test_mass_in_object_is_quantus_relevance_mass_accuracy_and_auc_is_quantus_auc(maps_and_masks):
    model, data, maps = maps_and_masks
    n, _, h, w = maps.shape
    a_batch = magnitude(maps).view(n, 1, h, w).numpy()  # kdlib's pixel magnitude, given to Quantus as the map
    s_batch = (data.masks >= 1).view(n, 1, h, w).numpy().astype(np.float32)
    x, y = data.images.numpy(), data.labels.numpy()
    ours = GradientAlignment(methods=[{"name": "gradient", "output": "loss"}])(model, data.images, data.labels, data.masks)
    ours = ours["gradient[output=loss]"]
    rma = _quantus(quantus.RelevanceMassAccuracy, a_batch, s_batch, x, y)
    auc = _quantus(quantus.AUC, a_batch, s_batch, x, y)
    assert np.isfinite(rma).all() and np.isfinite(auc).all() and 0.05 < rma.std() and 0.02 < auc.std()
    assert ours["mass_in_object"] == pytest.approx(float(rma.mean()), abs=1e-6)
    assert ours["auc"] == pytest.approx(float(auc.mean()), abs=1e-9)
