"""Interpretability measures beyond dissection, one module per measure, each registered by name in
:data:`kdlib.registry.METRICS`:

* :mod:`~kdlib.metrics.five_band`: Five-Band scores of saliency maps against ground-truth heatmaps;
* :mod:`~kdlib.metrics.diffroar`: DiffROAR, the predictive power of top-k vs bottom-k coordinates;
* :mod:`~kdlib.metrics.gradient_alignment`: input gradients against the object and the teacher;
* :mod:`~kdlib.metrics.object_centricity`: activation and saliency mass inside the object;
* :mod:`~kdlib.metrics.class_similarity`: class-similarity structure of the outputs.

Shared parts: :mod:`~kdlib.metrics.base` (the measure interface), :mod:`~kdlib.metrics.saliency`
(Captum's attribution methods by name), :mod:`~kdlib.metrics.localisation` (mass share, ROC AUC),
:mod:`~kdlib.metrics.checks`. ``build(name, params)`` makes a measure from its params section.
kdlib.metrics uses data, models and params; it reads a dissection result and never imports
kdlib.train (DiffROAR's retraining is a callable it is given).
"""

from kdlib.metrics import class_similarity, diffroar, five_band, gradient_alignment, object_centricity  # noqa: F401 (register)
from kdlib.metrics.base import MapCache, Metric, MetricInputs
from kdlib.registry import METRICS


def build(name: str, params=None, **hyper) -> Metric:
    """The measure registered as ``name`` with its params section (or keyword hyper-parameters)."""
    return METRICS.get(name)(params, **hyper)


__all__ = ["METRICS", "MapCache", "Metric", "MetricInputs", "build"]
