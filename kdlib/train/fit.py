"""Train one network of a study: ``fit(study, study.instance("kd-s0"), folder) -> RunResult``.

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
FitNets hint stage) run before epoch 1 and are part of checkpoint 0.

Determinism: the network's seed drives initialisation (``derive(seed, "init")``, see
:func:`initial_network`) and, for every epoch, the data order, augmentation and loss randomness
(``derive(seed, "epoch", e)``), so the same params and seed on the same machine (and the same number of
torch threads) give identical weights, and a run killed at any point resumes from its last
checkpoint to the same final weights. Resuming checks that the folder's checkpoint was made from the
same params; a finished run (``done`` present) is returned without retraining.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Optional

import torch
import yaml
from tqdm.auto import tqdm

from kdlib import atomic, layout
from kdlib.device import resolve_device
from kdlib.digest import json_digest
from kdlib.errors import KdlibError
from kdlib.losses import SetupContext, Stage, build_objective
from kdlib.models import build
from kdlib.models.inference import fold_batchnorm
from kdlib.models import checkpoint
from kdlib.params import RunInstance, RunParams, StudyParams, TrainParams, to_dict
from kdlib.train.check import check_study
from kdlib.data.splits import load_splits
from kdlib.train.loaders import eval_loader, train_loader
from kdlib.train.optim import build_optimizer, build_scheduler, check_names
from kdlib.train.seeding import derive, deterministic, rng_state, seed_everything, set_rng_state
from kdlib.train.step import Forwarder, evaluate


@dataclass
class RunResult:
    name: str
    run_dir: str
    checkpoint: str
    epoch: int  # the epoch whose weights the checkpoint holds: the last one
    train_acc: float
    val_acc: float
    test_acc: Optional[float]
    seconds: float  # training time of all epochs, summed over sessions
    resumed_from: Optional[int] = None  # epoch this session resumed from (None: fresh, or already done)


def initial_network(run: RunParams, num_classes: int, seed: int) -> torch.nn.Module:
    """The untrained network ``fit`` starts ``run`` from at ``seed`` (torch seeded with ``derive(seed,
    "init")``); the random-weight baseline of a dissection. The caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "init"))
        return build(run.model, num_classes, **run.model_kwargs)


def teacher_channels_last(device: torch.device, train: TrainParams) -> bool:
    """The frozen teacher runs channels_last on the CPU (faster for oneDNN convolutions, same values) and
    wherever the student does."""
    return device.type == "cpu" or train.channels_last


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


def _plain(obj):
    return json.loads(json.dumps(obj))


def identity(study: StudyParams, run: RunParams, train: TrainParams, seed: int, teacher_state: Optional[dict]) -> dict:
    """The params a run's weights depend on (not the device): what a checkpoint records and resume compares."""
    train_dict = to_dict(train)
    train_dict.pop("device")
    if study.data.imagefolder is not None:
        data = {"imagefolder": str(Path(study.data.imagefolder).resolve())}
    else:
        data = {"world": to_dict(study.world), "world_seed": study.world_seed}
    teacher = None
    if teacher_state is not None:
        teacher = {"model": teacher_state["model"]["name"], "epoch": teacher_state["epoch"], "params": json_digest(teacher_state["identity"])}
    return _plain({"run": to_dict(run), "train": train_dict, "seed": seed, "data": data, "teacher": teacher})


