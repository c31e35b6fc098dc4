"""Network Dissection, exact and streaming: see :mod:`kdlib.dissect.engine` for the definition.

::

    from kdlib.dissect import dissect
    result = dissect(model, dataset, layers=["layer3", "layer4"], quantile=0.005, iou_threshold=0.04)
    result["layer4"].tally          # NetDissect-Lite's tally.csv as a DataFrame
    result["layer4"].detectors()    # units whose best IoU > iou_threshold
    result.save("outputs/run/dissect")

Modules (layers are captured by :mod:`kdlib.models.nethook`): ``quantile`` (exact streaming top-k), ``tally`` (IoU
counts), ``result`` (tables, detectors, storage), ``cache``, ``engine`` (the two passes), ``__main__``
(the command line: ``python -m kdlib.dissect --help``).
"""

from kdlib.dissect.engine import compute_tallies, compute_thresholds, dissect
from kdlib.models.nethook import capture_layers, layer_names
from kdlib.dissect.quantile import TopK
from kdlib.dissect.result import DissectResult, LayerResult

__all__ = [
    "dissect",
    "compute_thresholds",
    "compute_tallies",
    "capture_layers",
    "layer_names",
    "TopK",
    "DissectResult",
    "LayerResult",
]
