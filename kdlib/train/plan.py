"""Which networks of a study train together, and how many training processes run at once.

:func:`plan` cuts the study into groups, from the params alone (never from the machine or the runs a
caller selects, so a network's weights do not depend on either; under torchrun, whose world size is part
of every run's identity, nothing is stacked):

* every teacher trains alone (a stacked ``resnet34_w16`` was slower per image than two alone), after
  the teacher it distils from, if any;
* students of one seed that share the model, its options and the ``train`` section, whose losses have
  no pre-training stage and one view, are stacked up to ``train.stack`` at a time
  (:mod:`kdlib.models.stacked`): the students of one teacher go into one stack where they fit (that
  teacher then runs once per batch for all of them); the rest train alone. Under torchrun
  (:mod:`kdlib.train.distributed`) every network trains alone (stacks are not data-parallel), and
  :func:`fit_study` says so in one line.

:func:`fit_study` trains the groups holding the selected networks (a selected network's whole stack,
so that it is trained with the company its identity records) in up to ``jobs`` processes at once,
each at ``train.threads`` torch threads; a group starts once the teachers it distils from are finished.
Two processes at one thread each use two cores without the collapse of one two-thread process beside
any other load. A process that dies is reported; its networks resume from their last checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import queue
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from kdlib import layout
from kdlib.device import available_cores, die_with_parent
from kdlib.errors import KdlibError
from kdlib.locks import folder_lock
from kdlib.losses import build_objective
from kdlib.models import build
from kdlib.models.stacked import StackedNetwork
from kdlib.params import RunInstance, StudyParams, to_dict
from kdlib.train import distributed
from kdlib.train.check import check_study
from kdlib.train.fit import RunResult, fit_stack, teacher_checkpoint


@dataclass(frozen=True)
class Group:
    """Networks trained together in one process (one stacked network when several), and the keys of the
    study's teachers they distil from."""

    insts: tuple[RunInstance, ...]
    needs: frozenset[str]

    @property
    def keys(self) -> list[str]:
        return [i.key for i in self.insts]


def _stack_key(study: StudyParams, inst: RunInstance) -> Optional[str]:
    """What networks must share to be stacked; None for a network that trains alone."""
    train = study.train_for(inst.run)
    if inst.role != "student" or train.stack < 2 or train.batches != "memory" or distributed.ranks().parallel:
        return None
    objective = build_objective(inst.run.loss, f"{study.source}: {inst.name}.loss")
    if objective.has_stages or objective.views != 1:
        return None
    return json.dumps([inst.seed, inst.run.model, inst.run.model_kwargs, to_dict(train)], sort_keys=True, default=str)


def _pack(insts: list[RunInstance], capacity: int) -> list[list[RunInstance]]:
    """Stacks of at most ``capacity``: the students of one teacher together where they fit, then first-fit
    of the largest bunches first (file order breaks ties)."""
    bunches: dict[Optional[str], list[RunInstance]] = {}
    for inst in insts:
        ref = inst.run.teacher
        bunches.setdefault(None if ref is None else (ref.run or ref.checkpoint), []).append(inst)
    chunks = [b[i:i + capacity] for b in bunches.values() for i in range(0, len(b), capacity)]
    stacks: list[list[RunInstance]] = []
    for chunk in sorted(chunks, key=len, reverse=True):
        home = next((s for s in stacks if len(s) + len(chunk) <= capacity), None)
        if home is None:
            stacks.append(list(chunk))
        else:
            home.extend(chunk)
    order = {i.key: n for n, i in enumerate(insts)}
    return [sorted(s, key=lambda i: order[i.key]) for s in stacks]


