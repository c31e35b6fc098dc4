"""Training throughput per method on the study's world: images/s and epoch time relative to scratch.

    python benchmarks/train_throughput.py [--params params/default.yaml] [--steps 10] [--rounds 3]

Each method trains the study's student architecture for ``--steps`` steps of the study's batch size with
the real loop pieces (seeded loader with augmentation, hooked forwards, objective, optimizer step),
round-robin over ``--rounds`` rounds so that load from other processes hits every method alike; the
best round is reported. The teacher is the study's teacher architecture, untrained (weights do not
change the cost), prepared as ``fit`` prepares it (BatchNorm folded, channels_last on CPU). Goal from
issue 4: a KD epoch costs at most 1.5x a scratch epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kdlib.errors import cli_main
from kdlib.losses import SetupContext, build_objective
from kdlib.models import build
from kdlib.models.inference import fold_batchnorm
from kdlib.params import load_study
from kdlib.data.splits import load_splits
from kdlib.train.loaders import train_loader
from kdlib.device import resolve_device
from kdlib.train.fit import Stepper, teacher_channels_last
from kdlib.train.optim import build_optimizer
from kdlib.train.seeding import deterministic
from kdlib.train.step import Forwarder

ROOT = Path(__file__).resolve().parents[1]

# (label, loss terms, teacher in bfloat16/float16)
METHODS = [
    ("scratch", [{"name": "ce"}], False),
    ("ls", [{"name": "ls", "epsilon": 0.1}], False),
    ("kd", [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 4.0}], False),
    ("kd, teacher_amp", [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 4.0}], True),
    ("kd+at", [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}, {"name": "at", "weight": 1000.0}], False),
    ("kd+at, teacher_amp", [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}, {"name": "at", "weight": 1000.0}], True),
    ("crd", [{"name": "ce"}, {"name": "crd", "weight": 0.8}], False),
    ("crd, teacher_amp", [{"name": "ce"}, {"name": "crd", "weight": 0.8}], True),
]


class Bench:
    def __init__(self, study, splits, teacher, device, terms, teacher_amp):
        train = study.train
        student_name = study.students[0].model if study.students else "resnet18_w8"
        torch.manual_seed(0)
        self.student = build(student_name, len(splits.classes)).to(device)
        self.objective = build_objective(terms)
        self.objective.setup(SetupContext(self.student, teacher, len(splits.classes), splits.image_size,
                                          splits.train.targets, seed=0))
        self.objective.to(device)
        params = [p for p in list(self.student.parameters()) + list(self.objective.parameters()) if p.requires_grad]
        self.stepper = Stepper(build_optimizer(params, train.optimizer), train.amp, device)
        self.forwarder = Forwarder(self.student, teacher if self.objective.needs_teacher else None,
                                   self.objective.student_layers(), self.objective.teacher_layers(), self.objective.views,
                                   device, train.amp, train.channels_last, teacher_amp, teacher_channels_last(device, train))
        self.splits, self.train, self.device = splits, train, device

    def run(self, steps: int, seed: int) -> float:
        """Images per second over ``steps`` steps (data loading included)."""
        loader = iter(train_loader(self.splits.train, self.train.batch_size, seed, self.train.num_workers, False))
        self.student.train()
        seen = 0
        with self.forwarder:
            start = time.perf_counter()
            for step in range(steps):
                images, targets, indices = next(loader)
                loss, _ = self.objective(self.forwarder(images, targets, indices, step=step))
                self.stepper(loss)
                seen += targets.numel()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return seen / (time.perf_counter() - start)


@cli_main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params" / "default.yaml"))
    p.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    study = load_study(args.params)
    with deterministic(study.train.deterministic):  # as fit() trains
        return _run(study, args)


def _run(study, args) -> int:
    device = resolve_device(study.train.device, f"{study.source}: train.device")
    splits = load_splits(study, study.train, progress=True)
    teacher_name = study.teachers[0].model if study.teachers else "resnet34_w16"
    teacher = fold_batchnorm(build(teacher_name, len(splits.classes))).to(device).requires_grad_(False)
    if teacher_channels_last(device, study.train):
        teacher = teacher.to(memory_format=torch.channels_last)
    benches = {label: Bench(study, splits, teacher, device, terms, amp) for label, terms, amp in METHODS}
    for bench in benches.values():  # warm-up: kernels, allocator
        bench.run(2, seed=1)
    speeds: dict[str, list[float]] = {label: [] for label in benches}
    for r in range(args.rounds):
        for label, bench in benches.items():
            speeds[label].append(bench.run(args.steps, seed=100 + r))
    base = max(speeds["scratch"])
    student = study.students[0].model if study.students else "resnet18_w8"
    print(f"{study.source}: student {student}, teacher {teacher_name}, {splits.image_size} px, batch "
          f"{study.train.batch_size}, {device}, {torch.get_num_threads()} threads; best of {args.rounds} rounds x {args.steps} steps")
    print(f"{'method':<20} {'images/s':>9} {'epoch time / scratch':>21}")
    for label, values in speeds.items():
        ips = max(values)
        print(f"{label:<20} {ips:>9.0f} {base / ips:>20.2f}x")
    epoch = len(splits.train) / base
    print(f"scratch epoch of {len(splits.train)} images: {epoch:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
