"""The training session: everything one training process builds once and steps through.

::

    session = TrainingSession(train, splits, [NetworkSpec("kd-s0", run, seed=0, teacher="teacher")],
                              teachers={"teacher": frozen_teacher}, device=device)
    with session:                        # hooks on the captured layers (removed on exit)
        rows = session.train_epoch(1)    # one row of training statistics per network
        scores = session.evaluate(session.val)

A session trains one network, or several networks of one architecture, seed and ``train`` section as
one stacked network (:mod:`kdlib.models.stacked`): they share every batch (the paired design: same seed,
same batches) and each teacher's forward, while each keeps its own objective, its own optimizer state
(one optimizer over the stacked parameters equals one per network: SGD, momentum and weight decay act
elementwise), its own random stream for loss randomness and its own checkpoint (:meth:`member_state`).

What it holds: the batches (:mod:`kdlib.train.batches`), the frozen teachers, the student network,
every network's objective, the optimizer, the schedule, the :class:`Stepper` and the
:class:`~kdlib.train.step.Forwarder`. It does not know run folders or checkpoints' files
(:mod:`kdlib.train.fit` does). Under torchrun (:mod:`kdlib.train.distributed`) ``batches`` gives each
rank its share of every batch, the student forward runs through the DDP wrapper (:attr:`ddp`),
:class:`Stepper` averages the objectives' own gradients, and an epoch's statistics (sums and counts)
are summed over the ranks; one network per session (no stacks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from kdlib.errors import KdlibError
from kdlib.losses import Objective, SetupContext, build_objective
from kdlib.models import build
from kdlib.models.stacked import StackedNetwork
from kdlib.params import RunParams, TrainParams
from kdlib.train import distributed
from kdlib.train.batches import LoaderBatches, MemoryBatches, eval_batches
from kdlib.train.optim import build_optimizer, build_scheduler, member_optimizer_state, stacked_optimizer_state
from kdlib.train.seeding import RandomStream, derive, seed_everything
from kdlib.train.step import Forwarder, evaluate


def initial_network(run: RunParams, num_classes: int, seed: int) -> nn.Module:
    """The untrained network a run starts from at ``seed`` (torch seeded with ``derive(seed, "init")``);
    the random-weight baseline of a dissection. The caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, "init"))
        return build(run.model, num_classes, **run.model_kwargs)


def teacher_channels_last(device: torch.device, train: TrainParams) -> bool:
    """The frozen teacher runs channels_last on the CPU (faster for oneDNN convolutions, same values) and
    wherever the student does."""
    return device.type == "cpu" or train.channels_last


