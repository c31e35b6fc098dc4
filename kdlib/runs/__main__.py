"""``python -m kdlib.runs``: the notebook runner, a batch of teacher/student pairs, and the committed outputs.

::

    python -m kdlib.runs run PARAMS.yaml [--out DIR] [--force] [--quiet] [--torchrun N]     # make study
    python -m kdlib.runs batch PAIR.yaml ... [--jobs N] [--force] [--quiet] [--torchrun N]  # one run folder per pair
    python -m kdlib.runs notebooks [NOTEBOOK.ipynb ...] [--keep]               # make notebooks
    python -m kdlib.runs headline PARAMS.yaml [--out DIR]                      # the results table (Markdown)

``--torchrun N``: the training step runs in N data-parallel processes (:mod:`kdlib.runs.launch`).

Exit status: 0 done; 1 a notebook (or, in a batch, a pair) failed; 2 bad input (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kdlib.errors import cli_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.runs", description="Run a study's notebooks; a batch of pairs.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one study's notebooks into its run folder (papermill)")
    run.add_argument("params", help="study params YAML, e.g. params/default.yaml")
    run.add_argument("--out", default=None, help="run folder (default: <output_root>/<run id>)")
    run.add_argument("--force", action="store_true", help="redo every step of the run folder (the world is kept)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--notebooks", default=None, help=argparse.SUPPRESS)  # a copy of notebooks/ (tests)
    run.add_argument("--torchrun", default=None, metavar="N", help="train in N data-parallel processes (torchrun; default 1)")
    batch = sub.add_parser("batch", help="one run folder per teacher/student pair, and a summary across pairs")
    batch.add_argument("pairs", nargs="+", help="study params YAML files, e.g. params/pairs/*.yaml")
    batch.add_argument("--jobs", type=int, default=1, help="pairs run at the same time, each its own process (default 1)")
    batch.add_argument("--out", default=None, help="folder for batch-<digest>/ (default: the first pair's output_root)")
    batch.add_argument("--force", action="store_true", help="pass --force to every pair")
    batch.add_argument("--quiet", action="store_true", help="no progress lines")
    batch.add_argument("--notebooks", default=None, help=argparse.SUPPRESS)
    batch.add_argument("--torchrun", default=None, metavar="N", help="each pair trains in N data-parallel processes (torchrun)")
    again = sub.add_parser("notebooks", help="re-execute the committed notebooks in place (make notebooks)")
    again.add_argument("paths", nargs="*", help="notebooks (default: every notebook of notebooks/, in order)")
    again.add_argument("--keep", action="store_true", help="reuse the run folder and world (default: start fresh)")
    head = sub.add_parser("headline", help="print a finished study's headline table (Markdown) from its summary")
    head.add_argument("params", help="the study params YAML the run folder was made from")
    head.add_argument("--out", default=None, help="run folder (default: <output_root>/<run id>)")
    return p


def _headline(args) -> int:
    from kdlib.layout import StudyFolder
    from kdlib.params import load_study
    from kdlib.runs import headline, steps

    study = load_study(args.params)
    folder = StudyFolder.for_study(study, args.out)
    summary = steps.read_table(folder, "summary")
    nulls = [r for r in dict.fromkeys(summary["run"]) if str(r).startswith("random-")]
    runs = [r.name for r in study.teachers] + [r.name for r in study.students] + nulls
    print(headline.markdown(headline.table(summary, runs, study.dissect.layers[-1])))
    return 0


def _run(args) -> int:
    from kdlib.params import load_study

    load_study(args.params)  # bad params: one line at once, before torch and papermill are imported (seconds)
    from kdlib.runs.launch import ENV, torchrun_processes
    from kdlib.runs.notebooks import NotebookFailed
    from kdlib.runs.runner import run_notebooks

    if args.torchrun is not None:  # read by the training step in the notebooks' kernels (kdlib.runs.launch)
        os.environ[ENV] = str(torchrun_processes(args.torchrun))
    try:
        folder = run_notebooks(args.params, args.out, force=args.force, progress=not args.quiet,
                               source=Path(args.notebooks) if args.notebooks else None)
    except NotebookFailed as exc:
        if (exc.run.error or "").startswith("KeyboardInterrupt"):  # Ctrl-C reached the kernel mid-cell
            raise KeyboardInterrupt from None
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"study done: {folder.root}")
    print(f"report: {folder.report}")
    return 0


def _batch(args) -> int:
    from kdlib.runs.batch import run_batch

    result = run_batch([Path(p) for p in args.pairs], jobs=args.jobs, out=args.out, force=args.force,
                       quiet=args.quiet, notebooks=args.notebooks, torchrun=args.torchrun)
    print(f"summary: {result.summary}")
    failed = [p.name for p in result.pairs if p.status != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(result.pairs)} pairs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _notebooks(args) -> int:
    from kdlib.runs.notebook import relative
    from kdlib.runs.notebooks import execute_in_place
    from kdlib.runs.runner import NOTEBOOKS, fresh_start, notebooks_folder

    paths = [Path(p) for p in args.paths] or [notebooks_folder() / f"{n}.ipynb" for n in NOTEBOOKS]
    if not args.keep:
        for path in fresh_start():
            print(f"removed {relative(path)}")
    for path in paths:
        seconds = execute_in_place(path)
        print(f"{path.name}: {seconds:.1f} s")
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"run": _run, "batch": _batch, "notebooks": _notebooks, "headline": _headline}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
