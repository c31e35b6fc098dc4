"""The paper's own figures, to show beside the study's (Han et al., ICML 2023; ../shared/reference/paper-facts.md).

Every figure is marked ``verified`` only if it was read from the paper itself; the headline numbers
come from a secondary summary and stay *unverified*. The paper's ResNet-18 ``layer4`` has 512 units and
the study's student 64, so detector counts are compared as shares of the layer's units.
"""

from __future__ import annotations

import pandas as pd

LAYER4_UNITS = 512  # ResNet-18 layer4 on ImageNet

# method -> (top-1 accuracy, layer4 detectors at IoU 0.05, within-class entropy of the output distribution)
_FIGURES = {
    "scratch": (0.6994, 275, 2.899),
    "ls": (0.7013, 219, 2.604),
    "kd": (0.7080, 312, 2.904),
}
SOURCE = "Han et al. 2023 via a secondary summary (unverified; paper-facts.md)"


def paper_table() -> pd.DataFrame:
    """One row per method the paper reports: accuracy, detectors, their share of 512 units, entropy."""
    rows = [
        {"run": run, "test_acc": acc, "detectors": det, "share": det / LAYER4_UNITS, "within_class_entropy": ent,
         "iou_threshold": 0.05, "source": SOURCE, "verified": False}
        for run, (acc, det, ent) in _FIGURES.items()
    ]
    return pd.DataFrame(rows)