def first_difference(a, b, path: str = "") -> Optional[str]:
    """``"train.epochs: 2 != 3"`` for the first key where two plain-data trees differ, else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {json.dumps(a)} != {json.dumps(b)}"


class Stepper:
    """Backward and optimizer step, with loss scaling for float16 AMP on CUDA."""

    def __init__(self, optimizer, amp: bool, device: torch.device):
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _finite(loss: torch.Tensor, where: str, epoch: int, step: int, kept: Path, kept_epoch: Optional[int]) -> None:
    if not torch.isfinite(loss).item():
        keep = f"the last good checkpoint (epoch {kept_epoch}) is kept at {kept}" if kept_epoch is not None else "no checkpoint was written"
        raise KdlibError(
            f"{where}: loss is {loss.item()} at epoch {epoch}, step {step}; stopped, {keep}; "
            "valid: a finite loss (lower the learning rate or a loss weight)"
        )


def run_stage(stage: Stage, student, teacher, splits, train: TrainParams, seed: int, device, where: str,
              kept: Path, progress: bool) -> None:
    """Run one pre-training stage of a loss term (see :class:`kdlib.losses.Stage`)."""
    before = [p.requires_grad for p in stage.params]
    for p in stage.params:
        p.requires_grad_(True)
    try:
        optimizer = build_optimizer(stage.params, stage.optimizer, f"{where}: stage {stage.name}")
        stepper = Stepper(optimizer, train.amp, device)
        student.eval()
        for module in stage.train_modules:
            module.train()
        fw = Forwarder(student if stage.uses_student else None, teacher, stage.student_layers, stage.teacher_layers,
                       stage.views, device, train.amp, train.channels_last, train.teacher_amp,
                       teacher_channels_last(device, train))
        with fw:
            for epoch in range(1, stage.epochs + 1):
                lr = stage.optimizer["lr"] * 0.1 ** sum(epoch > m for m in stage.milestones)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                seed_everything(derive(seed, stage.name, epoch))
                loader = train_loader(splits.train, train.batch_size, derive(seed, stage.name, "order", epoch),
                                      train.num_workers, device.type == "cuda")
                bar = tqdm(loader, desc=f"{where} {stage.name} {epoch}/{stage.epochs}", disable=not progress, leave=False)
                for step, (images, targets, indices) in enumerate(bar):
                    io = fw(images, targets, indices, epoch=epoch, step=step)
                    loss = stage.loss(io)
                    _finite(loss, f"{where}: stage {stage.name}", epoch, step, kept, None)
                    stepper(loss)
                    bar.set_postfix(loss=f"{loss.item():.4g}")
    finally:
        for p, flag in zip(stage.params, before):
            p.requires_grad_(flag)


def _write_metrics(path: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(path, buffer.getvalue())


def fit(study: StudyParams, inst: RunInstance, folder: str | Path, teacher: Optional[Path] = None,
        progress: bool = True) -> RunResult:
    """Train (or resume, or return the finished) network ``inst`` of ``study`` in ``folder``, distilling
    from the checkpoint ``teacher`` when the run has one (:func:`teacher_checkpoint`); see the module
    docstring."""
    run, seed = inst.run, inst.seed
    train = study.train_for(run)
    where = f"{study.source}: {run.name}"
    check_names(train.optimizer, train.schedule, f"{where}.train")
    device = resolve_device(train.device, f"{where}.train.device")
    folder = Path(folder)
    ckpt_path = folder / layout.CHECKPOINT
    t_path = teacher

    with deterministic(train.deterministic):
        splits = load_splits(study, train, progress)
        num_classes = len(splits.classes)
        teacher, teacher_state = None, None
        if t_path is not None:
            teacher, teacher_state = checkpoint.load_model(t_path, num_classes=num_classes, device=device, what=f"{where}: teacher checkpoint")
            teacher = fold_batchnorm(teacher).requires_grad_(False)
            if teacher_channels_last(device, train):
                teacher = teacher.to(memory_format=torch.channels_last)
        ident = identity(study, run, train, seed, teacher_state)

        existing = checkpoint.load(ckpt_path, f"{where}: checkpoint") if ckpt_path.is_file() else None
        if existing is not None:
            checkpoint.check_model(existing, ckpt_path, run.model, num_classes, f"{where}: run folder's checkpoint")
            diff = first_difference(existing["identity"], ident)
            if diff:
                raise KdlibError(
                    f"{where}: {folder} holds a run made from other params ({diff}); "
                    "valid: the same params, another --out, or delete the folder"
                )
            done = layout.read_done(folder, "train")
            if done is not None:
                return RunResult(**{k: done[k] for k in RunResult.__dataclass_fields__})

        student = initial_network(run, num_classes, seed).to(device)
        seed_everything(derive(seed, "setup"))  # auxiliary modules of the loss terms
        if train.channels_last:
            student = student.to(memory_format=torch.channels_last)
        objective = build_objective(run.loss, f"{where}.loss")
        objective.setup(SetupContext(
            student=student, teacher=teacher, num_classes=num_classes, image_size=splits.image_size,
            train_targets=splits.train.targets, seed=derive(seed, "objective"),
            student_name=run.model, teacher_name=teacher_state["model"]["name"] if teacher_state else "teacher",
        ))
        objective.to(device)
        views = objective.views
        params = [p for p in chain(student.parameters(), objective.parameters()) if p.requires_grad]
        optimizer = build_optimizer(params, train.optimizer, f"{where}.train")
        scheduler = build_scheduler(optimizer, train.schedule, train.epochs, f"{where}.train")
        stepper = Stepper(optimizer, train.amp, device)
        model_spec = {"name": run.model, "kwargs": dict(run.model_kwargs), "num_classes": num_classes, "classes": splits.classes}

        def save(epoch: int, history: list[dict]) -> None:
            checkpoint.save(ckpt_path, {
                "model": model_spec, "identity": ident, "epoch": epoch, "model_state": student.state_dict(),
                "objective_state": objective.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "scaler_state": stepper.scaler.state_dict(),
                "rng": rng_state(), "sampler": {"kind": "seeded shuffle per epoch", "seed": seed, "next_epoch": epoch + 1},
                "history": history,
            })

        if existing is not None:
            student.load_state_dict(existing["model_state"])
            objective.load_state_dict(existing["objective_state"])
            optimizer.load_state_dict(existing["optimizer_state"])
            scheduler.load_state_dict(existing["scheduler_state"])
            stepper.scaler.load_state_dict(existing["scaler_state"])
            set_rng_state(existing["rng"])
            history, start = list(existing["history"]), existing["epoch"] + 1
            resumed_from = existing["epoch"]
        else:
            atomic.write_text(folder / layout.PARAMS_YAML, yaml.safe_dump(ident, sort_keys=False))
            for stage in objective.stages():
                run_stage(stage, student, teacher, splits, train, derive(seed, "stage"), device, where, ckpt_path, progress)
            history, start, resumed_from = [], 1, None
            save(0, history)

        pin = device.type == "cuda"
        val_loader = eval_loader(splits.val, train.batch_size, train.num_workers, pin)
        forwarder = Forwarder(student, teacher if objective.needs_teacher else None, objective.student_layers(),
                              objective.teacher_layers(), views, device, train.amp, train.channels_last,
                              train.teacher_amp, teacher_channels_last(device, train))
        epochs_bar = tqdm(range(start, train.epochs + 1), desc=inst.key, disable=not progress, initial=start - 1, total=train.epochs)
        with forwarder:
            for epoch in epochs_bar:
                began = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                seed_everything(derive(seed, "epoch", epoch))
                loader = train_loader(splits.train, train.batch_size, derive(seed, "order", epoch), train.num_workers, pin)
                student.train()
                objective.train()
                # Running sums stay on the device (loss, correct, each term): the only per-step host sync
                # is the finiteness check; the progress bar reads the sums every few steps.
                labels: list[str] = []
                acc_sums: Optional[torch.Tensor] = None
                seen = 0
                bar = tqdm(loader, desc=f"{inst.key} epoch {epoch}/{train.epochs}", disable=not progress, leave=False)
                for step, (images, targets, indices) in enumerate(bar):
                    io_ = forwarder(images, targets, indices, epoch=epoch, step=step)
                    loss, values = objective(io_)
                    _finite(loss, where, epoch, step, ckpt_path, epoch - 1)
                    stepper(loss)
                    b = io_.targets.numel()
                    seen += b
                    labels = list(values)
                    batch = torch.stack([loss.detach().float() * b, (io_.logits.argmax(1) == io_.targets).sum().float(),
                                         *(v.detach().float() * b for v in values.values())])
                    acc_sums = batch if acc_sums is None else acc_sums + batch
                    if progress and step % 20 == 0:
                        bar.set_postfix(loss=f"{acc_sums[0].item() / seen:.4f}", acc=f"{acc_sums[1].item() / seen:.3f}")
                totals = acc_sums.tolist()
                total, correct = totals[0], totals[1]
                sums = dict(zip(labels, totals[2:]))
                scheduler.step()
                val_loss, val_acc = evaluate(student, val_loader, device, train.amp, train.channels_last)
                row = {"epoch": epoch, "lr": lr, "loss": total / seen}
                row.update({f"loss.{k}": v / seen for k, v in sums.items()})
                row.update({"train_acc": correct / seen, "val_loss": val_loss, "val_acc": val_acc,
                            "seconds": round(time.perf_counter() - began, 3)})
                history.append(row)
                save(epoch, history)
                _write_metrics(folder / layout.METRICS_CSV, history)
                epochs_bar.set_postfix(loss=f"{row['loss']:.4f}", val_acc=f"{val_acc:.3f}")

        test_acc = None
        if splits.test is not None:
            _, test_acc = evaluate(student, eval_loader(splits.test, train.batch_size, train.num_workers, pin), device,
                                   train.amp, train.channels_last)
        last = history[-1]
        result = RunResult(
            name=inst.key, run_dir=str(folder), checkpoint=str(ckpt_path), epoch=last["epoch"],
            train_acc=last["train_acc"], val_acc=last["val_acc"], test_acc=test_acc,
            seconds=round(sum(r["seconds"] for r in history), 3), resumed_from=resumed_from,
        )
        layout.write_done(folder, "train", **asdict(result))
        return result


def fit_study(study: StudyParams, folder: "layout.StudyFolder", names: Optional[list[str]] = None,
              progress: bool = True) -> list[RunResult]:
    """Train the networks of runs ``names`` (default: all) in ``folder``: teachers first, then every student
    at every seed. A network whose teacher is outside the selection needs that teacher finished already;
    every check runs before any training starts."""
    instances = study.instances(names)
    check_study(study, sorted({i.name for i in instances}))
    chosen = {i.key for i in instances}
    for inst in instances:
        ref = study.teacher_instance(inst)
        if ref is not None and ref.key not in chosen:
            teacher_checkpoint(study, inst, folder)
    return [fit(study, inst, folder.run(inst.key), teacher_checkpoint(study, inst, folder), progress) for inst in instances]
