"""``python -m kdlib.train PARAMS.yaml [--run NAME ...] [--out DIR]``: train a study's teachers and students.

Networks go in order: teachers first, then each student at each of the study's seeds, in up to
``--jobs`` processes at once, students stacked as ``train.stack`` says (:mod:`kdlib.train.plan`). Every
selected run is checked before any trains; a finished network is skipped, an interrupted one resumes from its
last checkpoint. ``--out`` is the study's run folder (default ``<output_root>/<run id>``, the same folder
``python -m kdlib.runs`` uses, so either command reuses the other's trainings); see :mod:`kdlib.layout`.

``torchrun --nproc_per_node=N -m kdlib.train PARAMS.yaml`` trains each network data-parallel in N
processes (and ``--nnodes`` across machines); see :mod:`kdlib.train.distributed`.
"""

from __future__ import annotations

import argparse

from kdlib.errors import KdlibError, cli_main
from kdlib.layout import StudyFolder
from kdlib.params import load_study
from kdlib.train import distributed
from kdlib.train.plan import fit_study


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.train", description="Train the teachers and students of a study.")
    p.add_argument("params", help="study params YAML, e.g. params/tiny.yaml")
    p.add_argument("--run", action="append", default=None, metavar="NAME", help="train only this run (repeatable)")
    p.add_argument("--out", default=None, help="the study's run folder (default: <output_root>/<run id>)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="training processes at once (default: cores / train.threads); results do not depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ranks = distributed.init_from_env()  # under torchrun: data-parallel training (kdlib.train.distributed)
    try:
        return _train(args, ranks)
    except (RuntimeError, TimeoutError) as exc:
        if not ranks.parallel:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdlibError(f"rank {ranks.rank} of {ranks.size}: training stopped because another rank failed or vanished "
                         f"({first[:200]}); valid: run the same command again to resume from the last checkpoint") from None
    finally:
        distributed.shutdown()


def _train(args, ranks: "distributed.Ranks") -> int:
    study = load_study(args.params)
    if not study.runs():
        raise KdlibError(f"{study.source}: no teachers or students to train; valid: a teachers and/or students section")
    names = args.run or [r.name for r in study.runs()]
    for name in names:
        study.run(name)  # an unknown --run name: one line listing the study's runs
    folder = StudyFolder.for_study(study, args.out)
    say = print if ranks.main else (lambda *_: None)
    say(f"training {', '.join(i.key for i in study.instances(names))} into {folder.runs}"
        + (f" ({ranks.size} processes, DistributedDataParallel)" if ranks.parallel else ""))
    for result in fit_study(study, folder, names, progress=not args.quiet, jobs=args.jobs):
        test = "-" if result.test_acc is None else f"{result.test_acc:.4f}"
        say(f"{result.name}: epoch {result.epoch}, train acc {result.train_acc:.4f}, val acc {result.val_acc:.4f}, "
              f"test acc {test}, {result.seconds:.1f} s -> {result.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