def plan(study: StudyParams) -> list[Group]:
    """Every network of the study in training groups, in an order where teachers come before their students."""
    order: list = []  # a list: a network alone; a str: the key of a stackable bunch, packed below
    bunches: dict[str, list[RunInstance]] = {}
    for inst in study.instances():
        key = _stack_key(study, inst)
        if key is None:
            order.append([inst])
        else:
            if key not in bunches:
                bunches[key] = []
                order.append(key)
            bunches[key].append(inst)
    out = []
    for item in order:
        stacks = [item] if isinstance(item, list) else _pack(bunches[item], study.train_for(bunches[item][0].run).stack)
        for stack in stacks:
            needs = {t.key for i in stack if (t := study.teacher_instance(i)) is not None}
            out.append(Group(tuple(stack), frozenset(needs)))
    return out


def check_stacks(study: StudyParams, groups: Sequence[Group]) -> None:
    """One line, before any training, for a stack whose architecture cannot be stacked (see
    :class:`kdlib.models.stacked.StackedNetwork`); the probe networks are built at two classes."""
    for arch in {(g.insts[0].run.model, json.dumps(g.insts[0].run.model_kwargs, sort_keys=True)) for g in groups if len(g.insts) > 1}:
        model, kwargs = arch[0], json.loads(arch[1])
        try:
            StackedNetwork([build(model, 2, **kwargs) for _ in range(2)], model)
        except KdlibError as exc:
            raise KdlibError(f"{study.source}: {exc}") from None


