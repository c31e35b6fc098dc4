"""Five-Band scores of saliency maps against ground-truth heatmaps (Tjoa & Guan 2020, arXiv 2009.02899).

As their code (``ericotjo001/explainable_ai``, the ``xai_basic`` version) computes them:

1. Heatmap ``h``: the map summed over channels, divided by its maximum absolute value, so ``h`` lies
   in [-1, 1] (an all-zero map stays all zero).
2. Ground truth ``g``: 0 on the background, ``truth_values[0]`` (0.4) on the object, ``truth_values[1]``
   (0.9) on the class's distinguishing part (the world's mask values 0, 1, 2).
3. Bands with thresholds ``(t1, t2)``: ``v <= -t2 -> -2``, ``(-t2, -t1] -> -1``, ``(-t1, t1] -> 0``,
   ``(t1, t2] -> 1``, ``v > t2 -> 2``; ``g`` with ``truth_thresholds``, ``h`` with ``heatmap_thresholds``.
4. Per pixel: TP = both bands non-zero and equal; FP = ``h``'s band non-zero where ``g``'s is 0, or both
   non-zero and different; TN = both 0; FN = ``h``'s 0 where ``g``'s is not.
5. Per image: pixel accuracy = share of pixels whose bands are equal; precision = TP / (TP + FP + eps);
   recall = TP / (TP + FN + eps); FPR = FP / (FP + TN + eps).
6. Soft variant: ``h``'s thresholds move toward 0 by ``soft_step`` per step, ``soft_steps`` settings
   (the unshifted one first; ``g``'s stay): per image the mean and the best over the settings (best:
   max, and for FPR ``fpr_best``: min by default).
7. Every score is averaged over images. ``hard_*`` are the unshifted thresholds.

Consequences of the definition, kept: the normalisation makes a map's maximum band 2, so on an image
whose distinguishing part is not shown a map equal to the truth scores its object as band 2, not 1; a
map's scale never matters (scaling by a positive constant leaves every score unchanged).
"""

from __future__ import annotations

import torch

from kdlib.metrics.base import Metric, MetricInputs, Scores, inputs_for
from kdlib.metrics.checks import check_maps, check_masks
from kdlib.params.metrics import FiveBandParams
from kdlib.registry import METRICS

KINDS = ("accuracy", "precision", "recall", "fpr")


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, H, W]``: summed over channels, divided by each image's max |value|."""
    heat = maps.double().sum(dim=1)
    peak = heat.abs().flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, heat / torch.where(peak > 0, peak, torch.ones_like(peak)), heat)


def bands(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Five bands -2..2 (lower bound exclusive, upper inclusive), as int8."""
    up = (values > low).to(torch.int8) + (values > high).to(torch.int8)
    down = (values <= -low).to(torch.int8) + (values <= -high).to(torch.int8)
    return up - down


def truth_heatmap(masks: torch.Tensor, values: list[float]) -> torch.Tensor:
    """Mask values 0, 1, 2 -> 0, ``values[0]``, ``values[1]`` (float64 [N, H, W])."""
    table = torch.tensor([0.0, *values], dtype=torch.float64)
    return table[masks.long()]


def confusion_scores(pred: torch.Tensor, truth: torch.Tensor, eps: float) -> torch.Tensor:
    """Per image ``[N, 4]``: pixel accuracy, precision, recall, FPR of band maps ``pred`` vs ``truth``."""
    p_on, t_on, same = pred != 0, truth != 0, pred == truth

    def count(m: torch.Tensor) -> torch.Tensor:
        return m.flatten(1).sum(dim=1).double()

    tp = count(p_on & t_on & same)
    fp = count(p_on & ~(t_on & same))
    tn = count(~p_on & ~t_on)
    fn = count(~p_on & t_on)
    acc = count(same) / (pred.shape[-2] * pred.shape[-1])
    return torch.stack([acc, tp / (tp + fp + eps), tp / (tp + fn + eps), fp / (fp + tn + eps)], dim=1)


@METRICS.register("five_band")
class FiveBand(Metric):
    """Five-Band pixel accuracy, precision, recall and FPR (hard, soft mean, soft best) per method."""

    name = "five_band"
    params_class = FiveBandParams
    directions = {f"{v}_{k}": ("lower" if k == "fpr" else "higher") for v in ("hard", "soft_mean", "soft_best") for k in KINDS}

    def score(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        """The twelve scores of ``maps`` [N, C, H, W] against ``masks`` [N, H, W], averaged over images."""
        p = self.params
        check_maps(maps)
        check_masks(masks, maps)
        heat = normalise(maps)
        truth = bands(truth_heatmap(masks, p.truth_values), *p.truth_thresholds)
        low, high = p.heatmap_thresholds
        steps = torch.stack([confusion_scores(bands(heat, low - i * p.soft_step, high - i * p.soft_step), truth, p.eps)
                             for i in range(p.soft_steps)])  # [steps, N, 4]
        best = steps.amax(dim=0)
        if p.fpr_best == "min":
            best[:, 3] = steps[:, :, 3].amin(dim=0)
        out = {}
        for variant, per_image in (("hard", steps[0]), ("soft_mean", steps.mean(dim=0)), ("soft_best", best)):
            for j, kind in enumerate(KINDS):
                out[f"{variant}_{kind}"] = float(per_image[:, j].mean())
        return out

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 maps: dict[str, torch.Tensor] | None = None, batch_size: int = 256, device="cpu",
                 default_layer: str | None = None) -> Scores:
        """Scores per method; ``maps`` ({label: maps}) replaces computing them (then ``model`` may be None)."""
        if maps is not None:
            return {label: self.score(m, masks) for label, m in maps.items()}
        return self.evaluate(inputs_for(model, images, labels, masks, batch_size, device, default_layer=default_layer))

    def evaluate(self, inputs: MetricInputs) -> Scores:
        specs = self.methods(self.params.methods, inputs.default_layer)
        return {s.label: self.score(inputs.maps.get(inputs.model, s), inputs.data.masks) for s in specs}
