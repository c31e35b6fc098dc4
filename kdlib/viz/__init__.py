"""Pictures: they read results and render them; nothing is computed here.

:mod:`kdlib.viz.dissect`: unit strips, one unit's masks, detectors per category and best-IoU
distributions. :mod:`kdlib.viz.study`: the study's charts (bars with confidence intervals, training and
DiffROAR curves, box plots), each drawing one table. :mod:`kdlib.viz.world`: example images and masks
of a generated world. :mod:`kdlib.viz.unit_browser`: the notebook's unit browser (an ipywidgets UI in
JupyterLab, :func:`static_strip` where no widget frontend is live); the widget itself lives in
:mod:`kdlib.viz.unit_widget`, imported only when one is built, so ipywidgets is needed only then.
"""

from kdlib.viz.dissect import (
    best_iou_chart,
    detector_bar_chart,
    detector_table,
    figure_to_image,
    save_unit_strips,
    titled_unit_masks,
    unit_label,
    unit_masks,
    unit_strip,
)
from kdlib.viz.study import box_chart, ci_bars, line_chart
from kdlib.viz.unit_browser import static_strip, unit_browser, widgets_live
from kdlib.viz.world import probe_grid, world_grid

__all__ = [
    "best_iou_chart",
    "box_chart",
    "ci_bars",
    "detector_bar_chart",
    "detector_table",
    "figure_to_image",
    "line_chart",
    "probe_grid",
    "save_unit_strips",
    "static_strip",
    "titled_unit_masks",
    "unit_browser",
    "unit_label",
    "unit_masks",
    "unit_strip",
    "widgets_live",
    "world_grid",
]
