"""``python -m kdlib.runs PARAMS.yaml [--out DIR] [--quiet]``: run the whole study headless (``make study``)."""

from __future__ import annotations

import argparse
import sys

from kdlib.errors import cli_main
from kdlib.params import load_study


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdlib.runs", description="Run a study: world, training, dissection, tables.")
    p.add_argument("params", help="study params YAML, e.g. params/default.yaml")
    p.add_argument("--out", default=None, help="run folder (default: <output_root>/<params stem>-<params hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    study = load_study(args.params)
    from kdlib.runs.study import run_study

    folder = run_study(study, args.out, progress=not args.quiet)
    print(f"study done: {folder}")
    for name in ("accuracy.csv", "detectors.csv"):
        print(f"  {folder / 'tables' / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
