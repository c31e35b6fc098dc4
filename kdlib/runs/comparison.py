"""Methods compared across seeds: every measure of every network in one long table, summarised per run
with a confidence interval, each run compared with the baseline seed by seed, and the claims judged.

The study's tables are per network (``tables/accuracy.csv``, ``tables/detectors.csv`` and, when the
metrics step ran, ``tables/metrics.csv``). :func:`observations` stacks them into one long table with one
row per (network, measure): ``network, run, seed, kind, measure, layer, category, iou_threshold,
setting, score, value`` (NaN where a key does not apply; ``setting`` and ``score`` are a metric's, e.g.
``five_band``, ``saliency``, ``hard_pixel_accuracy``). Then:

* :func:`summary`: per run and measure, mean, 95% t interval, sd and number of seeds (``kdlib.stats``);
  an untrained null is summarised as the run ``random-<model>``;
* :func:`differences`: per run and measure, ``run - baseline`` paired by seed (the seeds share initial
  weights and data order across methods), with its interval, t and p;
* :func:`judge`: each claim of the ``report`` section is *held* when the interval of ``a - b`` excludes 0
  in the expected direction, *opposite* when it excludes 0 the other way, and *undecided* otherwise
  (including when there is only one seed). The rule is fixed before any result is seen.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from kdlib.errors import KdlibError
from kdlib.stats import mean_ci, paired_difference

KEYS = ["measure", "layer", "category", "iou_threshold", "setting", "score"]
COLUMNS = ["network", "run", "seed", "kind", *KEYS, "value"]
ACCURACY_MEASURES = ("train_acc", "val_acc", "test_acc")
DISSECTION_MEASURES = ("detectors", "share", "unique_concepts", "mean_best_iou", "median_best_iou")


def observations(accuracy: pd.DataFrame, detectors: pd.DataFrame, metrics: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The study's tables as one long table (see the module docstring)."""
    parts = [_accuracy_rows(accuracy), _detector_rows(detectors)]
    if metrics is not None and len(metrics):
        parts.append(_metric_rows(metrics))
    frame = pd.concat(parts, ignore_index=True)
    return frame[COLUMNS]


def _accuracy_rows(accuracy: pd.DataFrame) -> pd.DataFrame:
    long = accuracy.melt(id_vars=["network", "run", "seed"], value_vars=list(ACCURACY_MEASURES),
                         var_name="measure", value_name="value")
    return long.assign(kind="trained", layer=np.nan, category=np.nan, iou_threshold=np.nan, setting=np.nan, score=np.nan)


def _detector_rows(detectors: pd.DataFrame) -> pd.DataFrame:
    frame = detectors.copy()
    frame["run"] = np.where(frame["kind"] == "random", "random-" + frame["model"].astype(str), frame["run"])
    long = frame.melt(id_vars=["network", "run", "seed", "kind", "layer", "category", "iou_threshold"],
                      value_vars=list(DISSECTION_MEASURES), var_name="measure", value_name="value")
    graded = long["measure"].isin(["mean_best_iou", "median_best_iou"])
    long.loc[graded, "iou_threshold"] = np.nan  # graded measures do not depend on the threshold
    long = long.drop_duplicates(subset=["network", "measure", "layer", "category", "iou_threshold"])
    return long.assign(setting=np.nan, score=np.nan)


def _metric_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    wanted = ("network", "run", "seed", "measure", "setting", "score", "value")
    missing = [c for c in wanted if c not in metrics]
    if missing:
        raise KdlibError(f"metrics table lacks column {missing[0]!r}; valid: {', '.join(wanted)}")
    frame = metrics[list(wanted)].copy()
    return frame.assign(kind="trained", layer=np.nan, category=np.nan, iou_threshold=np.nan)


def _group(frame: pd.DataFrame, by: list[str]):
    return frame.groupby(by, dropna=False, sort=False)


def summary(obs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per run and measure: ``mean, low, high, sd, n`` over seeds."""
    rows = []
    for key, group in _group(obs, ["run", *KEYS]):
        est = mean_ci(group.sort_values("seed")["value"].astype(float), level)
        rows.append({**dict(zip(["run", *KEYS], key)), **est.as_dict()})
    return pd.DataFrame(rows)


def _paired(obs: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Rows of runs ``a`` and ``b`` joined by measure keys and seed: columns ``value_a``, ``value_b``."""
    left = obs[obs["run"] == a]
    right = obs[obs["run"] == b]
    return left.merge(right, on=[*KEYS, "seed"], suffixes=("_a", "_b"))


def differences(obs: pd.DataFrame, baseline: str, level: float = 0.95) -> pd.DataFrame:
    """Per trained run other than ``baseline`` and measure: ``run - baseline`` paired by seed."""
    if baseline not in set(obs["run"]):
        raise KdlibError(f"baseline run {baseline!r} has no results; valid: one of {', '.join(sorted(set(obs['run'].dropna())))}")
    rows = []
    runs = [r for r in obs.loc[obs["kind"] == "trained", "run"].unique() if r != baseline]
    for run in runs:
        joined = _paired(obs, run, baseline)
        for key, group in _group(joined, KEYS):
            res = paired_difference(group["value_a"].astype(float), group["value_b"].astype(float), level)
            rows.append({"run": run, "baseline": baseline, **dict(zip(KEYS, key)), **res.as_dict()})
    return pd.DataFrame(rows)


def judge(obs: pd.DataFrame, claims: list, level: float = 0.95) -> pd.DataFrame:
    """Each claim (``kdlib.params.Claim``): ``a - b`` paired by seed, and the verdict of the module rule."""
    rows = []
    for claim in claims:
        joined = _paired(obs, claim.a, claim.b)
        for key in KEYS:
            want = getattr(claim, key)
            joined = joined[joined[key].isna()] if want is None else joined[joined[key] == want]
        if joined.empty:
            rows.append({"claim": claim.claim, "a": claim.a, "b": claim.b, "verdict": "no data", "n": 0})
            continue
        if joined["seed"].duplicated().any():
            raise KdlibError(
                f"report claim {claim.claim!r} matches {len(joined)} rows for {joined['seed'].nunique()} seeds; "
                "valid: a claim naming one measure (give its layer, category, iou_threshold, setting and score)"
            )
        res = paired_difference(joined["value_a"].astype(float), joined["value_b"].astype(float), level)
        rows.append({"claim": claim.claim, "a": claim.a, "b": claim.b, "expect": claim.expect,
                     **res.as_dict(), "verdict": verdict(res.difference, claim.expect)})
    return pd.DataFrame(rows)


def verdict(diff, expect: str) -> str:
    """``held`` / ``opposite`` / ``undecided`` for an interval of ``a - b`` and the expected sign."""
    if diff.n < 2 or math.isnan(diff.low):
        return "undecided"
    above, below = diff.low > 0, diff.high < 0
    if expect == "greater":
        return "held" if above else "opposite" if below else "undecided"
    return "held" if below else "opposite" if above else "undecided"
