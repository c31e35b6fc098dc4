"""Does ``make study`` from a fresh clone finish within the budget? Times each stage and prints it.

A benchmark, not a test: it clones this repository's HEAD into a temporary folder (uncommitted changes
are not in it, and it says so), runs ``make setup-study`` and then ``make study PARAMS=...`` there, and prints
the wall time of the set-up and of each notebook (from the run folder's ``manifest.json``), their total,
and the ratio of the total to the budget (the training issue's 45 minutes on 2 cores). The baseline is
the budget itself. Run it alone on the machine: anything else running slows the study down several fold.

    python benchmarks/study_time.py [--params params/default.yaml] [--budget-min 45] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` with its output appended to ``log``; its wall seconds (stops on failure)."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed with status {proc.returncode} after {seconds:.0f} s; see {log}")
    return seconds


def _run_folder(clone: Path, log: Path) -> Path:
    """The run folder the runner named last in its output (``study done: <folder>``)."""
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.startswith("study done: ")]
    if not lines:
        sys.exit(f"error: no 'study done:' line in {log}; valid: a log of a finished make study")
    folder = Path(lines[-1].removeprefix("study done: ").strip())
    return folder if folder.is_absolute() else clone / folder


def _print_stages(setup_s: float, study_s: float, manifest: dict, budget_s: float) -> None:
    stages = [("set-up (venv, pip install)", setup_s)]
    stages += [(name, float(info["wall_s"])) for name, info in manifest.get("notebooks", {}).items()]
    accounted = sum(s for _, s in stages[1:])
    stages.append(("runner outside notebooks (world lock, report.html, manifest)", max(study_s - accounted, 0.0)))
    total = setup_s + study_s
    print(f"{'stage':<62} {'seconds':>9} {'min':>7}")
    for name, seconds in stages:
        print(f"{name:<62} {seconds:>9.1f} {seconds / 60:>7.2f}")
    print(f"{'total (make setup-study + make study)':<62} {total:>9.1f} {total / 60:>7.2f}")
    verdict = "within" if total <= budget_s else "OVER"
    print(f"budget {budget_s / 60:.0f} min: total / budget = {total / budget_s:.2f}x ({verdict} the budget)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params/default.yaml", help="params file, relative to the clone")
    p.add_argument("--budget-min", type=float, default=45.0)
    p.add_argument("--keep", default=None, help="clone into this folder and keep it (default: a temporary one, removed)")
    args = p.parse_args(argv)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"clone of {commit}{' (the checkout has uncommitted changes: not in the clone)' if dirty else ''}; "
          f"load average before: {os.getloadavg()}")
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kdlib-study-time-"))
    clone, log = base / "kdlib", base / "make.log"
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        setup_s = _timed(["make", "setup-study"], clone, log)
        study_s = _timed(["make", "study", f"PARAMS={args.params}"], clone, log)
        folder = _run_folder(clone, log)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        print(f"run folder: {folder}")
        _print_stages(setup_s, study_s, manifest, args.budget_min * 60)
        print(f"load average after: {os.getloadavg()}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
