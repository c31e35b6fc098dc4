"""The study's headline table: one row per run, one column per headline measure, each cell the mean over
seeds with its confidence interval, as Markdown (the README's results table and the report's summary).

``python -m kdlib.runs headline RUN_FOLDER`` prints it from a finished run folder's ``tables/summary.csv``;
the last dissected layer is the one shown (the paper's layer4 in the default study).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# (column title, the summary keys it is read from); ``layer`` is filled in with the last dissected layer
COLUMNS: list[tuple[str, dict[str, Any]]] = [
    ("test acc. %", {"measure": "test_acc"}),
    ("detectors @0.05", {"measure": "detectors", "category": "total", "iou_threshold": 0.05, "layer": True}),
    ("detectors @0.04", {"measure": "detectors", "category": "total", "iou_threshold": 0.04, "layer": True}),
    ("object detectors @0.05", {"measure": "detectors", "category": "object", "iou_threshold": 0.05, "layer": True}),
    ("unique concepts @0.05", {"measure": "unique_concepts", "category": "total", "iou_threshold": 0.05, "layer": True}),
    ("mean best IoU", {"measure": "mean_best_iou", "category": "total", "iou_threshold": None, "layer": True}),
    ("Five-Band acc. (saliency)", {"measure": "five_band", "setting": "saliency", "score": "hard_accuracy"}),
    ("Five-Band FPR (saliency)", {"measure": "five_band", "setting": "saliency", "score": "hard_fpr"}),
    ("within-class entropy", {"measure": "class_similarity", "setting": "T=1", "score": "entropy"}),
    ("gradient mass in object", {"measure": "gradient_alignment", "setting": "gradient", "score": "mass_in_object"}),
    ("DiffROAR (mean over k)", {"measure": "diffroar", "setting": "gradient/mean", "score": "diffroar"}),
]
SCALE = {"test acc. %": 100.0}
COUNTS = ("detectors", "unique_concepts")  # shown with one decimal (a mean of counts), the rest with three


def _cell(rows: pd.DataFrame, scale: float, digits: int) -> str:
    if rows.empty:
        return ""
    r = rows.iloc[0]
    mean, low, high, n = (float(r["mean"]) * scale, float(r["low"]) * scale, float(r["high"]) * scale, int(r["n"]))
    if n < 2 or math.isnan(low):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _rows(summary: pd.DataFrame, run: str, keys: dict[str, Any], layer: str) -> pd.DataFrame:
    wanted = {**keys, "layer": layer if keys.get("layer") else None}  # ``layer: True``: the layer shown
    rows = summary[summary["run"] == run]
    for key in ("layer", "category", "iou_threshold", "setting", "score"):
        want = wanted.get(key)
        rows = rows[rows[key].isna()] if want is None else rows[rows[key] == want]
    return rows[rows["measure"] == keys["measure"]]


def table(summary: pd.DataFrame, runs: list[str], layer: str) -> pd.DataFrame:
    """One row per run of ``runs`` (in that order), one column per :data:`COLUMNS` entry that any run has."""
    out = {"run": runs}
    for title, keys in COLUMNS:
        digits = 1 if keys["measure"] in COUNTS or title in SCALE else 3
        cells = [_cell(_rows(summary, run, keys, layer), SCALE.get(title, 1.0), digits) for run in runs]
        if any(cells):
            out[title] = cells
    return pd.DataFrame(out)


def markdown(frame: pd.DataFrame) -> str:
    """A plain GitHub Markdown table of ``frame`` (strings as they are)."""
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])
