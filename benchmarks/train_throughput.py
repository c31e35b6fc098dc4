"""Training throughput: today's pipeline against the fast one, per method, alone and beside a busy process,
at 1 and 2 threads; then the study's students as the plan trains them.

    python benchmarks/train_throughput.py [--params params/default.yaml] [--steps 3] [--rounds 2]

Part 1. Each method (scratch, LS, KD, KD+AT, CRD) trains the study's student architecture for
``--steps`` steps of the study's batch size through a real :class:`~kdlib.train.TrainingSession` (batches,
hooked forwards, objective, optimizer step), under two pipelines:

* ``today``: kdlib 0.1's (``batches: loader``: PIL images through a DataLoader with torchvision's
  transforms; float32 student in the default memory format; teacher forward in bfloat16);
* ``new``: the params' fast path (``batches: memory``, bfloat16 autocast, channels_last).

Every (method, pipeline) cell runs round-robin over ``--rounds`` rounds so that load from other processes
hits them alike, and the best round is kept; the whole table is measured at 1 and at 2 torch threads,
alone and beside a busy second process (``python -c "while True: pass"``). The teacher is the study's
teacher architecture, untrained (weights do not change the cost), prepared as training prepares it.

Part 3 estimates the training wall time of the whole study: every group's CPU time per step (CPU time,
which another process's load hardly changes), times its epochs' steps, list-scheduled over the plan's
processes with the teachers first.

Part 2. The study's students of one seed: today one after another in one process at 2 threads (what
``make study`` did), against the plan's groups (:func:`kdlib.train.plan`), every group in its own process
at ``train.threads`` threads, all at once (stacked students share batches and teacher forwards). The
figure is images per second summed over the networks trained at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdlib.data.splits import load_splits
from kdlib.errors import cli_main
from kdlib.losses import build_objective
from kdlib.models import build
from kdlib.models.inference import fold_batchnorm
from kdlib.params import RunParams, load_study
from kdlib.train import plan
from kdlib.train.seeding import deterministic, torch_threads
from kdlib.train.session import NetworkSpec, TrainingSession, teacher_channels_last

ROOT = Path(__file__).resolve().parents[1]
KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 1.0}]
METHODS = {
    "scratch": [{"name": "ce"}],
    "ls": [{"name": "ls", "epsilon": 0.1}],
    "kd": KD,
    "kd+at": KD + [{"name": "at", "weight": 1000.0}],
    "crd": [{"name": "ce"}, {"name": "crd", "weight": 0.8}],
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
TODAY = {"batches": "loader", "amp": False, "channels_last": False, "teacher_amp": True, "stack": 1}


def pipelines(study):
    fast = dataclasses.replace(study.train, stack=1)
    return {"today": dataclasses.replace(study.train, **TODAY), "new": fast}


def frozen_teacher(name: str, classes: int, device, train):
    teacher = fold_batchnorm(build(name, classes)).to(device).requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last) if teacher_channels_last(device, train) else teacher


def session_for(train, splits, run: RunParams, teacher_model: str, device) -> TrainingSession:
    """One network alone, distilling (when its loss needs a teacher) from an untrained teacher."""
    teachers = {"teacher": frozen_teacher(teacher_model, len(splits.classes), device, train)}
    needs = build_objective(run.loss).needs_teacher
    return TrainingSession(train, splits, [NetworkSpec(run.name, run, 0, "teacher" if needs else None, run.name)], teachers, device)


def images_per_second(session: TrainingSession, steps: int, epoch: int, clock=time.perf_counter) -> float:
    """Images per second of one session over ``steps`` steps (data included), after one warm-up step;
    ``clock=time.process_time`` counts this process's CPU time instead of the wall clock."""
    session.seed_epoch("epoch", epoch)
    session.network.train()
    batches = session.batches.epoch(session.seed, epoch)
    with session:
        session.step(*next(batches))
        start, seen = clock(), 0
        for step in range(steps):
            images, targets, indices = next(batches)
            session.step(images, targets, indices, epoch, step)
            seen += targets.numel()
        if session.device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (clock() - start)


