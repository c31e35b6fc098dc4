"""Network Dissection, exact and streaming: see :mod:`kdlib.dissect.engine` for the definition.

::

    from kdlib.dissect import dissect
    result = dissect(model, dataset)                      # DissectParams() defaults: layer3, layer4, q 0.005
    result = dissect(model, dataset, study.dissect)       # a validated DissectParams
    result = dissect(model, dataset, layers=["layer4"])   # keyword overrides, validated by DissectParams
    result["layer4"].tally          # NetDissect-Lite's tally.csv as a DataFrame
    result["layer4"].detectors()    # units whose best IoU > iou_threshold
    result.save("outputs/run/dissect")

Modules (layers are captured by :mod:`kdlib.models.nethook`; decoded labels are cached by
:mod:`kdlib.data.broden_labels`): ``quantile`` (exact streaming top-k), ``upsample`` (the mask rule and
its sparse exact evaluation), ``labels`` (a batch's labels as the tally reads them), ``tally`` (IoU
counts), ``batches`` (what each pass reads), ``budget`` (memory estimated before allocating),
``result`` (tables, detectors, storage), ``cache`` (per-layer results), ``engine`` (the two passes),
``__main__`` (the command line: ``python -m kdlib.dissect --help``).
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
