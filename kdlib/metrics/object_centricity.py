"""Object-centricity: how much of what a network attends to lies on the object rather than the background.

Per image, with the object region (mask >= 1) and its area share ``a``:

* layer ``L``: the positive part of ``L``'s activation, upsampled to the image (bilinear,
  ``align_corners=False``, as dissection upsamples), summed over units: ``activation_in_object`` =
  mass inside the object / all mass (:func:`kdlib.metrics.localisation.mass_inside`);
* method ``m``: the same for the pixel magnitude of ``m``'s map (``saliency_in_object``);
* ``lift`` = share / ``a``: 1 for a map spread uniformly, above 1 when the object holds more than its
  share of the mass (``1 / a`` at most);
* per detector unit, when the network's dissection is given: each unit's own share (averaged over
  the images where it is active), averaged over the units that dissection calls detectors of each
  category (``detectors_<category>``), over the non-detectors and over all units of the layer.

Every score is averaged over images; ``object_area`` (the mean ``a``) is the uniform baseline.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from kdlib.errors import KdlibError
from kdlib.metrics.base import Metric, MetricInputs, Scores, inputs_for, mean_finite
from kdlib.metrics.checks import check_masks
from kdlib.metrics.gradient_alignment import magnitude
from kdlib.metrics.localisation import ratio
from kdlib.models.nethook import capture_layers
from kdlib.params.metrics import ObjectCentricityParams
from kdlib.registry import METRICS


@torch.no_grad()
def unit_mass(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, layers: list[str],
              batch_size: int = 256, device: Any = "cpu") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (mass inside the object, total mass), each float64 [N, units]: the positive
    activation of every unit, upsampled to the image."""
    check_masks(masks, images)
    model = model.eval().to(device)
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}
    with capture_layers(model, layers) as captured:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            region = (masks[start:start + batch_size] >= 1).to(device)
            model(x)
            for layer in layers:
                act = F.interpolate(captured[layer].float().clamp(min=0), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
                inside = torch.einsum("nuhw,nhw->nu", act, region.float())
                parts[layer].append((inside.double().cpu(), act.sum(dim=(2, 3)).double().cpu()))
    return {layer: (torch.cat([p[0] for p in ps]), torch.cat([p[1] for p in ps])) for layer, ps in parts.items()}


def share_scores(inside: torch.Tensor, total: torch.Tensor, area: torch.Tensor, key: str) -> dict[str, float]:
    """``key`` (mass share) and ``lift`` from per-image inside / total masses and object areas [N]."""
    share = ratio(inside, total, area)
    return {key: mean_finite(share), "lift": mean_finite(share / area.clamp(min=1e-12))}


def unit_shares(inside: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Each unit's share inside the object [units], averaged over the images where the unit is active
    (NaN for a unit active on no image)."""
    return ratio(inside, total, float("nan")).nanmean(dim=0)


def detector_scores(shares: torch.Tensor, layer_result: Any, iou_threshold: Optional[float]) -> Scores:
    """Mean unit share per detector category, over non-detectors and over all units, from a
    :class:`~kdlib.dissect.LayerResult` (read, never computed here)."""
    if layer_result.units != len(shares):
        raise KdlibError(f"dissection of {layer_result.layer} has {layer_result.units} units but the network has {len(shares)}; "
                         "valid: the dissection of this network")
    detectors = layer_result.detectors(iou_threshold)
    units = detectors["unit"].to_numpy() - 1  # 1-based in the tally
    out: Scores = {}
    for category in layer_result.categories:
        picked = units[detectors["category"].to_numpy() == category]
        if len(picked):
            out[f"detectors_{category}"] = {"unit_in_object": mean_finite(shares[torch.as_tensor(picked)]), "units": float(len(picked))}
    others = torch.ones(len(shares), dtype=torch.bool)
    others[torch.as_tensor(units, dtype=torch.long)] = False
    out["non_detectors"] = {"unit_in_object": mean_finite(shares[others]), "units": float(int(others.sum()))}
    out["all_units"] = {"unit_in_object": mean_finite(shares), "units": float(len(shares))}
    return out


@METRICS.register("object_centricity")
class ObjectCentricity(Metric):
    """Share of activation and of saliency mass inside the object, per layer, method and detector category."""

    name = "object_centricity"
    params_class = ObjectCentricityParams
    directions = {"activation_in_object": "higher", "saliency_in_object": "higher", "lift": "higher",
                  "unit_in_object": "higher", "units": "none", "object_area": "none"}

    def layer_scores(self, model, images, masks, layers: list[str], dissection=None, batch_size=256, device="cpu") -> Scores:
        area = (masks >= 1).flatten(1).double().mean(dim=1)
        out: Scores = {}
        for layer, (inside, total) in unit_mass(model, images, masks, layers, batch_size, device).items():
            out[layer] = share_scores(inside.sum(dim=1), total.sum(dim=1), area, "activation_in_object")
            out[layer]["object_area"] = mean_finite(area)
            if dissection is not None and layer in dissection:
                per_unit = detector_scores(unit_shares(inside, total), dissection[layer], self.params.iou_threshold)
                out.update({f"{layer}/{k}": v for k, v in per_unit.items()})
        return out

    def map_scores(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        region = (masks >= 1).flatten(1)
        weights = magnitude(maps).double()
        return share_scores((weights * region).sum(dim=1), weights.sum(dim=1), region.double().mean(dim=1), "saliency_in_object")

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, layers: list[str],
                 dissection=None, batch_size: int = 256, device="cpu", default_layer: Optional[str] = None) -> Scores:
        """Scores per layer (``layers`` unless params name them), per detector category and per method."""
        return self.evaluate(inputs_for(model, images, labels, masks, batch_size, device, dissection=dissection,
                                        default_layer=default_layer, layers=layers))

    def evaluate(self, inputs: MetricInputs) -> Scores:
        data = inputs.data
        out = self.layer_scores(inputs.model, data.images, data.masks, self.params.layers or inputs.layers,
                                inputs.dissection, inputs.maps.batch_size, inputs.maps.device)
        for spec in self.methods(self.params.methods, inputs.default_layer):
            out[spec.label] = self.map_scores(inputs.maps.get(inputs.model, spec), data.masks)
        return out
