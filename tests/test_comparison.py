"""Methods compared across seeds: the long table, summaries, paired differences and verdicts on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdlib.params import Claim
from kdlib.runs.comparison import differences, judge, observations, summary
from kdlib.stats import mean_ci

SEEDS = [0, 1, 2]
# detectors in layer4 at IoU 0.05 per seed: kd = scratch + (4, 6, 5); ls = scratch - (1, -1, 0)
COUNTS = {"scratch": [20, 25, 30], "kd": [24, 31, 35], "ls": [19, 26, 30]}
# mean best IoU of layer4's units per seed (a graded measure: the same at both IoU thresholds);
# kd = scratch + (0.03, 0.04, 0.05), objects' is half the total's
GRADED = {"scratch": [0.10, 0.12, 0.14], "kd": [0.13, 0.16, 0.19], "ls": [0.09, 0.12, 0.13], "random": [0.02, 0.03, 0.02]}


def _accuracy() -> pd.DataFrame:
    rows = [{"network": f"{run}-s{s}", "run": run, "role": "student", "seed": s, "model": "m", "loss": "x", "epoch": 3,
             "train_acc": 0.5, "val_acc": 0.4, "test_acc": 0.40 + 0.01 * i + 0.001 * s, "seconds": 1.0}
            for i, run in enumerate(COUNTS) for s in SEEDS]
    return pd.DataFrame(rows)


def _detectors() -> pd.DataFrame:
    rows = []
    for run, counts in list(COUNTS.items()) + [("random", [0, 1, 0])]:
        for s, n, graded in zip(SEEDS, counts, GRADED[run]):
            kind = "random" if run == "random" else "trained"
            for thr in (0.04, 0.05):
                for cat, value, best in (("object", n // 2, graded / 2), ("total", n + (5 if thr == 0.04 else 0), graded)):
                    rows.append({"network": f"random-m-s{s}" if kind == "random" else f"{run}-s{s}",
                                 "run": None if kind == "random" else run, "seed": s, "model": "m", "kind": kind,
                                 "units": 64, "layer": "layer4", "category": cat, "iou_threshold": thr,
                                 "detectors": value, "share": value / 64, "unique_concepts": 1,
                                 "mean_best_iou": best, "median_best_iou": best - 0.01})
    return pd.DataFrame(rows)


@pytest.fixture
def obs():
    return observations(_accuracy(), _detectors())


def _row(frame, **keys):
    for k, v in keys.items():
        frame = frame[frame[k].isna()] if v is None else frame[frame[k] == v]
    assert len(frame) == 1, frame
    return frame.iloc[0]


def test_summary_is_the_t_interval_over_seeds(obs):
    summ = summary(obs)
    row = _row(summ, run="kd", measure="detectors", layer="layer4", category="total", iou_threshold=0.05)
    expected = mean_ci([24, 31, 35])
    assert (row["mean"], row["low"], row["high"], row["n"]) == pytest.approx((30.0, expected.low, expected.high, 3))
    null = _row(summ, run="random-m", measure="detectors", layer="layer4", category="total", iou_threshold=0.05)
    assert null["mean"] == pytest.approx(1 / 3)


def test_a_graded_measure_is_one_observation_per_network_without_threshold(obs):
    """Graded measures repeat on the rows of both IoU thresholds; each network counts once (n = 3 seeds,
    not 6), under no threshold, and runs are compared on their own values."""
    summ = summary(obs)
    graded = summ[(summ.run == "kd") & (summ.measure == "mean_best_iou") & (summ.category == "total")]
    assert len(graded) == 1 and math.isnan(graded.iloc[0]["iou_threshold"]), "a graded measure has no threshold"
    expected = mean_ci(GRADED["kd"])
    row = graded.iloc[0]
    assert (row["mean"], row["low"], row["high"], row["n"]) == pytest.approx((expected.mean, expected.low, expected.high, 3))
    objects = _row(summ, run="scratch", measure="median_best_iou", layer="layer4", category="object", iou_threshold=None)
    assert objects["mean"] == pytest.approx(sum(g / 2 - 0.01 for g in GRADED["scratch"]) / 3)
    diff = differences(obs, "scratch")
    kd = _row(diff, run="kd", measure="mean_best_iou", layer="layer4", category="total", iou_threshold=None)
    assert (kd["diff_mean"], kd["diff_sd"], kd["diff_n"]) == pytest.approx((0.04, 0.01, 3))  # (0.03, 0.04, 0.05)
    ls = _row(diff, run="ls", measure="mean_best_iou", layer="layer4", category="total", iou_threshold=None)
    assert ls["diff_mean"] == pytest.approx(-0.02 / 3)  # (-0.01, 0, -0.01)


def test_differences_are_paired_by_seed(obs):
    diff = differences(obs, "scratch")
    kd = _row(diff, run="kd", measure="detectors", layer="layer4", category="total", iou_threshold=0.05)
    assert kd["diff_mean"] == pytest.approx(5.0) and kd["diff_sd"] == pytest.approx(1.0)  # (4, 6, 5)
    assert kd["diff_low"] > 0
    ls = _row(diff, run="ls", measure="detectors", layer="layer4", category="total", iou_threshold=0.05)
    assert ls["diff_mean"] == pytest.approx(0.0) and ls["diff_low"] < 0 < ls["diff_high"]
    assert set(diff.run) == {"kd", "ls"}, "the null is not compared with the baseline"


def test_claims_are_judged_by_the_fixed_rule(obs):
    def claim(a, expect, measure="detectors", **kw):
        return Claim(claim=f"{a} {expect}", a=a, b="scratch", measure=measure, expect=expect,
                     **{"layer": "layer4", "category": "total", "iou_threshold": 0.05, **kw})

    table = judge(obs, [claim("kd", "greater"), claim("kd", "less"), claim("ls", "less"),
                        claim("kd", "greater", measure="nothing"),
                        claim("kd", "greater", measure="test_acc", layer=None, category=None, iou_threshold=None)])
    assert table["verdict"].tolist() == ["held", "opposite", "undecided", "no data", "held"]


def test_one_seed_is_undecided():
    acc, det = _accuracy(), _detectors()
    obs1 = observations(acc[acc.seed == 0], det[det.seed == 0])
    table = judge(obs1, [Claim(claim="x", a="kd", b="scratch", measure="detectors", expect="greater",
                               layer="layer4", category="total", iou_threshold=0.05)])
    assert table["verdict"].tolist() == ["undecided"]


def test_a_baseline_without_results_and_a_metrics_table_without_a_column_are_one_line(obs):
    from kdlib.errors import KdlibError

    with pytest.raises(KdlibError) as e:
        differences(obs, "nobody")
    assert str(e.value) == "baseline run 'nobody' has no results; valid: one of kd, ls, random-m, scratch"
    metrics = pd.DataFrame({"network": ["kd-s0"], "run": ["kd"], "seed": [0], "measure": ["x"], "value": [1.0]})
    with pytest.raises(KdlibError, match="^metrics table lacks column 'setting'; valid: network, run, seed, measure, setting, score, value$"):
        observations(_accuracy(), _detectors(), metrics)
