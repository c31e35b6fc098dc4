"""The headless study: world -> training -> dissection (trained and random-weight networks) -> tables.

``python -m kdlib.runs PARAMS.yaml [--out DIR]`` (what ``make study`` runs). The run folder is
``<output_root>/<params stem>-<params hash>/``, so the same params always land in the same folder and a
re-run reuses every finished step (training resumes from checkpoints; dissections come from the cache);
other params get another folder. It holds::

    manifest.json          params, seed, git commit, package versions, machine, timings per step
    runs/<run>/            training run folders (checkpoint.pt, metrics.csv, params.yaml, done)
    dissect/<net>/         per network: tally_<layer>.csv, thresholds, IoU arrays, summary.csv
    tables/accuracy.csv    per run: model, epoch whose weights are used, train/val/test accuracy, seconds
    tables/detectors.csv   per network, layer, IoU threshold (0.04 and 0.05) and category: detectors,
                           share of units, unique concepts, mean/median best IoU
    figures/detectors_<layer>.png   detectors per category for every network
    done                   written last

Every trained network is dissected, and so is each architecture's untrained network, with the very
weights its runs started from (the null: what dissection finds without any learning). The notebooks (``notebooks/``) present these results.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import torch

from kdlib import atomic
from kdlib.data.broden import BrodenDataset
from kdlib.data.world import ensure_world
from kdlib.errors import KdlibError
from kdlib.params import StudyParams, to_dict
from kdlib.runs.manifest import Manifest

IOU_THRESHOLDS = (0.04, 0.05)  # Network Dissection's and Han et al.'s; both always reported


def run_id(study: StudyParams) -> str:
    stem = Path(study.source).stem if study.source.endswith((".yaml", ".yml")) else "study"
    digest = hashlib.sha256(json.dumps(to_dict(study), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def study_dir(study: StudyParams, out: str | Path | None = None) -> Path:
    return Path(out) if out is not None else Path(study.output_root) / run_id(study)


def probe_set(study: StudyParams, world: Path) -> BrodenDataset:
    root = Path(study.data.broden) if study.data.broden else world / "broden"
    return BrodenDataset(root)


def detector_rows(name: str, model: str, kind: str, result) -> list[dict]:
    rows = []
    for layer, res in result.layers.items():
        for thr in IOU_THRESHOLDS:
            for rec in res.summary(thr).to_dict("records"):
                rows.append({"network": name, "model": model, "kind": kind, "units": res.units, **rec})
    return rows


def run_study(study: StudyParams, out: str | Path | None = None, progress: bool = True) -> Path:
    """Run every step of the study that params describe; return the run folder."""
    from kdlib.dissect import dissect
    from kdlib.models.checkpoint import load_model
    from kdlib.train.fit import fit, initial_network
    from kdlib.viz.dissect import detector_bar_chart

    folder = study_dir(study, out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done").unlink(missing_ok=True)
    manifest = Manifest(folder=folder, params=to_dict(study), seed=study.seed)
    manifest.save()

    with manifest.step("world"):
        world = ensure_world(study) if study.data.imagefolder is None or study.data.broden is None else None
        manifest.data["world"] = str(world) if world is not None else None

    results = {}
    with manifest.step("train"):
        for run in study.runs():
            results[run.name] = fit(study, run.name, out=str(folder / "runs"), progress=progress)
    accuracy = pd.DataFrame(
        [
            {
                "run": name,
                "model": study.run(name).model,
                "loss": " + ".join(f"{t.get('weight', 1.0)} {t['name']}" for t in study.run(name).loss),
                "epoch": r.epoch,
                "train_acc": r.train_acc,
                "val_acc": r.val_acc,
                "test_acc": r.test_acc,
                "seconds": r.seconds,
            }
            for name, r in results.items()
        ]
    )
    _write_table(folder / "tables" / "accuracy.csv", accuracy)

    if not study.runs():
        raise KdlibError(f"{study.source}: no teacher or students to study; valid: a teacher and/or students section")
    probe = probe_set(study, world) if world is not None or study.data.broden else None
    cfg = study.dissect
    rows: list[dict] = []
    with manifest.step("dissect"):
        nets: list[tuple[str, str, str, torch.nn.Module]] = []
        num_classes = None
        for name, r in results.items():
            net, state = load_model(r.checkpoint)
            num_classes = state["model"]["num_classes"]
            nets.append((name, study.run(name).model, "trained", net))
        # The null: each architecture's untrained network, the exact weights its runs started from.
        first_run = {}
        for n in results:
            first_run.setdefault(study.run(n).model, n)
        for model, n in first_run.items():
            nets.append((f"random-{model}", model, "random", initial_network(study, n, num_classes).eval()))
        for name, model, kind, net in nets:
            res = dissect(
                net, probe, layers=cfg.layers, quantile=cfg.quantile, iou_threshold=cfg.iou_threshold,
                batch_size=cfg.batch_size, cache_dir=folder / "cache", progress=progress,
                examples=cfg.examples, feature_cache_mb=cfg.feature_cache_mb,
            )  # fmt: skip
            res.save(folder / "dissect" / name)
            rows += detector_rows(name, model, kind, res)
    detectors = pd.DataFrame(rows)
    _write_table(folder / "tables" / "detectors.csv", detectors)

    with manifest.step("figures"):
        from kdlib.dissect.result import DissectResult

        for layer in cfg.layers:
            named = {name: DissectResult.load(folder / "dissect" / name)[layer] for name, *_ in nets}
            fig = detector_bar_chart(named, iou_threshold=cfg.iou_threshold, share=True)
            (folder / "figures").mkdir(exist_ok=True)
            with atomic.atomic_path(folder / "figures" / f"detectors_{layer}.png") as tmp:
                fig.savefig(tmp, dpi=110, format="png")
    manifest.save()
    atomic.write_text(folder / "done", time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    return folder


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
