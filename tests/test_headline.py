"""kdlib.runs.headline: the headline table read from a summary."""

import math

import pandas as pd

from kdlib.runs import headline


def _row(run, measure, mean, low, high, n, **keys):
    base = {"run": run, "measure": measure, "layer": math.nan, "category": math.nan, "iou_threshold": math.nan,
            "setting": math.nan, "score": math.nan, "mean": mean, "low": low, "high": high, "sd": 0.0, "n": n}
    return {**base, **keys}


def test_cells_are_mean_and_interval_of_the_right_rows():
    summary = pd.DataFrame([
        _row("kd", "test_acc", 0.7312, 0.72, 0.74, 3),
        _row("kd", "detectors", 30.0, 25.0, 35.0, 3, layer="layer4", category="total", iou_threshold=0.05),
        _row("kd", "detectors", 44.0, 40.0, 48.0, 3, layer="layer4", category="total", iou_threshold=0.04),
        _row("kd", "detectors", 99.0, 90.0, 100.0, 3, layer="layer3", category="total", iou_threshold=0.05),
        _row("kd", "mean_best_iou", 0.0456, 0.04, 0.05, 3, layer="layer4", category="total"),
        _row("teacher", "test_acc", 0.75, math.nan, math.nan, 1),
    ])
    t = headline.table(summary, ["kd", "teacher"], "layer4")
    assert list(t.columns) == ["run", "test acc. %", "detectors @0.05", "detectors @0.04", "mean best IoU"]
    kd = t.iloc[0]
    assert kd["test acc. %"] == "73.1 [72.0, 74.0]"
    assert kd["detectors @0.05"] == "30.0 [25.0, 35.0]", "layer4, not layer3"
    assert kd["detectors @0.04"] == "44.0 [40.0, 48.0]"
    assert kd["mean best IoU"] == "0.046 [0.040, 0.050]"
    small = headline.table(summary.assign(mean=summary["mean"] / 10), ["kd"], "layer4").iloc[0]
    assert small["detectors @0.05"] == "3.0 [25.0, 35.0]", "counts keep one decimal however small"
    assert t.iloc[1]["test acc. %"] == "75.0 (n=1)" and t.iloc[1]["detectors @0.05"] == ""


def test_markdown_has_a_header_a_rule_and_one_line_per_run():
    text = headline.markdown(pd.DataFrame({"run": ["a", "b"], "x": ["1", "2"]}))
    assert text.splitlines() == ["| run | x |", "|---|---|", "| a | 1 |", "| b | 2 |"]