def default_jobs(study: StudyParams) -> int:
    """As many processes as the machine has cores for ``train.threads`` threads each."""
    return max(1, available_cores() // study.train.threads)


def fit_study(study: StudyParams, folder: "layout.StudyFolder", names: Optional[list[str]] = None,
              progress: bool = True, jobs: Optional[int] = None) -> list[RunResult]:
    """Train the networks of runs ``names`` (default: all) in ``folder`` (see the module docstring);
    returns the results of every network trained or found finished (the selected ones and their stacks'
    other networks), teachers first. A network whose teacher is outside the selection needs that teacher
    finished already; every check runs before any training starts. ``jobs``: processes at once
    (default :func:`default_jobs`; 1 trains in this process)."""
    instances = study.instances(names)
    check_study(study, sorted({i.name for i in instances}))
    chosen = {i.key for i in instances}
    groups = [g for g in plan(study) if chosen & set(g.keys)]
    check_stacks(study, groups)
    jobs = _check_torchrun(study, groups, jobs)
    trained = {k for g in groups for k in g.keys}
    for g in groups:
        for inst in g.insts:
            ref = study.teacher_instance(inst)
            if ref is not None and ref.key not in trained:
                teacher_checkpoint(study, inst, folder)  # one line unless that teacher is finished
    jobs = max(1, min(jobs or default_jobs(study), len(groups)))
    if jobs == 1:
        results = {r.name: r for g in groups for r in _train_group(study, folder, g, progress)}
    else:
        results = _in_processes(study, folder, groups, progress, jobs)
    return [results[k] for g in groups for k in g.keys]


def _check_torchrun(study: StudyParams, groups: Sequence[Group], jobs: Optional[int]) -> Optional[int]:
    """Under torchrun every rank trains the groups one after the other, in its own process, unstacked;
    a loss with pre-training stages is refused before any training."""
    r = distributed.ranks()
    if not r.parallel:
        return jobs
    for inst in (i for g in groups for i in g.insts):
        if build_objective(inst.run.loss, f"{study.source}: {inst.name}.loss").has_stages:
            raise KdlibError(f"{study.source}: {inst.name}.loss has pre-training stages, which do not run under torchrun yet; "
                             "valid: a loss without stages (not FT, SSKD or a FitNets hint stage), or one process")
    if jobs is not None and jobs > 1:
        raise KdlibError(f"--jobs = {jobs} under torchrun ({r.size} processes); valid: --jobs 1 (torchrun is the parallelism)")
    stacks = sorted({study.train_for(i.run).stack for g in groups for i in g.insts if i.role == "student"} - {1})
    if stacks and r.main:
        print(f"torchrun ({r.size} processes): train.stack = {stacks[0]} is not used, every network trains alone", flush=True)
    return 1


def _train_group(study: StudyParams, folder: "layout.StudyFolder", group: Group, progress: bool, on_epoch=None) -> list[RunResult]:
    """Train one group in this process, holding the lock of each of its run folders."""
    folders = [folder.run(k) for k in group.keys]
    teachers = [teacher_checkpoint(study, i, folder) for i in group.insts]
    with contextlib.ExitStack() as locks:
        if distributed.ranks().main:  # under torchrun rank 0 holds the locks for all ranks
            for f in folders:
                locks.enter_context(folder_lock(f, "training run"))
        distributed.barrier()
        return fit_stack(study, list(group.insts), folders, teachers, progress, on_epoch)


def _worker(study: StudyParams, root: str, keys: list[str], messages) -> None:
    """A training process: one group; reports each epoch, then the results or the error, on ``messages``."""
    die_with_parent()
    group = Group(tuple(study.instance(k) for k in keys), frozenset())
    try:
        results = _train_group(study, layout.StudyFolder(Path(root)), group, False,
                               lambda _keys, epoch: messages.put(("epoch", keys, epoch)))
        messages.put(("done", keys, [asdict(r) for r in results]))
    except KdlibError as exc:
        messages.put(("error", keys, str(exc)))
    except BaseException:
        messages.put(("crash", keys, traceback.format_exc()))
        raise


class _Progress:
    """One bar over the epochs of every group (a group's bar part completes when it finishes)."""

    def __init__(self, study: StudyParams, groups: Sequence[Group], jobs: int, progress: bool):
        self.epochs = {tuple(g.keys): study.train_for(g.insts[0].run).epochs for g in groups}
        self.seen = dict.fromkeys(self.epochs, 0)
        self.bar = tqdm(total=sum(self.epochs.values()), disable=not progress,
                        desc=f"training {sum(len(g.keys) for g in groups)} networks, {jobs} processes")

    def reached(self, keys: tuple, epoch: int) -> None:
        if epoch > self.seen[keys]:
            self.bar.update(epoch - self.seen[keys])
            self.seen[keys] = epoch


def _in_processes(study, folder, groups: Sequence[Group], progress: bool, jobs: int) -> dict[str, RunResult]:
    """Run ``groups`` in up to ``jobs`` spawned processes, each group once its teachers are finished."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    waiting, running, results = list(groups), {}, {}
    finished = {k for g in groups for k in g.needs if layout.read_done(folder.run(k), "train") is not None}
    bar = _Progress(study, groups, jobs, progress)
    try:
        while waiting or running:
            for g in [g for g in waiting if g.needs <= finished][: jobs - len(running)]:
                proc = ctx.Process(target=_worker, args=(study, str(folder.root), g.keys, messages), daemon=True)
                proc.start()
                running[proc] = g
                waiting.remove(g)
            if not running:
                raise KdlibError(f"{', '.join(waiting[0].keys)} wait for teachers that did not finish: {', '.join(sorted(waiting[0].needs - finished))}")
            _collect(messages, running, results, finished, bar)
    finally:
        for proc in running:
            proc.kill()
            proc.join()
        bar.bar.close()
    return results


def _collect(messages, running: dict, results: dict, finished: set, bar: _Progress) -> None:
    """Handle the workers' next message (or notice a worker that died without one)."""
    try:
        kind, keys, body = messages.get(timeout=1.0)
    except queue.Empty:
        for proc, g in list(running.items()):
            if not proc.is_alive() and proc.exitcode != 0:
                del running[proc]
                raise KdlibError(f"the training process of {', '.join(g.keys)} died (exit code {proc.exitcode}); "
                                 "valid: run again to resume from the last checkpoints")
        return
    key = tuple(keys)
    if kind == "epoch":
        bar.reached(key, body)
        return
    proc = next(p for p, g in running.items() if tuple(g.keys) == key)
    proc.join()
    del running[proc]
    if kind == "error":
        raise KdlibError(body)
    if kind == "crash":
        raise RuntimeError(f"training {', '.join(keys)} failed:\n{body}")
    bar.reached(key, bar.epochs[key])
    results.update({r["name"]: RunResult(**r) for r in body})
    finished.update(keys)
