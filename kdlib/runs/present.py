"""The tables the notebooks show, cut from what the steps wrote: nothing here trains, dissects or scores.

Every function takes a saved table (``summary``, ``differences``, ``claims``, ``metrics``, ``detectors``
of :mod:`kdlib.runs.steps` / :mod:`kdlib.runs.comparison`), a dissection result or a world folder and
returns a small :class:`pandas.DataFrame` in long form: the numbers one figure plots or one table
prints. Runs keep the study's order (teachers, students, then the untrained nulls ``random-<model>``).
A key given as None selects the rows where that key does not apply (NaN), as in a claim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from kdlib.errors import KdlibError
from kdlib.params import StudyParams

ESTIMATE = ["mean", "low", "high", "n"]
DIFFERENCE = ["diff_mean", "diff_low", "diff_high", "t", "p", "diff_n"]
ACCURACY = ("train_acc", "val_acc", "test_acc")


def _match(frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
    """Rows where each key equals its value (None: NaN; a list or tuple: any of its values)."""
    for key, want in keys.items():
        if key not in frame:
            raise KdlibError(f"table has no column {key!r}; valid: one of {', '.join(map(str, frame.columns))}")
        if want is None:
            frame = frame[frame[key].isna()]
        elif isinstance(want, (list, tuple)):
            frame = frame[frame[key].isin(list(want))]
        else:
            frame = frame[frame[key] == want]
    return frame


def select(summary: pd.DataFrame, measure: str, columns: Sequence[str], **keys: Any) -> pd.DataFrame:
    """``columns`` + mean, low, high, n of ``measure``'s rows matching ``keys``."""
    rows = _match(summary, measure=measure, **keys)
    return rows[list(columns) + ESTIMATE].reset_index(drop=True)


