"""Alignment of input gradients with the object, and with the teacher's input gradients.

For each method (default: the input gradient of the cross-entropy loss of the true class, and of the
true class's logit; any :mod:`kdlib.metrics.saliency` method works), per image, with the pixel
magnitude ``|g|(y, x) = sum_c |g_c(y, x)|`` and the object region (mask >= 1, the part included):

* ``mass_in_object`` = ``sum_object |g| / sum |g|`` (Quantus's Relevance Mass Accuracy on ``|g|``);
  a uniform map gives the object's area, reported as ``object_area``;
* ``auc`` = ROC AUC of the object region against ``|g|`` (0.5: no better than chance; 1: every object
  pixel outweighs every background pixel);
* ``cosine_to_reference`` = cosine similarity of the signed maps, flattened, of the network and of its
  reference teacher on the same image and target (only when a reference is given);

each averaged over images. The blog's "loss-gradient alignment" (Han et al.) is the first two on
``gradient[output=loss]``; the study reports them for every method listed.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kdlib.metrics.base import Metric, MetricInputs, Scores, inputs_for, mean_finite
from kdlib.metrics.checks import check_maps, check_masks
from kdlib.metrics.localisation import mass_inside, roc_auc
from kdlib.params.metrics import GradientAlignmentParams
from kdlib.registry import METRICS


def magnitude(maps: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, H*W]``: per pixel, the sum over channels of |value|."""
    return maps.abs().sum(dim=1).flatten(1)


def alignment(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """``mass_in_object``, ``auc`` and ``object_area`` of ``maps`` against ``masks``, averaged over images."""
    check_maps(maps)
    check_masks(masks, maps)
    weights, region = magnitude(maps), (masks >= 1).flatten(1)
    return {"mass_in_object": mean_finite(mass_inside(weights, region)), "auc": mean_finite(roc_auc(weights, region)),
            "object_area": mean_finite(region.double().mean(dim=1))}


def cosine(maps: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over images of the cosine similarity of two sets of maps (0 where either map is all zero)."""
    check_maps(maps)
    check_maps(reference, "reference maps")
    return float(F.cosine_similarity(maps.flatten(1).double(), reference.flatten(1).double(), dim=1, eps=1e-30).mean())


@METRICS.register("gradient_alignment")
class GradientAlignment(Metric):
    """Input-gradient alignment with the object mask and with a reference network, per method."""

    name = "gradient_alignment"
    params_class = GradientAlignmentParams
    directions = {"mass_in_object": "higher", "auc": "higher", "object_area": "none", "cosine_to_reference": "higher"}

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 reference: Optional[torch.nn.Module] = None, batch_size: int = 256, device="cpu",
                 default_layer: Optional[str] = None) -> Scores:
        """Scores per method; ``cosine_to_reference`` only with a ``reference`` network."""
        return self.evaluate(inputs_for(model, images, labels, masks, batch_size, device, reference=reference,
                                        default_layer=default_layer))

    def evaluate(self, inputs: MetricInputs) -> Scores:
        out: Scores = {}
        for spec in self.methods(self.params.methods, inputs.default_layer):
            maps = inputs.maps.get(inputs.model, spec)
            out[spec.label] = alignment(maps, inputs.data.masks)
            if inputs.reference is not None:
                out[spec.label]["cosine_to_reference"] = cosine(maps, inputs.maps.get(inputs.reference, spec))
        return out
