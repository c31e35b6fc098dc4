"""``python -m kdlib.train PARAMS.yaml [--run NAME ...] [--out DIR]``: train a study's teacher and students.

Runs go in file order (the teacher first). Every selected run is checked before any trains; a finished
run is skipped, an interrupted one resumes from its last checkpoint. See :mod:`kdlib.train.fit` for the
run folder layout.
"""

from __future__ import annotations

import argparse

from kdlib.errors import cli_main
from kdlib.params import load_study
from kdlib.train.fit import fit_study, output_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.train", description="Train the teacher and students of a study.")
    p.add_argument("params", help="study params YAML, e.g. params/tiny.yaml")
    p.add_argument("--run", action="append", default=None, metavar="NAME", help="train only this run (repeatable)")
    p.add_argument("--out", default=None, help="folder of the run folders (default: <output_root>/<params stem>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    study = load_study(args.params)
    names = args.run or [r.name for r in study.runs()]
    for name in names:
        study.run(name)  # an unknown --run name: one line listing the study's runs
    print(f"training {', '.join(r.name for r in study.runs() if r.name in names)} into {output_dir(study, args.out)}")
    for result in fit_study(study, names, args.out, progress=not args.quiet):
        test = "-" if result.test_acc is None else f"{result.test_acc:.4f}"
        print(f"{result.name}: epoch {result.epoch}, train acc {result.train_acc:.4f}, val acc {result.val_acc:.4f}, "
              f"test acc {test}, {result.seconds:.1f} s -> {result.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
