"""kdlib.runs.power: the detectable difference from the baseline's seed-to-seed spread."""

import math

import pandas as pd
import pytest

from kdlib.errors import KdlibError
from kdlib.runs import power
from kdlib.stats import detectable_difference


def _detectors(values, run="scratch", units=64, thr=0.05, layer="layer4"):
    return pd.DataFrame([{"network": f"{run}-s{s}", "run": run, "seed": s, "kind": "trained", "layer": layer,
                          "iou_threshold": thr, "category": "total", "units": units, "detectors": v}
                         for s, v in enumerate(values)])


def test_detectable_difference_uses_the_baseline_spread_times_root_two():
    table = pd.concat([_detectors([20, 24, 22]), _detectors([1, 40, 9], run="kd")])
    out = power.detectable_differences(table, "scratch")
    assert len(out) == 1
    row = out.iloc[0]
    assert row.baseline_sd == pytest.approx(2.0)  # sd of 20, 24, 22
    assert row.sd_difference == pytest.approx(2.0 * math.sqrt(2))
    # the paired t-test power for n = 3 at sd 1 needs a true difference of 3.264 sd (kdlib.stats tests)
    assert row.detectable == pytest.approx(3.264 * 2.0 * math.sqrt(2), rel=2e-3)
    assert row.detectable_share == pytest.approx(row.detectable / 64)
    assert row.detectable == pytest.approx(detectable_difference(2.0 * math.sqrt(2), 3))


def test_one_row_per_layer_and_threshold_and_one_seed_is_nan():
    table = pd.concat([_detectors([5, 7], thr=0.04), _detectors([5, 9], thr=0.05), _detectors([3], layer="layer3")])
    out = power.detectable_differences(table, "scratch")
    assert list(zip(out.layer, out.iou_threshold)) == [("layer4", 0.04), ("layer4", 0.05), ("layer3", 0.05)]
    assert out.detectable.iloc[1] > out.detectable.iloc[0]  # a wider spread needs a larger difference
    assert math.isnan(out.detectable.iloc[2])
    assert "fewer than two seeds" in power.sentence(out, "scratch", "layer3", 0.05)
    text = power.sentence(out, "scratch", "layer4", 0.05)
    assert "sd 2.83" in text and "over 2 seeds" in text and f"{out.detectable.iloc[1]:.1f} detectors" in text


def test_unknown_baseline_is_one_line():
    with pytest.raises(KdlibError, match=r"^baseline run 'ls' has no detector rows; valid: one of scratch$"):
        power.detectable_differences(_detectors([1, 2]), "ls")