@contextlib.contextmanager
def busy(enabled: bool):
    """A CPU-bound second process for the block (or nothing)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def part1(study, splits, device, args) -> dict:
    student = study.students[0].model if study.students else "resnet18_w8"
    teacher = study.teachers[0].model if study.teachers else "resnet34_w16"
    cells = {}
    for pipe, train in pipelines(study).items():
        for method, loss in METHODS.items():
            run = RunParams(name=method.replace("+", "_"), model=student, loss=loss)
            cells[(method, pipe)] = session_for(train, splits, run, teacher, device)
    table = {}
    for threads in (1, 2):
        for loaded in (False, True):
            with torch_threads(threads), busy(loaded):
                speeds = {cell: [] for cell in cells}
                for r in range(args.rounds):
                    for cell, session in cells.items():
                        speeds[cell].append(images_per_second(session, args.steps, epoch=r + 1, clock=CLOCKS[args.clock]))
            table[(threads, loaded)] = {cell: max(v) for cell, v in speeds.items()}
    table["clock"] = args.clock
    return table


def print_part1(table: dict, study, splits) -> None:
    print(f"Part 1: {study.students[0].model if study.students else 'resnet18_w8'}, {splits.image_size} px, batch "
          f"{study.train.batch_size}; images/s ({'per CPU-second' if table.get('clock') == 'cpu' else 'wall'}), best of the rounds; new/today = the speed-up; kd/scratch = time ratio")
    header = f"{'threads, load':<16} {'method':<8} {'today':>7} {'new':>7} {'new/today':>10} {'kd/scratch today':>17} {'new':>5}"
    print(header)
    for (threads, loaded), cells in ((k, v) for k, v in table.items() if k != "clock"):
        label = f"{threads}, {'busy' if loaded else 'alone'}"
        for method in METHODS:
            today, new = cells[(method, "today")], cells[(method, "new")]
            ratio_today = cells[("scratch", "today")] / today
            ratio_new = cells[("scratch", "new")] / new
            print(f"{label:<16} {method:<8} {today:>7.0f} {new:>7.0f} {new / today:>9.2f}x {ratio_today:>16.2f}x {ratio_new:>4.2f}x")
            label = ""


def _group_worker(params: str, keys: list[str], steps: int, threads: int, barrier, results) -> None:
    study = load_study(params)
    insts = [study.instance(k) for k in keys]
    train = study.train_for(insts[0].run)
    device = torch.device("cpu")
    with deterministic(train.deterministic), torch_threads(threads):
        splits = load_splits(study, dataclasses.replace(train, cache_images=False))
        teacher = study.teachers[0].model
        teachers = {t.name: frozen_teacher(teacher, len(splits.classes), device, train) for t in study.teachers}
        specs = [NetworkSpec(i.key, i.run, i.seed, i.run.teacher.run if i.run.teacher else None, i.key) for i in insts]
        session = TrainingSession(train, splits, specs, teachers, device)
        images_per_second(session, 1, epoch=1)  # warm-up
        barrier.wait()
        ips = images_per_second(session, steps, epoch=2)
    results.put((tuple(keys), ips * len(keys)))


def part2(study, splits, device, args) -> None:
    seed = study.student_seeds[0]
    students = [i for i in study.instances() if i.role == "student" and i.seed == seed]
    today_train = dataclasses.replace(study.train, **TODAY)
    teacher = study.teachers[0].model
    single = {}
    with torch_threads(2):
        for inst in students:
            session = session_for(today_train, splits, inst.run, teacher, device)
            single[inst.name] = images_per_second(session, args.steps, epoch=1)
    today = len(students) / sum(1 / v for v in single.values())
    groups = [g for g in plan(study) if g.insts[0].role == "student" and g.insts[0].seed == seed]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(groups)), ctx.Queue()
    procs = [ctx.Process(target=_group_worker, args=(args.params, g.keys, args.steps * 3, study.train.threads, barrier, results))
             for g in groups]
    for p in procs:
        p.start()
    summed = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
    print(f"\nPart 2: the {len(students)} students of seed {seed}; images/s summed over the networks trained at once")
    print(f"  today, one after another, 1 process x 2 threads: {today:.0f}  ({', '.join(f'{k} {v:.0f}' for k, v in single.items())})")
    print(f"  new, {len(groups)} processes x {study.train.threads} thread(s), groups {[list(k) for k in summed]}: "
          f"{sum(summed.values()):.0f}  ({', '.join(f'{v:.0f}' for v in summed.values())})")
    print(f"  ratio new/today: {sum(summed.values()) / today:.2f}x (goal >= 3x)")


def group_session(study, splits, group, device) -> TrainingSession:
    """The session the plan trains ``group`` in, with untrained teachers of the study's teacher architectures."""
    train = study.train_for(group.insts[0].run)
    teachers = {t.name: frozen_teacher(t.model, len(splits.classes), device, train) for t in study.teachers}
    specs = [NetworkSpec(i.key, i.run, i.seed, i.run.teacher.run if i.run.teacher else None, i.key) for i in group.insts]
    return TrainingSession(train, splits, specs, teachers, device)