def by_category(summary: pd.DataFrame, measure: str, layer: str, iou_threshold: Optional[float] = None,
                runs: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per run and category (``total`` included): ``measure`` of ``layer`` at ``iou_threshold`` over
    seeds. Graded measures (``mean_best_iou``, ``median_best_iou``) have no threshold: pass None."""
    keys = {"layer": layer, "iou_threshold": iou_threshold}
    if runs is not None:
        keys["run"] = list(runs)
    return select(summary, measure, ["run", "category"], **keys)


def accuracy(summary: pd.DataFrame, measures: Sequence[str] = ACCURACY) -> pd.DataFrame:
    """Per run: accuracies (mean and interval over seeds; a teacher has one seed)."""
    return select(summary, list(measures), ["run", "measure"], layer=None, category=None, setting=None, score=None)


def metric(summary: pd.DataFrame, measure: str, scores: Optional[Sequence[str]] = None,
           settings: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per run, setting and score of a ``metrics:`` measure (``five_band``, ``gradient_alignment``, ...)."""
    keys: dict[str, Any] = {}
    if scores is not None:
        keys["score"] = list(scores)
    if settings is not None:
        keys["setting"] = list(settings)
    return select(summary, measure, ["run", "setting", "score"], **keys)


def null_and_trained(summary: pd.DataFrame, layer: str, iou_thresholds: Sequence[float]) -> pd.DataFrame:
    """Detectors in ``layer`` (all categories together) of every run and of the untrained nulls, at each
    threshold: the random-weight baseline beside the trained networks."""
    return select(summary, "detectors", ["run", "iou_threshold"], layer=layer, category="total",
                  iou_threshold=list(iou_thresholds))


def threshold_sensitivity(summary: pd.DataFrame, layer: str, thresholds: Sequence[float] = (0.04, 0.05)) -> pd.DataFrame:
    """Per run: detectors in ``layer`` (total) at each IoU threshold side by side, and their ratio."""
    rows = null_and_trained(summary, layer, thresholds)
    wide = rows.pivot_table(index="run", columns="iou_threshold", values="mean", sort=False)
    wide.columns = [f"detectors@{t:g}" for t in wide.columns]
    out = wide.reset_index()
    first, last = f"detectors@{thresholds[0]:g}", f"detectors@{thresholds[-1]:g}"
    if first in out and last in out:
        out[f"ratio {thresholds[-1]:g}/{thresholds[0]:g}"] = out[last] / out[first].replace(0, np.nan)
    return out


def differences(diff: Optional[pd.DataFrame], measure: str, columns: Sequence[str] = (),
                runs: Optional[Sequence[str]] = None, **keys: Any) -> pd.DataFrame:
    """Rows of ``tables/differences.csv`` (each run minus the baseline, paired by seed) for one measure,
    of the runs ``runs`` (default: every run; the students are the ones trained at every seed)."""
    head = ["run", "baseline", *columns]
    if diff is None or diff.empty:
        return pd.DataFrame(columns=head + DIFFERENCE)
    rows = _match(diff, measure=measure, **keys)
    if runs is not None:
        rows = rows[rows["run"].isin(list(runs))]
    return rows[head + DIFFERENCE].reset_index(drop=True)


def students(study: StudyParams) -> list[str]:
    """The names of the study's student runs (those trained at every seed and compared with the baseline)."""
    return [r.name for r in study.students]


def headline_differences(diff: Optional[pd.DataFrame], layer: str, runs: Sequence[str], thresholds: Sequence[float]) -> pd.DataFrame:
    """``run - baseline`` for the study's headline measures: test accuracy, detectors and unique concepts
    in ``layer`` (total) at each threshold, and the graded mean best IoU."""
    parts = [differences(diff, "test_acc").assign(measure="test_acc")]
    for thr in thresholds:
        for measure in ("detectors", "unique_concepts"):
            part = differences(diff, measure, layer=layer, category="total", iou_threshold=thr)
            parts.append(part.assign(measure=f"{measure}@{thr:g}"))
    graded = differences(diff, "mean_best_iou", layer=layer, category="total", iou_threshold=None)
    parts.append(graded.assign(measure="mean_best_iou"))
    out = pd.concat(parts, ignore_index=True)
    out = out[out["run"].isin(list(runs))]
    return out[["run", "baseline", "measure", *DIFFERENCE]].reset_index(drop=True)


def paper_beside_ours(summary: pd.DataFrame, paper: pd.DataFrame, layer: str) -> pd.DataFrame:
    """The paper's figures (``kdlib.runs.paper.paper_table``) beside ours for the runs it reports:
    test accuracy, detectors at its IoU threshold as a share of the layer's units (its layer4 has 512,
    ours fewer), and the within-class entropy (ours: the per-image reading of ``class_similarity``)."""
    rows = []
    for rec in paper.to_dict("records"):
        thr, run = rec["iou_threshold"], rec["run"]
        rows.append({"run": run, "source": "paper", "test_acc": rec["test_acc"], "detectors": rec["detectors"],
                     "share": rec["share"], "within_class_entropy": rec["within_class_entropy"], "n": 1})
        ours = {"test_acc": _mean(summary, run, "test_acc", layer=None, category=None),
                "detectors": _mean(summary, run, "detectors", layer=layer, category="total", iou_threshold=thr),
                "share": _mean(summary, run, "share", layer=layer, category="total", iou_threshold=thr),
                "within_class_entropy": _mean(summary, run, "class_similarity", score="entropy")}
        n = _match(summary, run=run, measure="test_acc")["n"]
        rows.append({"run": run, "source": "ours", **ours, "n": int(n.iloc[0]) if len(n) else 0})
    return pd.DataFrame(rows)


def _mean(summary: pd.DataFrame, run: str, measure: str, **keys: Any) -> float:
    rows = _match(summary, run=run, measure=measure, **keys)
    return float(rows["mean"].iloc[0]) if len(rows) else float("nan")


def diffroar_curve(metrics: pd.DataFrame) -> pd.DataFrame:
    """DiffROAR per network and fraction kept ``k``, the random-attribution control beside each network's
    attribution: ``run, network, seed, attribution, k, diffroar, top_accuracy, bottom_accuracy``."""
    rows = _match(metrics, measure="diffroar")
    if rows.empty:
        return pd.DataFrame(columns=["run", "network", "seed", "attribution", "k", "diffroar", "top_accuracy", "bottom_accuracy"])
    parts = rows["setting"].str.rsplit("/", n=1, expand=True)
    rows = rows.assign(attribution=parts[0], k=parts[1])
    rows = rows[rows["k"].str.startswith("k=")].assign(k=lambda f: f["k"].str[2:].astype(float))
    wide = rows.pivot_table(index=["run", "network", "seed", "attribution", "k"], columns="score", values="value", sort=False)
    out = wide.reset_index()[["run", "network", "seed", "attribution", "k", "diffroar", "top_accuracy", "bottom_accuracy"]]
    out.columns.name = None
    return out.sort_values(["network", "attribution", "k"], kind="stable").reset_index(drop=True)


def curves(history: pd.DataFrame, values: Sequence[str] = ("train_acc", "val_acc")) -> pd.DataFrame:
    """Training curves per run: mean over seeds of each of ``values`` at each epoch (``measure, run,
    epoch, mean, n``)."""
    long = history.melt(id_vars=["run", "seed", "epoch"], value_vars=list(values), var_name="measure")
    grouped = long.groupby(["measure", "run", "epoch"], sort=False)["value"]
    return grouped.agg(mean="mean", n="count").reset_index()


def wide(table: pd.DataFrame, index: str, columns: Sequence[str], values: str = "mean") -> pd.DataFrame:
    """``table`` pivoted for printing: one row per ``index`` value, one column per ``columns`` combination."""
    out = table.pivot_table(index=index, columns=list(columns), values=values, sort=False)
    out.columns = [" ".join(str(c) for c in (col if isinstance(col, tuple) else (col,))) for col in out.columns]
    return out.reset_index()


def best_iou_long(study: StudyParams, dissections: dict, layer: str) -> pd.DataFrame:
    """Each unit's best IoU per category in ``layer`` of every dissected network: ``run, network, seed,
    kind, unit, category, best_iou`` (the graded measure beside the detector count)."""
    from kdlib.runs.steps import networks

    frames = []
    for net in networks(study):
        if net.name not in dissections or layer not in dissections[net.name]:
            continue
        best = dissections[net.name][layer].best_iou().reset_index()
        long = best.melt(id_vars="unit", var_name="category", value_name="best_iou")
        run = net.instance.name if net.kind == "trained" else f"random-{net.model}"
        frames.append(long.assign(run=run, network=net.name, seed=net.seed, kind=net.kind))
    if not frames:
        raise KdlibError(f"no dissection of layer {layer!r}; valid: one of {', '.join(study.dissect.layers)}")
    out = pd.concat(frames, ignore_index=True)
    return out[["run", "network", "seed", "kind", "unit", "category", "best_iou"]]


def quantiles(long: pd.DataFrame, by: Sequence[str] = ("run", "category"), value: str = "best_iou") -> pd.DataFrame:
    """Per group: how many values and their min, quartiles, median and max (what a box plot draws)."""
    grouped = long.groupby(list(by), sort=False)[value]
    out = grouped.agg(units="count", min="min", q25=lambda v: v.quantile(0.25), median="median",
                      q75=lambda v: v.quantile(0.75), max="max")
    return out.reset_index()


def detector_matrix(detectors: pd.DataFrame, layer: str, iou_threshold: float, value: str = "detectors") -> pd.DataFrame:
    """One row per network, one column per category (``total`` last): detectors in ``layer``."""
    rows = _match(detectors, layer=layer, iou_threshold=iou_threshold)
    out = rows.pivot_table(index=["network", "units"], columns="category", values=value, sort=False)
    out.columns.name = None
    return out.reset_index()


def trained_table(accuracy_table: pd.DataFrame) -> pd.DataFrame:
    """The accuracy table without its wall times: network, run, seed, model, loss, epoch, accuracies."""
    return accuracy_table.drop(columns=["seconds"], errors="ignore").reset_index(drop=True)


def accuracy_over_seeds(accuracy_table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per run: test accuracy, mean and ``level`` interval over its seeds (:func:`kdlib.stats.mean_ci`)."""
    from kdlib.stats import mean_ci

    rows = []
    for run, group in accuracy_table.groupby("run", sort=False):
        est = mean_ci(group.sort_values("seed")["test_acc"].astype(float), level)
        rows.append({"run": run, "measure": "test_acc", "mean": est.mean, "low": est.low, "high": est.high, "n": est.n})
    return pd.DataFrame(rows)


def claims(claims_table: pd.DataFrame) -> pd.DataFrame:
    """The claims and their verdicts, the columns a reader needs (``a - b``: mean, interval, p, seeds)."""
    if claims_table is None or claims_table.empty:
        return pd.DataFrame(columns=["claim", "a", "b", "expect", "diff_mean", "diff_low", "diff_high", "p", "diff_n", "verdict"])
    cols = ["claim", "a", "b", "expect", "diff_mean", "diff_low", "diff_high", "p", "diff_n", "verdict"]
    return claims_table.reindex(columns=cols).reset_index(drop=True)


# -- the world ----------------------------------------------------------------------------------


def _world_json(world: Path, name: str) -> dict:
    path = Path(world) / name
    if not path.is_file():
        raise KdlibError(f"no {name} in {str(world)!r}; valid: a world generated by kdlib.data.world")
    return json.loads(path.read_text(encoding="utf-8"))


def world_counts(world: Path) -> pd.DataFrame:
    """Images per split (and probe images) of a generated world, from its manifest."""
    manifest = _world_json(world, "manifest.json")
    return pd.DataFrame([{"split": k, "images": v} for k, v in manifest["counts"].items()])


def world_classes(world: Path) -> pd.DataFrame:
    """Every class: superclass (shape), its own part, texture, material, colour and home scene."""
    onto = _world_json(world, "classes.json")
    scenes = [s["name"] for s in onto.get("scenes", [])]
    rows = [{"class": c["name"], "superclass": c["superclass"], "shape": c.get("shape"), "part": c.get("part"),
             "texture": c.get("texture"), "material": c.get("material"), "colour": c.get("colour"),
             "home_scene": scenes[c["home_scene"]] if "home_scene" in c and c["home_scene"] < len(scenes) else None}
            for c in sorted(onto["classes"], key=lambda c: c["index"])]
    return pd.DataFrame(rows)


def label_stats(world: Path) -> pd.DataFrame:
    """The probe set's label statistics per category (``label_stats.csv``)."""
    path = Path(world) / "label_stats.csv"
    if not path.is_file():
        raise KdlibError(f"no label_stats.csv in {str(world)!r}; valid: a world generated by kdlib.data.world")
    return pd.read_csv(path)


def runs_named(table: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Rows of ``table`` whose run is one of ``names``, in the order of ``names``."""
    names = list(names)
    rows = table[table["run"].isin(names)]
    order = {n: i for i, n in enumerate(names)}
    return rows.sort_values("run", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def quantile_sensitivity(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per run: mean detectors over seeds (``tables/quantile_sensitivity.csv``) with one column per
    (activation quantile, IoU threshold), runs in the table's order."""
    from kdlib.stats import mean_ci

    if table.empty:
        return pd.DataFrame(columns=["run"])
    rows = []
    for (run, q, thr), group in table.groupby(["run", "quantile", "iou_threshold"], sort=False):
        est = mean_ci(group.sort_values("seed")["detectors"].astype(float), level)
        rows.append({"run": run, "column": f"q {q:g}, IoU {thr:g}", "mean": est.mean})
    wide = pd.DataFrame(rows).pivot_table(index="run", columns="column", values="mean", sort=False)
    return wide.reset_index().rename_axis(columns=None)


def power_sentences(power: pd.DataFrame, baseline: str, layer: str, thresholds: Sequence[float]) -> str:
    """The power estimate (``tables/power.csv``) as one sentence per IoU threshold."""
    from kdlib.runs.power import sentence

    return " ".join(sentence(power, baseline, layer, thr) for thr in thresholds)
