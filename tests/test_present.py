"""kdlib.runs.present on hand-made tables: the rows each notebook table shows, numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdlib.runs import present
from kdlib.runs.comparison import differences, observations, summary
from kdlib.runs.paper import paper_table
from kdlib.stats import mean_ci

SEEDS = [0, 1, 2]
TOTAL = {"scratch": [20, 26, 32], "kd": [24, 31, 35], "ls": [19, 26, 30]}  # layer4 detectors at 0.05
RUNS = ["teacher", *TOTAL]


def _accuracy() -> pd.DataFrame:
    rows = [{"network": "teacher", "run": "teacher", "role": "teacher", "seed": 0, "model": "t", "loss": "x", "epoch": 3,
             "train_acc": 0.9, "val_acc": 0.8, "test_acc": 0.8, "seconds": 9.0}]
    rows += [{"network": f"{r}-s{s}", "run": r, "role": "student", "seed": s, "model": "m", "loss": "x", "epoch": 3,
              "train_acc": 0.5, "val_acc": 0.4, "test_acc": 0.4 + 0.01 * i + 0.002 * s, "seconds": 1.0}
             for i, r in enumerate(TOTAL) for s in SEEDS]
    return pd.DataFrame(rows)


def _detectors() -> pd.DataFrame:
    rows = []
    nets = [("teacher", "teacher", 0, "trained", 40)] + [(f"{r}-s{s}", r, s, "trained", n) for r, ns in TOTAL.items() for s, n in zip(SEEDS, ns)]
    nets += [(f"random-m-s{s}", None, s, "random", s) for s in SEEDS]
    for net, run, seed, kind, n in nets:
        for thr, extra in ((0.04, 10), (0.05, 0)):
            for cat, value in (("object", n // 2), ("total", n + extra)):
                rows.append({"network": net, "run": run, "seed": seed, "model": "m", "kind": kind, "units": 64,
                             "layer": "layer4", "category": cat, "iou_threshold": thr, "detectors": value,
                             "share": value / 64, "unique_concepts": value // 4, "mean_best_iou": 0.01 * n,
                             "median_best_iou": 0.0})
    return pd.DataFrame(rows)


def _metrics() -> pd.DataFrame:
    rows = []
    for r in TOTAL:
        for s in SEEDS:
            base = {"network": f"{r}-s{s}", "run": r, "seed": s}
            rows.append({**base, "measure": "class_similarity", "setting": "T=1", "score": "entropy", "value": 1.5 + 0.1 * s})
            if s == 0:
                for attribution, shift in (("gradient", 0.1), ("random", 0.0)):
                    for k in (0.1, 0.5):
                        top, bottom = 0.5 + shift + k / 10, 0.5
                        for score, value in (("diffroar", top - bottom), ("top_accuracy", top), ("bottom_accuracy", bottom)):
                            rows.append({**base, "measure": "diffroar", "setting": f"{attribution}/k={k}", "score": score, "value": value})
                    rows.append({**base, "measure": "diffroar", "setting": f"{attribution}/mean", "score": "diffroar", "value": shift})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables():
    obs = observations(_accuracy(), _detectors(), _metrics())
    return summary(obs), differences(obs, "scratch")


def test_by_category_is_the_interval_over_seeds_in_study_order(tables):
    summ, _ = tables
    table = present.by_category(summ, "detectors", "layer4", 0.05)
    assert table["run"].unique().tolist() == RUNS + ["random-m"]
    kd = table[(table.run == "kd") & (table.category == "total")].iloc[0]
    est = mean_ci(TOTAL["kd"])
    assert (kd["mean"], kd["low"], kd["high"], kd["n"]) == pytest.approx((30.0, est.low, est.high, 3))
    teacher = table[(table.run == "teacher") & (table.category == "total")].iloc[0]
    assert teacher["mean"] == 40 and math.isnan(teacher["low"]) and teacher["n"] == 1
    graded = present.by_category(summ, "mean_best_iou", "layer4")
    assert graded[(graded.run == "kd") & (graded.category == "total")]["mean"].iloc[0] == pytest.approx(0.30)


def test_threshold_sensitivity_puts_both_thresholds_side_by_side(tables):
    table = present.threshold_sensitivity(tables[0], "layer4").set_index("run")
    assert table.loc["scratch", "detectors@0.04"] == pytest.approx(36.0)  # mean of 30, 36, 42
    assert table.loc["scratch", "detectors@0.05"] == pytest.approx(26.0)
    assert table.loc["scratch", "ratio 0.05/0.04"] == pytest.approx(26 / 36)
    assert table.loc["random-m", "detectors@0.05"] == pytest.approx(1.0)


def test_differences_are_the_paired_ones_of_the_chosen_runs(tables):
    _, diff = tables
    table = present.differences(diff, "detectors", ["category"], ["kd"], layer="layer4", iou_threshold=0.05)
    assert table["run"].tolist() == ["kd", "kd"] and table["category"].tolist() == ["object", "total"]
    total = table[table.category == "total"].iloc[0]
    assert total["diff_mean"] == pytest.approx(np.mean([4, 5, 3])) and total["diff_n"] == 3
    assert present.differences(None, "detectors").empty
    head = present.headline_differences(diff, "layer4", ["kd", "ls"], (0.04, 0.05))
    assert head["measure"].unique().tolist() == ["test_acc", "detectors@0.04", "unique_concepts@0.04", "detectors@0.05",
                                                 "unique_concepts@0.05", "mean_best_iou"]
    assert set(head["run"]) == {"kd", "ls"}, "the teacher (one seed) is not a method difference"
    acc = head[(head.run == "ls") & (head.measure == "test_acc")].iloc[0]
    assert acc["diff_mean"] == pytest.approx(0.02)


def test_paper_beside_ours_compares_shares_of_units(tables):
    table = present.paper_beside_ours(tables[0], paper_table(), "layer4")
    assert table["run"].tolist() == ["scratch", "scratch", "ls", "ls", "kd", "kd"]
    ours = table[(table.run == "kd") & (table.source == "ours")].iloc[0]
    assert ours["detectors"] == pytest.approx(30.0) and ours["share"] == pytest.approx(30 / 64)
    assert ours["within_class_entropy"] == pytest.approx(1.6) and ours["n"] == 3
    paper = table[(table.run == "kd") & (table.source == "paper")].iloc[0]
    assert paper["share"] == pytest.approx(312 / 512)


def test_diffroar_curve_reads_settings_into_attribution_and_k():
    curve = present.diffroar_curve(_metrics())
    assert len(curve) == 3 * 2 * 2, "one row per network, attribution and k; the means over k are left out"
    row = curve[(curve.run == "kd") & (curve.attribution == "gradient") & (curve.k == 0.5)].iloc[0]
    assert (row["diffroar"], row["top_accuracy"], row["bottom_accuracy"]) == pytest.approx((0.15, 0.65, 0.5))
    assert present.diffroar_curve(_metrics().iloc[:0].assign(measure=[])).empty


def test_curves_and_wide_average_over_seeds():
    history = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0], "epoch": [1, 2, 1, 2, 1, 2],
                            "train_acc": [0.1, 0.3, 0.2, 0.5, 0.4, 0.6], "val_acc": [0.0] * 6})
    curves = present.curves(history, ["train_acc"])
    assert curves[["run", "epoch", "mean", "n"]].values.tolist() == [["a", 1, pytest.approx(0.15), 2], ["a", 2, 0.4, 2],
                                                                      ["b", 1, 0.4, 1], ["b", 2, 0.6, 1]]
    wide = present.wide(curves, "epoch", ["measure", "run"])
    assert wide.columns.tolist() == ["epoch", "train_acc a", "train_acc b"]


def test_quantiles_are_what_a_box_shows():
    long = pd.DataFrame({"run": ["a"] * 5, "category": ["x"] * 5, "best_iou": [0.0, 0.1, 0.2, 0.3, 1.0]})
    row = present.quantiles(long).iloc[0]
    assert row[["units", "min", "q25", "median", "q75", "max"]].tolist() == pytest.approx([5, 0.0, 0.1, 0.2, 0.3, 1.0])


def test_accuracy_over_seeds_and_the_table_without_wall_times():
    acc = _accuracy()
    table = present.accuracy_over_seeds(acc).set_index("run")
    assert table.loc["kd", "mean"] == pytest.approx(0.412) and table.loc["teacher", "n"] == 1
    assert "seconds" not in present.trained_table(acc)


def test_claims_keeps_the_columns_a_reader_needs():
    empty = present.claims(pd.DataFrame())
    assert empty.empty and "verdict" in empty
