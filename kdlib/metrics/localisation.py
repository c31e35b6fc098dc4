"""How much of a non-negative map lies inside a region, and how well it ranks the region first.

Both take per-pixel weights ``[N, P]`` (a map's magnitude, flattened) and a region ``[N, P]`` (bool):

* :func:`mass_inside`: ``sum(weights inside) / sum(weights)`` per image (Quantus's Relevance Mass
  Accuracy for a non-negative map). A map with no mass says nothing about where the object is and gets
  what a uniform map gets: the region's share of the pixels (so an all-zero map has a defined value).
* :func:`roc_auc`: the ROC AUC of the region against the weights, per image (Mann-Whitney: the chance
  that a random region pixel outweighs a random outside pixel, ties counted one half); NaN for an image
  whose region is empty or whole. An all-zero map gives 0.5.
"""

from __future__ import annotations

import torch


def ratio(inside: torch.Tensor, total: torch.Tensor, fallback: torch.Tensor | float) -> torch.Tensor:
    """``inside / total`` where ``total > 0``, else ``fallback`` (no division by zero)."""
    fallback = torch.as_tensor(fallback, dtype=inside.dtype).expand_as(inside)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), fallback)


def mass_inside(weights: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    weights = weights.double()
    return ratio((weights * region).sum(dim=1), weights.sum(dim=1), region.double().mean(dim=1))


def roc_auc(weights: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    weights = weights.double().contiguous()
    region = region.bool()
    outside = torch.where(region, torch.full_like(weights, float("inf")), weights)
    outside_sorted = torch.sort(outside, dim=1).values.contiguous()
    below = torch.searchsorted(outside_sorted, weights, side="left").double()  # outside pixels < w
    at_or_below = torch.searchsorted(outside_sorted, weights, side="right").double()  # outside pixels <= w
    wins = ((below + 0.5 * (at_or_below - below)) * region).sum(dim=1)
    n_in = region.sum(dim=1).double()
    n_out = (~region).sum(dim=1).double()
    return ratio(wins, n_in * n_out, float("nan"))
