"""The step API: what ``python -m kdlib.runs`` and every notebook call, one function per step.

Each step takes the validated params and the study's run folder (:class:`kdlib.layout.StudyFolder`),
returns its result in memory, writes it atomically into the folder, and skips the work whose inputs are
unchanged (a finished training is returned as it is; a network dissected with the same weights, probe
set and settings is read back). A step that needs an earlier step's output reads it from the folder, so
a notebook can run one step alone::

    study = load_study("params/tiny.yaml")
    folder = StudyFolder.for_study(study)
    steps.check(study)                   # everything params and model names can tell, before any work
    steps.world(study, folder)           # the generated world (made if absent)
    runs = steps.train(study, folder)    # {network key: RunResult}
    dis = steps.dissect(study, folder)   # {network name: DissectResult}, trained networks and nulls
    tabs = steps.tables(study, folder)   # {"accuracy": DataFrame, "detectors": DataFrame}
    figs = steps.figures(study, folder)  # {"detectors_layer4": Figure, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pandas as pd
import torch

from kdlib import atomic, layout
from kdlib.data.broden import BrodenDataset
from kdlib.digest import state_digest
from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.params import RunInstance, StudyParams, to_dict

IOU_THRESHOLDS = (0.04, 0.05)  # Network Dissection's and Han et al.'s; both always reported


# --------------------------------------------------------------------------------------------
# Checks and the world
# --------------------------------------------------------------------------------------------


def check(study: StudyParams) -> None:
    """Everything the params and the model names can tell, checked before any step runs: models, loss
    options, layers of every loss term, teachers (:func:`kdlib.train.check_study`), and the dissected
    layers of every network the study dissects."""
    from kdlib.models import build
    from kdlib.models.nethook import capture_layers
    from kdlib.train import check_study

    if not study.runs():
        raise KdlibError(f"{study.source}: no teachers or students to study; valid: a teachers and/or students section")
    check_study(study)
    for model, kwargs in {(r.model, tuple(sorted(r.model_kwargs.items()))): None for r in study.runs()}:
        net = build(model, 2, **dict(kwargs))
        try:
            capture_layers(net, study.dissect.layers)
        except KdlibError as exc:
            raise KdlibError(f"{study.source}: dissect.layers: {exc} (model {model})") from None


def world(study: StudyParams, folder: StudyFolder) -> Optional[Path]:
    """The generated world the params describe (made if absent), or None when real data replace it."""
    from kdlib.data.world import ensure_world

    if study.data.imagefolder is not None and study.data.broden is not None:
        return None
    return ensure_world(study)


def probe_set(study: StudyParams) -> BrodenDataset:
    """The Broden probe set: ``data.broden``, else the generated world's ``broden/``."""
    root = Path(study.data.broden) if study.data.broden else study.world_dir() / "broden"
    return BrodenDataset(root, image_size=study.dissect.image_size)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(study: StudyParams, folder: StudyFolder, names: Optional[list[str]] = None,
          progress: bool = True) -> dict[str, "RunResult"]:  # noqa: F821
    """Train the networks of runs ``names`` (default: all; teachers first, each student at each seed),
    resuming interrupted ones and returning finished ones as they are: ``{network key: RunResult}``."""
    from kdlib.train import fit_study

    return {r.name: r for r in fit_study(study, folder, names, progress=progress)}


def trained(study: StudyParams, folder: StudyFolder) -> dict[str, "RunResult"]:  # noqa: F821
    """The finished trainings of the study, read from the folder; one line naming the first missing one."""
    from kdlib.train import RunResult

    out = {}
    for inst in study.instances():
        done = layout.read_done(folder.run(inst.key), "train")
        if done is None:
            raise KdlibError(
                f"network {inst.key!r} is not trained in {folder.root}; valid: run the training step first "
                f"(python -m kdlib.train {study.source})"
            )
        out[inst.key] = RunResult(**{k: done[k] for k in RunResult.__dataclass_fields__})
    return out


