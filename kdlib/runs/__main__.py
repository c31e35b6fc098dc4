"""``python -m kdlib.runs run PARAMS.yaml [--out DIR] [--quiet]``: run the whole study headless (``make study``)."""

from __future__ import annotations

import argparse
import json
import sys

from kdlib.errors import cli_main
from kdlib.params import load_study


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.runs", description="Run a study: world, training, dissection, tables.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one study into its run folder")
    run.add_argument("params", help="study params YAML, e.g. params/default.yaml")
    run.add_argument("--out", default=None, help="run folder (default: <output_root>/<run id>)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    study = load_study(args.params)
    from kdlib.runs.study import run_study

    folder = run_study(study, args.out, progress=not args.quiet)
    print(f"study done: {folder}")
    timings = json.loads((folder / "manifest.json").read_text())["timings_s"]
    print("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.1f} s")
    for name in ("accuracy", "detectors", "summary", "claims"):
        print(f"  {folder / 'tables' / (name + '.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
