"""How small a difference the study's seeds can detect: the power estimate written beside the verdict.

From the baseline run's seed-to-seed spread of each dissection count (detectors per layer, IoU threshold
and category), :func:`detectable_differences` gives the smallest true difference ``run - baseline`` that
the study's paired t-test (two-sided, ``alpha``) would detect with probability ``power`` with the seeds
used. The spread of a paired difference is not known before the methods are compared, so the estimate
takes two seeds of independent runs with the baseline's spread: ``sd_diff = sqrt(2) * sd_baseline``
(pairing by seed only helps when it correlates the two runs; the note says so). It reads only the
baseline's own values, so it can be computed, and was chosen, before any method comparison.
"""

from __future__ import annotations

import math

import pandas as pd

from kdlib.errors import KdlibError
from kdlib.stats import detectable_difference

COLUMNS = ["layer", "iou_threshold", "category", "units", "n", "baseline_mean", "baseline_sd", "sd_difference",
           "detectable", "detectable_share"]


def detectable_differences(detectors: pd.DataFrame, baseline: str, alpha: float = 0.05, power: float = 0.8,
                           category: str = "total") -> pd.DataFrame:
    """Per layer and IoU threshold (``category`` only): the baseline's detectors over seeds (mean, sd),
    the assumed sd of a paired difference and the detectable difference, in detectors and as a share of
    the layer's units. ``detectors`` is ``tables/detectors.csv``."""
    rows = detectors[(detectors["run"] == baseline) & (detectors["kind"] == "trained") & (detectors["category"] == category)]
    if rows.empty:
        runs = sorted(set(detectors["run"].dropna()))
        raise KdlibError(f"baseline run {baseline!r} has no detector rows; valid: one of {', '.join(runs)}")
    out = []
    for (layer, thr), group in rows.groupby(["layer", "iou_threshold"], sort=False):
        values = group.sort_values("seed")["detectors"].astype(float)
        n, units = len(values), int(group["units"].iloc[0])
        sd = float(values.std(ddof=1)) if n >= 2 else math.nan
        sd_diff = math.sqrt(2.0) * sd
        found = detectable_difference(sd_diff, n, alpha, power) if n >= 2 else math.nan
        out.append({"layer": layer, "iou_threshold": thr, "category": category, "units": units, "n": n,
                    "baseline_mean": float(values.mean()), "baseline_sd": sd, "sd_difference": sd_diff,
                    "detectable": found, "detectable_share": found / units})
    return pd.DataFrame(out, columns=COLUMNS)


def sentence(table: pd.DataFrame, baseline: str, layer: str, iou_threshold: float, power: float = 0.8) -> str:
    """One sentence for the report: the detectable difference in ``layer`` at ``iou_threshold``."""
    row = table[(table["layer"] == layer) & (table["iou_threshold"] == iou_threshold)]
    if row.empty or math.isnan(row["detectable"].iloc[0]):
        return f"Power: {baseline} has fewer than two seeds in {layer}, so no detectable difference can be estimated."
    r = row.iloc[0]
    return (f"Power: {baseline}'s detectors in {layer} at IoU {iou_threshold:g} vary by sd {r.baseline_sd:.2f} over "
            f"{int(r.n)} seeds (mean {r.baseline_mean:.1f} of {int(r.units)} units), so a paired t-test at 5% detects a "
            f"true difference of {r.detectable:.1f} detectors ({100 * r.detectable_share:.1f}% of the units) with "
            f"probability {power:.0%}; smaller true differences are likely to be called undecided.")
