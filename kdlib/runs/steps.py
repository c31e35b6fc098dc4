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
    cmp = steps.compare(study, folder)   # {"summary", "differences", "claims": DataFrame}: seeds and CIs

Read-only readers, for notebooks that only present what a step wrote: :func:`trained`,
:func:`dissections`, :func:`dissection` (one network), :func:`histories` (training curves) and
:func:`read_table`.
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
from kdlib.runs import launch

IOU_THRESHOLDS = (0.04, 0.05)  # Network Dissection's and Han et al.'s; both always reported


# --------------------------------------------------------------------------------------------
# Checks and the world
# --------------------------------------------------------------------------------------------


def check(study: StudyParams) -> None:
    """Everything the params and the model names can tell, checked before any step runs: models, loss
    options, layers of every loss term, teachers (:func:`kdlib.train.check_study`), the metrics section's
    layers, methods and networks (:func:`kdlib.metrics.suite.check_metrics`), and the dissected layers of
    every network the study dissects."""
    from kdlib.metrics.suite import check_metrics
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
    check_metrics(study)


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
    resuming interrupted ones and returning finished ones as they are: ``{network key: RunResult}``. With
    ``KDLIB_TORCHRUN=N`` > 1 (``--torchrun N``) they train in N data-parallel processes (:mod:`kdlib.runs.launch`)."""
    from kdlib.train import RunResult, fit_study

    n = launch.torchrun_processes()
    if n == 1:
        return {r.name: r for r in fit_study(study, folder, names, progress=progress)}
    launch.train_under_torchrun(n, study.source, folder.root, names)
    return {i.key: RunResult.from_done(layout.read_done(folder.run(i.key), "train")) for i in study.instances(names)}


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


def histories(study: StudyParams, folder: StudyFolder, keys: Optional[list[str]] = None) -> pd.DataFrame:
    """The training curves (each run's ``metrics.csv``) of the networks ``keys`` (default: all), in one
    long table with ``network, run, role, seed`` first; the per-epoch ``seconds`` column is left out."""
    frames = []
    for inst in study.instances():
        if keys is not None and inst.key not in keys:
            continue
        path = folder.run(inst.key) / layout.METRICS_CSV
        if not path.is_file():
            raise KdlibError(f"network {inst.key!r} has no {layout.METRICS_CSV} in {folder.root}; valid: run the training step first")
        frame = pd.read_csv(path).drop(columns=["seconds"], errors="ignore")
        frames.append(frame.assign(network=inst.key, run=inst.name, role=inst.role, seed=inst.seed))
    if not frames:
        raise KdlibError(f"keys = {keys!r} names no network of {study.source}; valid: {', '.join(i.key for i in study.instances())}")
    out = pd.concat(frames, ignore_index=True)
    first = ["network", "run", "role", "seed"]
    return out[first + [c for c in out.columns if c not in first]]


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


def dissect(study: StudyParams, folder: StudyFolder, progress: bool = True, jobs: Optional[int] = None) -> dict[str, "DissectResult"]:  # noqa: F821
    """Dissect every trained network and every null (see :func:`networks`) into ``dissect/<name>/``, in
    up to ``jobs`` worker processes (default: one per core; :mod:`kdlib.runs.workers`).

    A network whose folder already holds a dissection made from the same weights, probe set and
    settings is read back instead of dissected again."""
    trained(study, folder)  # every network must be trained first: one line naming the missing one
    return _dissect_networks(study, folder, [(study.dissect, folder.dissection)], progress, jobs)[0]


def _dissect_networks(study: StudyParams, folder: StudyFolder, variants: list, progress: bool,
                      jobs: Optional[int] = None) -> list[dict]:
    """For each ``(settings, target_of)`` of ``variants``: every network of :func:`networks` dissected with
    ``settings`` into ``target_of(name)``, unless that folder holds a dissection of the same weights, probe
    set and settings; then all of them read back from their folders."""
    from kdlib.dissect import DissectResult

    from kdlib.runs import workers

    probe = probe_set(study)
    fingerprint, num_classes = probe.fingerprint(), _num_classes(study, folder)
    todo = []
    for settings, target_of in variants:
        for net in networks(study):
            key = {"weights": state_digest(net.load(folder, num_classes)), "probe": fingerprint, "settings": to_dict(settings)}
            target = target_of(net.name)
            done = layout.read_done(target, "dissect") if target.is_dir() else None
            if done is None or done.get("key") != key:
                todo.append((study, str(folder.root), net, settings, str(target), key))
    if todo and not any(folder.cache.glob("labels/labels-*")):
        _dissect_one(*todo.pop(0), progress=progress)  # decodes the probe labels once, for every worker
    workers.run_items(_dissect_one, todo, f"dissecting {len(todo)} networks", jobs, progress, len(probe))
    return [{net.name: DissectResult.load(target_of(net.name)) for net in networks(study)} for _, target_of in variants]


def _dissect_one(study: StudyParams, root: str, net: Network, settings, target: str, key: dict, progress: bool = False) -> None:
    """One network dissected into ``target`` (its ``done`` marker holding ``key``); decoded probe labels are
    cached once for the whole study in ``<study>/cache/labels``."""
    from kdlib.dissect import dissect as run_dissection

    folder, target = StudyFolder(Path(root)), Path(target)
    if target.is_dir():
        layout.clear_done(target)
    result = run_dissection(net.load(folder, _num_classes(study, folder)), probe_set(study), settings,
                            cache_dir=folder.cache, progress=progress)
    result.meta.update(network=net.name, model=net.model, kind=net.kind, seed=net.seed)
    result.save(target)
    layout.write_done(target, "dissect", key=key)


def quantile_sensitivity(study: StudyParams, folder: StudyFolder, progress: bool = True,
                         jobs: Optional[int] = None) -> pd.DataFrame:
    """``tables/quantile_sensitivity.csv``: detectors (all categories) of every network in the last
    dissected layer at the study's quantile and at each of ``report.quantiles`` (dissected again into
    ``sensitivity/quantile-<q>/<network>/``, cached like the dissection step, in up to ``jobs`` worker
    processes), at both IoU thresholds."""
    from dataclasses import replace

    layer = study.dissect.layers[-1]
    others = sorted({q for q in study.report.quantiles if q != study.dissect.quantile})
    variants = [(replace(study.dissect, quantile=q, layers=[layer]),
                 lambda name, root=folder.root / "sensitivity" / f"quantile-{q:g}": root / name) for q in others]
    by_quantile = {study.dissect.quantile: dissections(study, folder),
                   **dict(zip(others, _dissect_networks(study, folder, variants, progress, jobs)))}
    rows = []
    for q, results in sorted(by_quantile.items()):
        for net in networks(study):
            res = results[net.name][layer]
            for thr in IOU_THRESHOLDS:
                total = res.summary(thr).set_index("category").loc["total"]
                rows.append({"network": net.name, "run": net.instance.name if net.kind == "trained" else f"random-{net.model}",
                             "seed": net.seed, "kind": net.kind, "layer": layer, "quantile": q, "iou_threshold": thr,
                             "units": res.units, "detectors": int(total["detectors"])})
    table = pd.DataFrame(rows)
    write_table(folder.table("quantile_sensitivity"), table)
    return table


def dissections(study: StudyParams, folder: StudyFolder) -> dict[str, "DissectResult"]:  # noqa: F821
    """The saved dissections of every network, read from the folder (one line naming a missing one)."""
    return {net.name: _saved_dissection(folder, net.name) for net in networks(study)}


def dissection(study: StudyParams, folder: StudyFolder, network: Optional[str] = None) -> "DissectResult":  # noqa: F821
    """The saved dissection of one network (default: the first student at the first seed, else the first
    network); one line when the study has no such network or it is not dissected yet."""
    names = [net.name for net in networks(study)]
    if network is None:
        students = [i.key for i in study.instances() if i.role == "student"]
        network = students[0] if students else names[0]
    if network not in names:
        raise KdlibError(f"network = {network!r} is not a network of {study.source}; valid: {', '.join(names)}")
    return _saved_dissection(folder, network)


def _saved_dissection(folder: StudyFolder, name: str) -> "DissectResult":  # noqa: F821
    from kdlib.dissect import DissectResult

    target = folder.dissection(name)
    if (layout.read_done(target, "dissect") if target.is_dir() else None) is None:
        raise KdlibError(f"network {name!r} is not dissected in {folder.root}; valid: run the dissection step first")
    return DissectResult.load(target)


# --------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------


def accuracy_table(study: StudyParams, results: dict) -> pd.DataFrame:
    """Per trained network in ``results`` (study order): run, seed, model, loss, the epoch whose weights
    are used, accuracies, seconds."""
    rows = []
    for inst in study.instances():
        if inst.key not in results:
            continue
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


def compare(study: StudyParams, folder: StudyFolder) -> dict[str, pd.DataFrame]:
    """The methods compared across seeds (:mod:`kdlib.runs.comparison`) from the saved tables:
    ``tables/observations.csv`` (every measure of every network), ``summary.csv`` (per run: mean and
    interval over seeds), ``differences.csv`` (each run minus the baseline, paired by seed) and
    ``claims.csv`` (the report section's claims and their verdicts) and, with a baseline, ``power.csv``
    (the smallest detector difference the seeds would detect, :mod:`kdlib.runs.power`)."""
    from kdlib.runs import comparison, power

    tabs = tables(study, folder)
    metrics_path = folder.table("metrics")
    metrics = pd.read_csv(metrics_path) if metrics_path.is_file() else None
    obs = comparison.observations(tabs["accuracy"], tabs["detectors"], metrics)
    level = study.report.level
    out = {"observations": obs, "summary": comparison.summary(obs, level)}
    if study.report.baseline is not None:
        out["differences"] = comparison.differences(obs, study.report.baseline, level)
        out["power"] = power.detectable_differences(tabs["detectors"], study.report.baseline, alpha=1 - level)
    out["claims"] = comparison.judge(obs, study.report.claims, level)
    for name, frame in out.items():
        write_table(folder.table(name), frame)
    return out


def write_table(path: Path, frame: pd.DataFrame) -> None:
    atomic.write_text(path, frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


TABLE_STEPS = {"accuracy": "tables", "detectors": "tables", "metrics": "metrics", "observations": "compare",
               "summary": "compare", "differences": "compare", "claims": "compare", "power": "compare",
               "quantile_sensitivity": "quantile sensitivity"}


def read_table(folder: StudyFolder, name: str) -> pd.DataFrame:
    """``tables/<name>.csv`` as a step wrote it; one line naming the step to run when it is missing."""
    path = folder.table(name)
    if not path.is_file():
        step = TABLE_STEPS.get(name, "the step that writes it")
        raise KdlibError(f"table {name!r} is not in {folder.root / 'tables'}; valid: run the {step} step first")
    if not path.stat().st_size or not path.read_text(encoding="utf-8").strip():
        return pd.DataFrame()
    return pd.read_csv(path)


def save_figure(fig, folder: StudyFolder, name: str) -> None:
    """``figures/<name>.png`` and ``.svg``, each written atomically; the same figure gives the same bytes
    (no date in either, a fixed SVG id salt)."""
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "kdlib"}):
        for ext in ("png", "svg"):
            with atomic.atomic_path(folder.figure(name, ext)) as tmp:
                fig.savefig(tmp, dpi=110, format=ext, metadata={"Date": None} if ext == "svg" else None)


# --------------------------------------------------------------------------------------------
# Interpretability measures (kdlib.metrics)
# --------------------------------------------------------------------------------------------


def metrics(study: StudyParams, folder: StudyFolder, progress: bool = True, jobs: Optional[int] = None) -> pd.DataFrame:
    """``tables/metrics.csv``: the ``metrics:`` section's measures on the networks it names (default:
    every trained network; DiffROAR: the first seed's students), one row per network, measure, setting
    and score, with the score's direction and the seconds its computation took.

    The networks are measured in up to ``jobs`` worker processes (default: one per core on the CPU, one
    on CUDA; :mod:`kdlib.runs.workers`), DiffROAR's first, each at one torch thread on the CPU, so the
    scores do not depend on ``jobs``. Each (network, measure) result is cached in
    ``cache/metrics/<network>/<measure>.json`` under a key of the network's and its reference teacher's
    weights, the measure's params, the data and the dissection it read, so a re-run recomputes nothing;
    DiffROAR's retrainings are cached in ``cache/retrain`` and its keep-masks in ``cache/diffroar``."""
    from kdlib.device import resolve_device
    from kdlib.metrics import suite
    from kdlib.runs import workers

    suite.check_metrics(study)
    trained(study, folder)
    data = _study_data(study, folder)
    wanted = _measures_wanted(study, folder, data)
    cache = suite.ResultCache(folder.cache / "metrics")
    todo = [(study, str(folder.root), inst.key, names) for inst, keys in wanted
            if (names := [n for n, key in keys.items() if cache.get(inst.key, n, key) is None])]
    todo.sort(key=lambda item: "diffroar" not in item[3])  # the longest first
    if resolve_device(study.metrics.device, "metrics.device").type == "cuda":
        jobs = 1  # one GPU: one process
    try:
        workers.run_items(_measure_network, todo, f"measuring {len(todo)} networks", jobs, progress, len(data.eval.labels))
    finally:
        _MEASURING.clear()
    fresh = {(item[2], n) for item in todo for n in item[3]}
    rows = []
    for inst, keys in wanted:
        for name, key in keys.items():
            record = cache.get(inst.key, name, key)
            rows += suite.table_rows(inst, _measure(study, name), record, (inst.key, name) not in fresh)
    frame = pd.DataFrame(rows)
    write_table(folder.table("metrics"), frame)
    return frame


def _measure(study: StudyParams, name: str):
    from kdlib.metrics import build

    return build(name, study.metrics.section(name))


def _measures_wanted(study: StudyParams, folder: StudyFolder, data) -> list[tuple[RunInstance, dict]]:
    """Every network the ``metrics:`` section measures, with the cache key of each of its measures."""
    from kdlib.metrics import suite

    m = study.metrics
    out = []
    for inst in study.instances():
        names = [n for n in m.measures if inst.key in {i.key for i in suite.networks_for(study, n)}]
        if names:
            net = _metric_network(study, folder, inst, load_dissection=False)
            out.append((inst, {n: _measure_key(study, n, net, data) for n in names}))
    return out


def _study_data(study: StudyParams, folder: StudyFolder):
    from kdlib.metrics import suite

    return suite.StudyData(study, world(study, folder) or Path(study.data.imagefolder))


def _measure_key(study: StudyParams, name: str, net: dict, data) -> dict:
    from kdlib.metrics import suite

    extra = {"retrain": to_dict(study.metrics.diffroar.retrain)} if name == "diffroar" else None
    return suite.cache_key(_measure(study, name), net["weights"], net["reference_weights"], data, net["dissection_key"], extra)


_MEASURING: dict = {}  # per process: the study's data and attribution maps, kept from one network to the next
MEASURE_THREADS = 1  # torch threads of a measure on the CPU, in every process (results depend on it)


def _measure_network(study: StudyParams, root: str, key: str, names: list[str], progress: bool = False) -> None:
    """Measures ``names`` of network ``key`` computed and written to the result cache. The maps of its
    reference teacher stay in this process for the next student of the same teacher."""
    import time

    from kdlib.device import resolve_device, torch_threads
    from kdlib.metrics import MapCache, suite

    folder, inst, m = StudyFolder(Path(root)), study.instance(key), study.metrics
    if _MEASURING.get("root") != root:
        _MEASURING.clear()
        _MEASURING.update(root=root, data=_study_data(study, folder))
    data = _MEASURING["data"]
    net = _metric_network(study, folder, inst)
    device = resolve_device(m.device, "metrics.device")
    maps = _MEASURING.get("maps") or MapCache(data.eval.images, data.eval.labels, m.batch_size, device)
    maps.keep({net["weights"], net["reference_weights"]})  # the teacher's maps serve every student
    _MEASURING["maps"] = maps
    cache = suite.ResultCache(folder.cache / "metrics")
    for name in names:
        with torch_threads(MEASURE_THREADS if device.type == "cpu" else None):
            start = time.perf_counter()
            scores = _measure(study, name).evaluate(_metric_inputs(study, folder, inst, name, net, data, maps, progress))
        cache.put(inst.key, name, _measure_key(study, name, net, data), scores, time.perf_counter() - start, len(data.eval.labels))


def _metric_network(study: StudyParams, folder: StudyFolder, inst: RunInstance, load_dissection: bool = True) -> dict:
    """A trained network, its reference teacher and its dissection (when the dissect step saved one;
    not read when ``load_dissection`` is false), with the digests that key its cached measures."""
    from kdlib.dissect import DissectResult
    from kdlib.metrics import suite
    from kdlib.models.checkpoint import load_model

    model = load_model(folder.run(inst.key) / layout.CHECKPOINT)[0]
    ref_inst = suite.reference_for(study, inst)
    reference = load_model(folder.run(ref_inst.key) / layout.CHECKPOINT)[0] if ref_inst is not None else None
    target = folder.dissection(inst.key)
    done = layout.read_done(target, "dissect") if target.is_dir() else None
    return {"model": model, "weights": state_digest(model), "reference": reference,
            "reference_weights": state_digest(reference) if reference is not None else None,
            "dissection": DissectResult.load(target) if done is not None and load_dissection else None,
            "dissection_key": done.get("key") if done is not None else None}


def _metric_inputs(study: StudyParams, folder: StudyFolder, inst: RunInstance, measure: str, net: dict, data, maps,
                   progress: bool):
    """What the measures read for network ``inst`` (DiffROAR's retraining: a fresh ``inst.run.model``)."""
    from kdlib.metrics import MetricInputs
    from kdlib.train.retrain import Retrainer

    num_classes = len(data.eval.classes)
    retrain = Retrainer(inst.run.model, num_classes, study.metrics.diffroar.retrain, inst.run.model_kwargs, folder.cache / "retrain")
    return MetricInputs(model=net["model"], data=data.eval, maps=maps, hierarchy=data.hierarchy, reference=net["reference"],
                        dissection=net["dissection"], train=data.train if measure == "diffroar" else None,
                        retrain=retrain, default_layer=study.dissect.layers[-1], layers=list(study.dissect.layers),
                        cache_dir=folder.cache / "diffroar", progress=progress)
