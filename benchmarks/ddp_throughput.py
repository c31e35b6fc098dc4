"""Data-parallel training throughput: ``python -m kdlib.train`` in 1 process against ``torchrun
--nproc_per_node=2`` (and more with ``--procs``), on the default world's student.

    python benchmarks/ddp_throughput.py [--procs 1 2] [--rounds 2] [--per-class 40] [--epochs 2]

The world is the default profile's (24 classes, 32 px) with ``--per-class`` training images per class
(the full 320 only makes the run longer; the per-step cost is the same), the student is params/default.yaml's
first student (``resnet18_w8``, cross-entropy) with the default ``train`` section (batch 128, memory
batches, bfloat16 autocast, channels_last, one torch thread per process). Each variant trains into a fresh
folder; the figure is training images per second of the last epoch (``metrics.csv``'s ``seconds``: the
epoch's steps and the validation pass, which every rank runs whole), i.e. the global throughput. The
variants run round-robin over ``--rounds`` rounds and the best round is kept; the ratio is against 1
process measured in the same run. On a machine with 2 cores, 2 processes at 1 thread use both.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_world(folder: Path, per_class: int) -> Path:
    from kdlib.data.world import generate
    from kdlib.params import PROFILES

    params = replace(PROFILES["default"], train_per_class=per_class, val_per_class=4, test_per_class=4, probe_images=8)
    return generate(params, folder / "world", seed=0, workers=1)


def study_file(folder: Path, world: Path, epochs: int) -> Path:
    default = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    train = {**default["train"], "epochs": epochs, "schedule": {"name": "constant"}, "image_size": 32}
    student = {k: v for k, v in default["students"][0].items() if k in ("name", "model")}
    data = {"seed": 0, "world": {"profile": "default"}, "data": {"imagefolder": str(world / "imagefolder")},
            "output_root": str(folder / "outputs"), "train": train, "students": [student]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train_once(params: Path, out: Path, procs: int) -> float:
    """Images per second of the last epoch of one training in ``procs`` processes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "kdlib.train", str(params), "--out", str(out), "--quiet"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training in {procs} process(es) failed: {proc.stderr.strip()[-2000:]}")
    (run,) = (out / "runs").iterdir()
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    images = sum(1 for _ in (params.parent / "world" / "imagefolder" / "train").rglob("*.png"))
    return images / float(last["seconds"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        folder = Path(tmp)
        world = make_world(folder, args.per_class)
        params = study_file(folder, world, args.epochs)
        best = {n: 0.0 for n in args.procs}
        for r in range(args.rounds):
            for n in args.procs:
                ips = train_once(params, folder / f"out-{r}-{n}", n)
                best[n] = max(best[n], ips)
                print(f"round {r + 1}: {n} process(es): {ips:.1f} images/s", flush=True)
    base = best[args.procs[0]]
    print(f"\n| processes | images/s (best of {args.rounds}) | ratio to {args.procs[0]} |\n|---|---|---|")
    for n in args.procs:
        print(f"| {n} | {best[n]:.1f} | {best[n] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