# --------------------------------------------------------------------------------------------
# Dissection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """A network the study dissects: a trained one, or an architecture's untrained initial weights at a
    seed (the null: what dissection finds without any learning)."""

    name: str
    model: str
    kind: Literal["trained", "random"]
    seed: int
    instance: RunInstance

    def load(self, folder: StudyFolder, num_classes: int) -> torch.nn.Module:
        from kdlib.models.checkpoint import load_model
        from kdlib.train import initial_network

        if self.kind == "trained":
            return load_model(folder.run(self.instance.key) / layout.CHECKPOINT)[0]
        return initial_network(self.instance.run, num_classes, self.seed).eval()


def networks(study: StudyParams) -> list[Network]:
    """Every trained network, then one null per (architecture, seed) with the very weights its runs
    started from (``random-<model>-s<seed>``)."""
    out = [Network(i.key, i.run.model, "trained", i.seed, i) for i in study.instances()]
    nulls: dict[tuple, RunInstance] = {}
    for inst in study.instances():
        nulls.setdefault((inst.run.model, tuple(sorted(inst.run.model_kwargs.items())), inst.seed), inst)
    out += [Network(f"random-{m}-s{s}", m, "random", s, inst) for (m, _, s), inst in nulls.items()]
    return out


def _num_classes(study: StudyParams, folder: StudyFolder) -> int:
    from kdlib.models.checkpoint import load

    first = study.instances()[0]
    return int(load(folder.run(first.key) / layout.CHECKPOINT, "checkpoint")["model"]["num_classes"])


def dissect(study: StudyParams, folder: StudyFolder, progress: bool = True) -> dict[str, "DissectResult"]:  # noqa: F821
    """Dissect every trained network and every null (see :func:`networks`) into ``dissect/<name>/``.

    A network whose folder already holds a dissection made from the same weights, probe set and
    settings is read back instead of dissected again."""
    from kdlib.dissect import DissectResult
    from kdlib.dissect import dissect as run_dissection

    trained(study, folder)  # every network must be trained first: one line naming the missing one
    probe = probe_set(study)
    fingerprint = probe.fingerprint()
    num_classes = _num_classes(study, folder)
    out = {}
    for net in networks(study):
        model = net.load(folder, num_classes)
        key = {"weights": state_digest(model), "probe": fingerprint, "settings": to_dict(study.dissect)}
        target = folder.dissection(net.name)
        done = layout.read_done(target, "dissect") if target.is_dir() else None
        if done is not None and done.get("key") == key:
            out[net.name] = DissectResult.load(target)
            continue
        if target.is_dir():
            layout.clear_done(target)
        # decoded probe labels are cached once for the whole study in <study>/cache/labels
        result = run_dissection(model, probe, study.dissect, cache_dir=folder.cache, progress=progress)
        result.meta.update(network=net.name, model=net.model, kind=net.kind, seed=net.seed)
        result.save(target)
        layout.write_done(target, "dissect", key=key)
        out[net.name] = result
    return out


def dissections(study: StudyParams, folder: StudyFolder) -> dict[str, "DissectResult"]:  # noqa: F821
    """The saved dissections of every network, read from the folder (one line naming a missing one)."""
    from kdlib.dissect import DissectResult

    out = {}
    for net in networks(study):
        target = folder.dissection(net.name)
        if (layout.read_done(target, "dissect") if target.is_dir() else None) is None:
            raise KdlibError(f"network {net.name!r} is not dissected in {folder.root}; valid: run the dissection step first")
        out[net.name] = DissectResult.load(target)
    return out


# --------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------


def accuracy_table(study: StudyParams, results: dict) -> pd.DataFrame:
    """Per trained network: run, seed, model, loss, the epoch whose weights are used, accuracies, seconds."""
    rows = []
    for inst in study.instances():
        r = results[inst.key]
        loss = " + ".join(f"{t.get('weight', 1.0)} {t['name']}" for t in inst.run.loss)
        rows.append({"network": inst.key, "run": inst.name, "role": inst.role, "seed": inst.seed,
                     "model": inst.run.model, "loss": loss, "epoch": r.epoch, "train_acc": r.train_acc,
                     "val_acc": r.val_acc, "test_acc": r.test_acc, "seconds": r.seconds})
    return pd.DataFrame(rows)


def detector_table(study: StudyParams, results: dict) -> pd.DataFrame:
    """Per network, layer, IoU threshold (0.04 and 0.05) and category: detectors, share of units, unique
    concepts, mean/median best IoU (:meth:`kdlib.dissect.LayerResult.summary`)."""
    rows = []
    for net in networks(study):
        for layer, res in results[net.name].layers.items():
            for thr in IOU_THRESHOLDS:
                for rec in res.summary(thr).to_dict("records"):
                    rows.append({"network": net.name, "run": net.instance.name if net.kind == "trained" else None,
                                 "seed": net.seed, "model": net.model, "kind": net.kind, "units": res.units, **rec})
    return pd.DataFrame(rows)


def tables(study: StudyParams, folder: StudyFolder) -> dict[str, pd.DataFrame]:
    """``tables/accuracy.csv`` and ``tables/detectors.csv`` from the saved trainings and dissections."""
    out = {"accuracy": accuracy_table(study, trained(study, folder)),
           "detectors": detector_table(study, dissections(study, folder))}
    for name, frame in out.items():
        write_table(folder.table(name), frame)
    return out


def figures(study: StudyParams, folder: StudyFolder) -> dict[str, "Figure"]:  # noqa: F821
    """``figures/detectors_<layer>.png`` and ``.svg``: detectors per category for every network."""
    from kdlib.viz.dissect import detector_bar_chart

    results = dissections(study, folder)
    out = {}
    for layer in study.dissect.layers:
        named = {name: res[layer] for name, res in results.items()}
        fig = detector_bar_chart(named, iou_threshold=study.dissect.iou_threshold, share=True)
        save_figure(fig, folder, f"detectors_{layer}")
        out[f"detectors_{layer}"] = fig
    return out


def write_table(path: Path, frame: pd.DataFrame) -> None:
    atomic.write_text(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def save_figure(fig, folder: StudyFolder, name: str) -> None:
    """``figures/<name>.png`` and ``.svg``, each written atomically."""
    for ext in ("png", "svg"):
        with atomic.atomic_path(folder.figure(name, ext)) as tmp:
            fig.savefig(tmp, dpi=110, format=ext, metadata={"Date": None} if ext == "svg" else None)