class Stepper:
    """Backward and optimizer step, with loss scaling for float16 AMP on CUDA."""

    def __init__(self, optimizer, amp: bool, device: torch.device, outside: Sequence[nn.Parameter] = ()):
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
        self.outside = list(outside)  # parameters outside the DDP wrapper: gradients averaged over ranks

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.outside)
        self.scaler.step(self.optimizer)
        self.scaler.update()


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a session: its name (``kd-s0``), run, seed, the key of the teacher it distils from
    (None: none), where its messages point, and the checkpoint a failure would leave (None: none yet)."""

    key: str
    run: RunParams
    seed: int
    teacher: Optional[str] = None
    where: str = ""
    checkpoint: Optional[Path] = None


@dataclass
class Member:
    spec: NetworkSpec
    network: nn.Module  # its own initial network (set-up probes and stages; a stack trains a copy)
    objective: Objective
    teacher: Optional[str]  # the teacher key when its objective needs one
    stream: Optional[RandomStream] = None


def check_finite(loss: torch.Tensor, where: str, epoch: int, step: int, kept: Optional[Path], kept_epoch: int) -> None:
    if not torch.isfinite(loss).item():
        keep = f"the last good checkpoint (epoch {kept_epoch}) is kept at {kept}" if kept is not None else "no checkpoint was written"
        raise KdlibError(
            f"{where}: loss is {loss.item()} at epoch {epoch}, step {step}; stopped, {keep}; "
            "valid: a finite loss (lower the learning rate or a loss weight)"
        )


class TrainingSession:
    """Built once per training process; see the module docstring."""

    def __init__(self, train: TrainParams, splits, specs: Sequence[NetworkSpec], teachers: Mapping[str, nn.Module],
                 device: torch.device, teacher_names: Optional[Mapping[str, str]] = None, progress: bool = False):
        if len({s.seed for s in specs}) != 1:
            raise KdlibError(f"networks of seeds {sorted({s.seed for s in specs})} in one session; valid: one seed")
        self.train, self.splits, self.device, self.progress = train, splits, device, progress
        self.seed, self.num_classes = specs[0].seed, len(splits.classes)
        self.teachers = dict(teachers)
        self.members = [self._member(s, dict(teacher_names or {})) for s in specs]
        nets = [m.network for m in self.members]
        self.network = StackedNetwork(nets, specs[0].run.model) if len(nets) > 1 else nets[0]
        if train.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.ddp = self._data_parallel(specs)
        self.memory = train.batches == "memory"
        self.batches = self._batches(splits)
        stacked = [p for p in self.network.parameters() if p.requires_grad]
        own = [[p for p in m.objective.parameters() if p.requires_grad] for m in self.members]
        self._layout = (len(stacked), _ranges(len(stacked), [len(o) for o in own]))
        self.optimizer = build_optimizer(chain(stacked, *own), train.optimizer, f"{specs[0].where}.train")
        self.scheduler = build_scheduler(self.optimizer, train.schedule, train.epochs, f"{specs[0].where}.train", len(self.batches))
        self.stepper = Stepper(self.optimizer, train.amp, device, list(chain(*own)))
        self.forwarder = self.forwarder_for(self.network, [m.objective for m in self.members], self.views)
        self._val = None

    # -- set-up --------------------------------------------------------------------------------

    def _member(self, spec: NetworkSpec, teacher_names: dict) -> Member:
        network = initial_network(spec.run, self.num_classes, spec.seed).to(self.device)
        seed_everything(derive(spec.seed, "setup"))  # auxiliary modules of the loss terms
        if self.train.channels_last:
            network = network.to(memory_format=torch.channels_last)
        objective = build_objective(spec.run.loss, f"{spec.where}.loss")
        teacher = self.teachers.get(spec.teacher) if spec.teacher is not None else None
        objective.setup(SetupContext(
            student=network, teacher=teacher, num_classes=self.num_classes, image_size=self.splits.image_size,
            train_targets=self.splits.train.targets, seed=derive(spec.seed, "objective"), student_name=spec.run.model,
            teacher_name=teacher_names.get(spec.teacher, "teacher"),
        ))
        objective.to(self.device)
        return Member(spec, network, objective, spec.teacher if objective.needs_teacher else None)

    def _data_parallel(self, specs: Sequence[NetworkSpec]) -> nn.Module:
        """The student as called in training: its DDP wrapper under torchrun, else the network."""
        if not distributed.ranks().parallel:
            return self.network
        if len(specs) > 1:
            raise KdlibError(f"{specs[0].where}: a stack of {len(specs)} networks under torchrun; valid: train.stack: 1")
        if self.members[0].objective.has_stages:
            raise KdlibError(f"{specs[0].where}.loss has pre-training stages, which do not run under torchrun yet; "
                             "valid: a loss without stages (not FT, SSKD or a FitNets hint stage), or one process")
        distributed.check_batch(self.train.batch_size, self.splits.train.targets.numel(), f"{specs[0].where}.train")
        return distributed.wrap(self.network, self.device)

    def _batches(self, splits):
        t = self.train
        if self.memory:
            return MemoryBatches(splits.train, splits.image_size, t.batch_size, t.augment, self.device, t.channels_last, self.progress)
        return LoaderBatches(splits.train, t.batch_size, t.num_workers, self.device, t.channels_last)

    @property
    def views(self) -> int:
        views = {m.objective.views for m in self.members}
        if len(views) > 1 or (len(self.members) > 1 and views != {1}):
            raise KdlibError(f"networks of one stack ask for {sorted(views)} views; valid: stack only single-view objectives")
        return views.pop()

    def forwarder_for(self, student: Optional[nn.Module], objectives: Sequence, views: int,
                      student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None) -> Forwarder:
        """A forwarder over ``student`` and this session's teachers capturing what ``objectives`` (or the
        explicit layer lists of a stage) read."""
        keys = [m.teacher for m in self.members]
        s_layers = sorted({p for o in objectives for p in o.student_layers()}) if student_layers is None else list(student_layers)
        t_layers = {k: sorted({p for m, o in zip(self.members, objectives) if m.teacher == k for p in o.teacher_layers()})
                    for k in set(keys) - {None}}
        if teacher_layers is not None:
            t_layers = {k: list(teacher_layers) for k in t_layers}
        t = self.train
        return Forwarder(student, self.teachers, keys, s_layers, t_layers, views, self.device, t.amp, t.channels_last,
                         t.teacher_amp, teacher_channels_last(self.device, t),
                         forward=self.ddp if student is self.network else None)

    def __enter__(self) -> "TrainingSession":
        self.forwarder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.forwarder.__exit__(*exc)

    # -- training ------------------------------------------------------------------------------

    def seed_epoch(self, *stream, base: tuple = ()) -> None:
        """Seed the loss randomness of one epoch named by ``stream`` (a network's seed, then ``base``
        derived from it first when given, e.g. ``("stage",)``): each network's own stream in memory mode;
        the global RNGs (which the loader's transforms also draw from) otherwise."""
        def root(seed: int) -> int:
            return derive(seed, *base) if base else seed

        if self.memory:
            for m in self.members:
                m.stream = RandomStream(derive(root(m.spec.seed), *stream), self.device)
        else:
            seed_everything(derive(root(self.seed), *stream))

    def _losses(self, ios) -> tuple[torch.Tensor, list]:
        total, parts = None, []
        for m, io in zip(self.members, ios):
            with m.stream if m.stream is not None else contextlib.nullcontext():
                loss, values = m.objective(io)
            total = loss if total is None else total + loss
            parts.append((loss, values))
        return total, parts

    def train_epoch(self, epoch: int) -> list[dict]:
        """One epoch of every network; returns each one's ``{"lr", "loss", "loss.<term>", "train_acc"}``."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.seed_epoch("epoch", epoch)
        self.network.train()
        for m in self.members:
            m.objective.train()
        sums: list[Optional[torch.Tensor]] = [None] * len(self.members)
        labels: list[list[str]] = [[] for _ in self.members]
        seen = 0
        bar = tqdm(self.batches.epoch(self.seed, epoch), total=len(self.batches), leave=False, disable=not self.progress,
                   desc=f"{self.members[0].spec.key}{'+' if len(self.members) > 1 else ''} epoch {epoch}/{self.train.epochs}")
        for step, (images, targets, indices) in enumerate(bar):
            ios, parts = self.step(images, targets, indices, epoch, step)
            b = targets.numel()
            seen += b
            # Running sums stay on the device (loss, correct, each term): the only per-step host sync is
            # the finiteness check; the progress bar reads the sums every few steps.
            for g, ((loss, values), io) in enumerate(zip(parts, ios)):
                labels[g] = list(values)
                batch = torch.stack([loss.detach().float() * b, (io.logits.argmax(1) == io.targets).sum().float(),
                                     *(v.detach().float() * b for v in values.values())])
                sums[g] = batch if sums[g] is None else sums[g] + batch
            if self.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{sums[0][0].item() / seen:.4f}", acc=f"{sums[0][1].item() / seen:.3f}")
        if not self.train.schedule.per_step:
            self.scheduler.step()
        seen = int(distributed.sum_over_ranks(torch.tensor([seen])).item())
        return [_row(lr, distributed.sum_over_ranks(s).tolist(), names, seen) for s, names in zip(sums, labels)]

    def step(self, images, targets, indices, epoch: int = 0, step: int = 0):
        """One optimisation step of every network on one batch (inside ``with session``, after
        :meth:`seed_epoch`): the forwards, each network's objective, one backward and optimizer step over
        all of them. Returns each network's StepIO and ``(loss, {term: value})``."""
        ios = self.forwarder(images, targets, indices, epoch=epoch, step=step)
        total, parts = self._losses(ios)
        self._finite(total, parts, epoch, step)
        if self.ddp is not self.network:
            n, size = self.splits.train.targets.numel(), self.train.batch_size
            total = total * distributed.loss_weight(targets.numel(), min(size, n - step * size))
        self.stepper(total)
        if self.train.schedule.per_step:
            self.scheduler.step()
        return ios, parts

    def _finite(self, total: torch.Tensor, parts: list, epoch: int, step: int) -> None:
        if torch.isfinite(total).item():
            return
        for m, (loss, _) in zip(self.members, parts):
            check_finite(loss, m.spec.where, epoch, step, m.spec.checkpoint, epoch - 1)

    # -- evaluation and state --------------------------------------------------------------------

    def split_batches(self, split):
        t = self.train
        return eval_batches(split, self.memory, self.splits.image_size, t.batch_size, t.num_workers, self.device, t.channels_last)

    @property
    def val(self):
        if self._val is None:
            self._val = self.split_batches(self.splits.val)
        return self._val

    def evaluate(self, batches) -> list[tuple[float, float]]:
        """Each network's mean cross-entropy and accuracy on ``batches`` (:meth:`split_batches`)."""
        return evaluate(self.network, batches, self.device, self.train.amp, len(self.members))

    def member_state(self, g: int) -> dict:
        """Network ``g``'s weights, objective, optimizer, schedule and scaler state, as if trained alone."""
        stacked, own = self._layout
        if isinstance(self.network, StackedNetwork):
            model, optim = self.network.member_state(g), member_optimizer_state(self.optimizer.state_dict(), stacked, len(self.members), own, g)
        else:
            model, optim = self.network.state_dict(), self.optimizer.state_dict()
        return {"model_state": model, "objective_state": self.members[g].objective.state_dict(), "optimizer_state": optim,
                "scheduler_state": self.scheduler.state_dict(), "scaler_state": self.stepper.scaler.state_dict()}

    def load_member_states(self, states: Sequence[dict]) -> None:
        """The inverse of :meth:`member_state`, one state per network (e.g. read from checkpoints)."""
        stacked, own = self._layout
        if isinstance(self.network, StackedNetwork):
            self.network.load_member_states([s["model_state"] for s in states])
            self.optimizer.load_state_dict(stacked_optimizer_state([s["optimizer_state"] for s in states], stacked, own))
        else:
            self.network.load_state_dict(states[0]["model_state"])
            self.optimizer.load_state_dict(states[0]["optimizer_state"])
        for m, s in zip(self.members, states):
            m.objective.load_state_dict(s["objective_state"])
        self.scheduler.load_state_dict(states[0]["scheduler_state"])
        self.stepper.scaler.load_state_dict(states[0]["scaler_state"])


def _row(lr: float, totals: list[float], labels: list[str], seen: int) -> dict:
    row = {"lr": lr, "loss": totals[0] / seen}
    row.update({f"loss.{k}": v / seen for k, v in zip(labels, totals[2:])})
    row["train_acc"] = totals[1] / seen
    return row


def _ranges(start: int, sizes: list[int]) -> list[range]:
    out = []
    for n in sizes:
        out.append(range(start, start + n))
        start += n
    return out
