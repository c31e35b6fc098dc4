"""Class-similarity structure of a network's outputs, and how much of its teacher's it holds.

With ``p_n = softmax(z_n / T)`` on every evaluation image ``n`` (true class ``y_n``, ``C`` classes) and
the class-similarity matrix ``S[c] = mean_{n: y_n = c} p_n`` (row c: the mean output on class c):

* entropy, three readings of Han et al.'s "within-class entropy of the output distribution" (their
  code has none; the paper reports KD > scratch > LS on ImageNet): ``entropy`` = mean over images of
  ``H(p_n)``; ``class_mean_entropy`` = mean over classes of ``H(S[c])``; ``non_target_entropy`` = mean
  over images of the entropy of ``p_n`` without its target, renormalised;
* ``similarity_correlation``: Pearson correlation of the off-diagonal entries of ``S`` with those of
  the reference teacher's ``S`` (only with a reference; 0 when either matrix is constant);
* ``sibling_share``: mean over images of the share of non-target probability on the true class's
  siblings (the other classes of its superclass); ``sibling_share_chance`` is what spreading it evenly
  gives, ``(siblings) / (C - 1)``;
* ``sibling_cousin_ratio``: mean probability per sibling class over mean probability per non-sibling
  non-target class (the README's "24 times" of the teacher).

Natural logarithms. An image whose non-target probability underflows to 0 is left out of the shares.
"""

from __future__ import annotations

from typing import Optional

import torch

from kdlib.errors import KdlibError
from kdlib.metrics.base import Metric, MetricInputs, Scores, inputs_for, mean_finite
from kdlib.metrics.checks import check_labels
from kdlib.metrics.localisation import ratio
from kdlib.params.metrics import ClassSimilarityParams
from kdlib.registry import METRICS


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of ``p`` (0 log 0 = 0)."""
    return -(torch.where(p > 0, p * p.clamp(min=1e-300).log(), torch.zeros_like(p))).sum(dim=-1)


def similarity_matrix(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``S[c]`` = mean output on the images of class c ([C, C]; NaN rows for classes without images)."""
    sums = torch.zeros(num_classes, probs.shape[1], dtype=torch.float64).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).double()[:, None]
    return sums / counts


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of the finite pairs; 0 when either side does not vary (it shares no structure)."""
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def structure_scores(probs: torch.Tensor, labels: torch.Tensor, siblings: torch.Tensor) -> dict[str, float]:
    """Entropies and sibling scores of output distributions ``probs`` [N, C] (float64) on true ``labels``."""
    n, c = probs.shape
    onehot = torch.nn.functional.one_hot(labels, c).bool()
    non_target = probs.masked_fill(onehot, 0.0)
    mass = non_target.sum(dim=1)
    sib = siblings[labels]  # [N, C] bool: the true class's siblings
    cousin = ~sib & ~onehot
    per_sib = ratio((probs * sib).sum(dim=1), sib.sum(dim=1).double(), float("nan"))
    per_cousin = ratio((probs * cousin).sum(dim=1), cousin.sum(dim=1).double(), float("nan"))
    renormalised = non_target / mass.clamp(min=1e-300)[:, None]
    sib_mean, cousin_mean = mean_finite(per_sib), mean_finite(per_cousin)
    return {
        "entropy": mean_finite(entropy(probs)),
        "class_mean_entropy": mean_finite(entropy(similarity_matrix(probs, labels, c))),
        "non_target_entropy": mean_finite(torch.where(mass > 0, entropy(renormalised), torch.nan)),
        "sibling_share": mean_finite(ratio((non_target * sib).sum(dim=1), mass, float("nan"))),
        "sibling_share_chance": mean_finite(sib.sum(dim=1).double() / (c - 1)),
        "sibling_cousin_ratio": sib_mean / cousin_mean if cousin_mean > 0 else float("nan"),
    }


def correlation(probs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal entries of two class-similarity matrices."""
    c = probs.shape[1]
    off = ~torch.eye(c, dtype=torch.bool)
    return pearson(similarity_matrix(probs, labels, c)[off], similarity_matrix(reference, labels, c)[off])


@METRICS.register("class_similarity")
class ClassSimilarity(Metric):
    """Within-class entropies, similarity-matrix correlation with the teacher, sibling shares."""

    name = "class_similarity"
    params_class = ClassSimilarityParams
    directions = {"entropy": "none", "class_mean_entropy": "none", "non_target_entropy": "none",
                  "sibling_share": "higher", "sibling_share_chance": "none", "sibling_cousin_ratio": "higher",
                  "similarity_correlation": "higher"}

    def score(self, probs: torch.Tensor, labels: torch.Tensor, siblings: torch.Tensor,
              reference: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Scores of output distributions ``probs`` [N, C]; ``siblings`` bool [C, C]; ``reference``: the
        teacher's distributions on the same images."""
        n, c = probs.shape
        if siblings.shape != (c, c):
            raise KdlibError(f"sibling matrix of shape {tuple(siblings.shape)} for {c} classes; valid: [{c}, {c}]")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise KdlibError("output distributions hold NaN, inf or negative values; valid: probabilities")
        labels = check_labels(labels, n, c)
        out = structure_scores(probs.double(), labels, siblings.bool())
        if reference is not None:
            if reference.shape != probs.shape:
                raise KdlibError(f"reference outputs of shape {tuple(reference.shape)}; valid: {tuple(probs.shape)}, the same images")
            out["similarity_correlation"] = correlation(probs.double(), reference.double(), labels)
        return out

    def __call__(self, model, images: torch.Tensor, labels: torch.Tensor, hierarchy, reference=None,
                 batch_size: int = 256, device="cpu") -> Scores:
        """Scores of ``model`` (setting ``T=<temperature>``); ``hierarchy``: a :class:`~kdlib.data.ontology.ClassHierarchy`."""
        return self.evaluate(inputs_for(model, images, labels, None, batch_size, device, hierarchy=hierarchy, reference=reference))

    def evaluate(self, inputs: MetricInputs) -> Scores:
        if inputs.hierarchy is None:
            raise KdlibError("class_similarity needs the class hierarchy (classes.json); valid: a generated world")
        t = self.params.temperature

        def probs(model):
            return torch.softmax(inputs.maps.outputs(model).double() / t, dim=1)

        reference = probs(inputs.reference) if inputs.reference is not None else None
        return {f"T={t:g}": self.score(probs(inputs.model), inputs.data.labels, inputs.hierarchy.sibling_matrix(), reference)}
