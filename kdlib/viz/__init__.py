"""Pictures: they read results and render them; nothing is computed here.

:mod:`kdlib.viz.dissect`: unit strips, one unit's masks (for the notebook unit browser), detectors per
category and best-IoU distributions.
"""

from kdlib.viz.dissect import (
    best_iou_chart,
    detector_bar_chart,
    detector_table,
    figure_to_image,
    save_unit_strips,
    unit_label,
    unit_masks,
    unit_strip,
)

__all__ = [
    "best_iou_chart",
    "detector_bar_chart",
    "detector_table",
    "figure_to_image",
    "save_unit_strips",
    "unit_label",
    "unit_masks",
    "unit_strip",
]
