"""Train networks of a study: ``fit(study, study.instance("kd-s0"), folder) -> RunResult``, and
``fit_stack`` for several students of one seed trained as one stacked network.

A network is a run of the params file and a seed (:class:`kdlib.params.RunInstance`); its folder is given
by the caller (``StudyFolder.run(key)`` of :mod:`kdlib.layout`, which names every file below)::

    params.yaml     the resolved params the run was made from (run, merged train section, seed, data, teacher)
    checkpoint.pt   the latest completed epoch: weights, optimizer, scheduler, RNG, sampler, history
                    (atomic; epoch 0 = after any pre-training stages, before the first epoch)
    metrics.csv     one row per epoch: lr, total and per-term loss, train/val loss and accuracy, seconds
    done            written last: the RunResult (its ``epoch`` is the epoch whose weights are kept:
                    always the last one; no best-epoch selection)

The teacher of a distillation run (``teacher: {run: NAME}``, a finished teacher of the same study, or
``teacher: {checkpoint: PATH}``, any kdlib checkpoint with the same classes) is frozen: eval mode,
``requires_grad`` off, forward under ``no_grad``; its BatchNorms are folded into the convolutions
(:mod:`kdlib.models.inference`), it runs channels_last on the CPU, and in bfloat16/float16 with
``train.teacher_amp``. Pre-training stages of loss terms (FT's paraphraser, SSKD's teacher head, a
FitNets hint stage) run before epoch 1 and are part of checkpoint 0. Everything a training steps
through is one :class:`~kdlib.train.session.TrainingSession`.

Determinism: the network's seed drives initialisation (``derive(seed, "init")``, see
:func:`initial_network`) and, for every epoch, the data order, augmentation and loss randomness
(``derive(seed, ...)`` per epoch), so the same params and seed give identical weights on the same
machine type (``train.threads`` fixes torch's thread count), and a run killed at any point resumes from
its last checkpoint to the same final weights. Resuming checks that the folder's checkpoint was made
from the same params (for a stacked network: in the same stack); a finished run (``done`` present) is
returned without retraining.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from kdlib import layout
from kdlib.data.splits import load_splits
from kdlib.device import resolve_device
from kdlib.errors import KdlibError
from kdlib.models import checkpoint
from kdlib.models.inference import fold_batchnorm
from kdlib.params import RunInstance, StudyParams, TrainParams
from kdlib.train import distributed, runfiles
from kdlib.train.optim import check_names
from kdlib.train.seeding import deterministic, rng_state, set_rng_state, torch_threads
from kdlib.train.session import NetworkSpec, TrainingSession, initial_network, teacher_channels_last
from kdlib.train.stages import run_stages

__all__ = ["RunResult", "fit", "fit_stack", "initial_network", "load_teacher", "teacher_checkpoint"]

EpochCallback = Callable[[Sequence[str], int], None]  # (network keys, epoch just finished)


@dataclass
class RunResult:
    name: str
    run_dir: str
    checkpoint: str
    epoch: int  # the epoch whose weights the checkpoint holds: the last one
    train_acc: float
    val_acc: float
    test_acc: Optional[float]
    seconds: float  # training time of all epochs, summed over sessions (a stack's networks share it)
    resumed_from: Optional[int] = None  # epoch this session resumed from (None: fresh, or already done)

    @classmethod
    def from_done(cls, done: dict) -> "RunResult":
        return cls(**{k: done[k] for k in cls.__dataclass_fields__})


def teacher_checkpoint(study: StudyParams, inst: RunInstance, folder: "layout.StudyFolder") -> Optional[Path]:
    """The checkpoint network ``inst`` distils from: a finished teacher of this study (in ``folder``),
    any checkpoint path, or None."""
    ref = inst.run.teacher
    if ref is None:
        return None
    if ref.checkpoint is not None:
        return Path(ref.checkpoint)
    run_folder = folder.run(ref.run)
    if layout.read_done(run_folder, "train") is None:
        raise KdlibError(
            f"{study.source}: {inst.name}.teacher.run = {ref.run!r} has not finished ({run_folder} has no done marker); "
            f"valid: train it first: python -m kdlib.train {study.source} --run {ref.run}"
        )
    return run_folder / layout.CHECKPOINT


def load_teacher(path: Path, num_classes: int, device: torch.device, train: TrainParams, where: str):
    """A frozen teacher from a checkpoint, prepared for training a student: BatchNorm folded, no gradients,
    channels_last where :func:`teacher_channels_last`; and its checkpoint."""
    teacher, state = checkpoint.load_model(path, num_classes=num_classes, device=device, what=f"{where}: teacher checkpoint")
    teacher = fold_batchnorm(teacher).requires_grad_(False)
    if teacher_channels_last(device, train):
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher, state


def fit(study: StudyParams, inst: RunInstance, folder: str | Path, teacher: Optional[Path] = None,
        progress: bool = True) -> RunResult:
    """Train (or resume, or return the finished) network ``inst`` of ``study`` in ``folder``, distilling
    from the checkpoint ``teacher`` when the run has one (:func:`teacher_checkpoint`); see the module
    docstring."""
    return fit_stack(study, [inst], [Path(folder)], [teacher], progress)[0]


@dataclass
class _Run:
    """One network of a ``fit_stack`` call: what it is, where it goes, what its folder already holds."""

    inst: RunInstance
    folder: Path
    teacher: Optional[str]
    ident: dict = dataclasses.field(default_factory=dict)
    state: Optional[dict] = None  # its checkpoint, when resuming
    done: Optional[dict] = None
    history: list = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return self.inst.name


def fit_stack(study: StudyParams, insts: Sequence[RunInstance], folders: Sequence[Path],
              teachers: Sequence[Optional[Path]], progress: bool = True,
              on_epoch: Optional[EpochCallback] = None) -> list[RunResult]:
    """Train networks ``insts`` (one seed, one architecture, one train section) together, as one stacked
    network when there are several; each in its own folder with its own checkpoint, as if alone."""
    train = _common_train(study, insts)
    where = f"{study.source}: {insts[0].name}"
    check_names(train.optimizer, train.schedule, f"{where}.train")
    device = distributed.rank_device(resolve_device(train.device, f"{where}.train.device"))
    progress = progress and distributed.ranks().main
    with deterministic(train.deterministic), torch_threads(train.threads):
        loading = dataclasses.replace(train, cache_images=train.cache_images and train.batches == "loader")
        splits = load_splits(study, loading, progress)
        modules, names, states = _teachers(teachers, len(splits.classes), device, train, where)
        runs = [_Run(i, Path(f), None if t is None else str(t)) for i, f, t in zip(insts, folders, teachers)]
        _on_main(runfiles.recover, [r.folder for r in runs])
        stack = [r.inst.key for r in runs] if len(runs) > 1 else []
        for r in runs:
            r.ident = runfiles.identity(study, r.inst.run, train, r.inst.seed, states.get(r.teacher), stack, distributed.ranks().size)
            r.state = runfiles.existing(r.folder, r.ident, r.inst.run.model, len(splits.classes), f"{study.source}: {r.where}")
            r.done = layout.read_done(r.folder, "train") if r.state is not None else None
        distributed.check_same([r.ident for r in runs], where)  # also: every rank has read the folders
        if all(r.done is not None for r in runs):
            return [RunResult.from_done(r.done) for r in runs]
        specs = [NetworkSpec(r.inst.key, r.inst.run, r.inst.seed, r.teacher, f"{study.source}: {r.where}",
                             r.folder / layout.CHECKPOINT) for r in runs]
        session = TrainingSession(train, splits, specs, modules, device, names, progress)
        spec = {"kwargs": dict(insts[0].run.model_kwargs), "num_classes": len(splits.classes), "classes": splits.classes}
        start, resumed_from = _start(session, runs, spec)
        with session:
            _epochs(session, runs, spec, start, progress, on_epoch)
        return _finish(session, runs, splits, resumed_from)


def _common_train(study: StudyParams, insts: Sequence[RunInstance]) -> TrainParams:
    trains = [study.train_for(i.run) for i in insts]
    if any(t != trains[0] for t in trains) or len({(i.run.model, i.seed) for i in insts}) > 1:
        raise KdlibError(f"{', '.join(i.key for i in insts)} cannot train as one stack; valid: one model, seed and train section")
    return trains[0]


def _teachers(paths: Sequence[Optional[Path]], num_classes: int, device, train: TrainParams, where: str):
    """Each distinct teacher checkpoint loaded once: ``{key: module}``, ``{key: model name}``, ``{key: checkpoint}``."""
    modules, names, states = {}, {}, {}
    for path in paths:
        if path is not None and str(path) not in modules:
            modules[str(path)], states[str(path)] = load_teacher(path, num_classes, device, train, where)
            names[str(path)] = states[str(path)]["model"]["name"]
    return modules, names, states


def _checkpoint(session: TrainingSession, runs: list[_Run], spec: dict, g: int, epoch: int) -> dict:
    r = runs[g]
    return {"model": {"name": r.inst.run.model, **spec}, "identity": r.ident, "epoch": epoch, **session.member_state(g),
            "rng": rng_state(), "sampler": {"kind": "seeded shuffle per epoch", "seed": r.inst.seed, "next_epoch": epoch + 1},
            "history": r.history}


def _on_main(write: Callable, *args) -> None:
    """``write(*args)`` on rank 0 alone (every process when not under torchrun); the others wait for it."""
    if distributed.ranks().main:
        write(*args)
    distributed.barrier()


def _save(session: TrainingSession, runs: list[_Run], spec: dict, epoch: int) -> None:
    _on_main(lambda: runfiles.save([(r.folder, _checkpoint(session, runs, spec, g, epoch)) for g, r in enumerate(runs)]))


def _start(session: TrainingSession, runs: list[_Run], spec: dict) -> tuple[int, Optional[int]]:
    """Load the runs' checkpoints (all at one epoch), or run the stages and save checkpoint 0; returns
    the first epoch to train and the epoch resumed from."""
    have = [r.state for r in runs]
    if all(s is None for s in have):
        _on_main(lambda: [runfiles.write_params(r.folder, r.ident) for r in runs])
        run_stages(session)
        _save(session, runs, spec, 0)
        return 1, None
    epochs = {None if s is None else s["epoch"] for s in have}
    if len(epochs) > 1:
        found = ", ".join(f"{r.inst.key}: {'none' if r.state is None else r.state['epoch']}" for r in runs)
        raise KdlibError(f"the stack's checkpoints are at different epochs ({found}); valid: delete these run folders to retrain the stack")
    session.load_member_states(have)
    set_rng_state(have[0]["rng"])
    for r in runs:
        r.history = list(r.state["history"])
    epoch = have[0]["epoch"]
    return epoch + 1, epoch


def _epochs(session: TrainingSession, runs: list[_Run], spec: dict, start: int, progress: bool,
            on_epoch: Optional[EpochCallback]) -> None:
    from tqdm.auto import tqdm

    epochs = session.train.epochs
    label = "+".join(r.inst.key for r in runs)
    bar = tqdm(range(start, epochs + 1), desc=label, disable=not progress, initial=start - 1, total=epochs)
    for epoch in bar:
        began = time.perf_counter()
        rows = session.train_epoch(epoch)
        scores = session.evaluate(session.val)
        seconds = round(time.perf_counter() - began, 3)
        for r, row, (val_loss, val_acc) in zip(runs, rows, scores):
            r.history.append({"epoch": epoch, **row, "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds})
        _save(session, runs, spec, epoch)
        _on_main(lambda: [runfiles.write_metrics(r.folder, r.history) for r in runs])
        bar.set_postfix(loss=f"{runs[0].history[-1]['loss']:.4f}", val_acc=f"{runs[0].history[-1]['val_acc']:.3f}")
        if on_epoch is not None:
            on_epoch([r.inst.key for r in runs], epoch)


def _finish(session: TrainingSession, runs: list[_Run], splits, resumed_from: Optional[int]) -> list[RunResult]:
    """Test accuracy, ``done`` for every run not finished yet, and the results."""
    tests = session.evaluate(session.split_batches(splits.test)) if splits.test is not None else [(None, None)] * len(runs)
    results = []
    for r, (_, test_acc) in zip(runs, tests):
        if r.done is not None:
            results.append(RunResult.from_done(r.done))
            continue
        last = r.history[-1]
        result = RunResult(
            name=r.inst.key, run_dir=str(r.folder), checkpoint=str(r.folder / layout.CHECKPOINT), epoch=last["epoch"],
            train_acc=last["train_acc"], val_acc=last["val_acc"], test_acc=test_acc,
            seconds=round(sum(row["seconds"] for row in r.history), 3), resumed_from=resumed_from,
        )
        _on_main(lambda: layout.write_done(r.folder, "train", **asdict(result)))
        results.append(result)
    return results