def simulate(durations: dict, groups, jobs: int) -> float:
    """Wall time of training ``groups`` (each ``durations[keys]`` seconds) in ``jobs`` processes: in plan
    order, each group on the process that frees first, once the teachers it needs are finished."""
    free = [0.0] * jobs
    finished: dict[str, float] = {}
    for g in groups:
        slot = free.index(min(free))
        begin = max([free[slot]] + [finished[k] for k in g.needs if k in finished])
        free[slot] = begin + durations[tuple(g.keys)]
        finished.update({k: free[slot] for k in g.keys})
    return max(free)


def part3(study, splits, device, args) -> None:
    """Estimated training wall time of the whole study: each group's CPU time per step (one process, this
    machine's load counts little in CPU time) times its steps, list-scheduled over the plan's processes."""
    from kdlib.train.plan import default_jobs

    groups = plan(study)
    first = study.student_seeds[0]
    shapes = [g for g in groups if g.insts[0].role == "teacher" or g.insts[0].seed == first]
    per_step, durations = {}, {}
    for g in shapes:
        session = group_session(study, splits, g, device)
        per_step[tuple(i.name for i in g.insts)] = study.train.batch_size / images_per_second(
            session, args.steps, epoch=1, clock=time.process_time)
    for g in groups:
        train = study.train_for(g.insts[0].run)
        durations[tuple(g.keys)] = per_step[tuple(i.name for i in g.insts)] * len(session.batches) * train.epochs
    jobs = default_jobs(study)
    wall = simulate(durations, groups, jobs)
    steps = ", ".join(f"{'+'.join(k)} {v * 1000:.0f} ms" for k, v in per_step.items())
    print(f"\nPart 3: estimated training wall time of {study.source} ({len(groups)} groups, {jobs} processes): "
          f"{wall / 60:.1f} min (CPU time per step: {steps}; "
          "evaluation and process start-up not included)")


@cli_main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params" / "default.yaml"))
    p.add_argument("--steps", type=int, default=3, help="timed steps per cell and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="part 1 timed by the wall clock, or by this process's CPU time (images per core-second: "
                        "hardly changed by other load, blind to the collapse beside it)")
    p.add_argument("--part", type=int, choices=(1, 2, 3), default=None, help="run one part only")
    args = p.parse_args(argv)
    study = load_study(args.params)
    device = torch.device("cpu")
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}")
    with deterministic(study.train.deterministic):
        splits = load_splits(study, dataclasses.replace(study.train, cache_images=True))
        if args.part in (None, 1):
            print_part1(part1(study, splits, device, args), study, splits)
        if args.part in (None, 2):
            part2(study, splits, device, args)
        if args.part in (None, 3):
            part3(study, splits, device, args)
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[:3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
