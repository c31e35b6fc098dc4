"""A batch of teacher/student pairs: ``python -m kdlib.runs batch params/pairs/*.yaml [--jobs N]``.

Each pair file is a study params file (one teacher and its students, e.g. the default students with a
wider teacher). Every file is validated and checked before any pair starts (a bad file is one line,
nothing runs). The generated worlds the pairs use are made first, one after the other, in this process:
pairs usually share one world, and two processes generating it at once would find it locked. Then
each pair runs in its own process (``python -m kdlib.runs run PAIR --quiet``), ``N``
at a time (with ``--torchrun M`` each pair's training step runs in M data-parallel processes,
:mod:`kdlib.runs.launch`), into its own run folder; a pair that fails is reported (its error line, its log) and the
others go on; the exit status is 1 when any pair failed. Last, the batch folder
``<output_root>/batch-<8 hex digits of the pair files' params>/`` gets:

* ``summary.csv``: one row per pair and student run: the pair's status and run folder, its teacher's
  test accuracy, the student's test accuracy and detectors (the last dissected layer, all categories,
  at the study's IoU threshold) with mean and interval over seeds, and the verdicts of the claims about
  that student; a failed pair has one row with its error;
* ``claims.csv``: every pair's claims table, with a ``pair`` column;
* ``logs/<pair>.log``: each pair's output.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from kdlib.digest import json_digest
from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.locks import folder_lock
from kdlib.params import StudyParams, to_dict
from kdlib.runs import present, runner, steps
from kdlib.runs.launch import torchrun_processes

LOCATION_KEYS = ("data_root", "output_root")  # where things go does not make another batch


@dataclass(frozen=True)
class PairResult:
    name: str
    params: Path
    folder: Path
    status: str  # "ok" or "failed"
    seconds: float
    log: Path
    error: Optional[str] = None


@dataclass(frozen=True)
class BatchResult:
    folder: Path
    summary: Path
    pairs: list[PairResult]


def batch_id(studies: dict[str, StudyParams]) -> str:
    """``batch-<8 hex>`` of the pairs' names and params (without where data and outputs go)."""
    content = {name: {k: v for k, v in to_dict(s).items() if k not in LOCATION_KEYS} for name, s in sorted(studies.items())}
    return f"batch-{json_digest(content, 8)}"


def load_pairs(paths: list[Path]) -> dict[str, tuple[Path, StudyParams]]:
    """Every pair file validated and checked (:func:`kdlib.runs.runner.load`), by file stem."""
    if not paths:
        raise KdlibError("no pair files given; valid: one or more study params files, e.g. params/pairs/*.yaml")
    pairs: dict[str, tuple[Path, StudyParams]] = {}
    for path in paths:
        if path.stem in pairs:
            raise KdlibError(f"pair name {path.stem!r} is given twice ({pairs[path.stem][0]} and {path}); valid: distinct file names")
        pairs[path.stem] = (path, runner.load(path))
    return pairs


def _error_line(log: Path, returncode: int) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.startswith("error: ")]
    return lines[-1][len("error: "):] if lines else f"exit status {returncode} (see {log})"


def run_pair(name: str, path: Path, study: StudyParams, logs: Path, force: bool, notebooks: Optional[str],
             torchrun: int = 1) -> PairResult:
    """One pair in its own process (its training in ``torchrun`` processes when > 1, :mod:`kdlib.runs.launch`);
    its output into ``logs/<name>.log``."""
    folder = StudyFolder.for_study(study).root
    command = [sys.executable, "-m", "kdlib.runs", "run", str(path.resolve()), "--quiet"]
    command += ["--force"] if force else []
    command += ["--notebooks", str(notebooks)] if notebooks else []
    command += ["--torchrun", str(torchrun)] if torchrun > 1 else []
    log = logs / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return PairResult(name, path, folder, "ok", seconds, log)
    return PairResult(name, path, folder, "failed", seconds, log, _error_line(log, proc.returncode))


def pair_rows(pair: PairResult, study: StudyParams) -> list[dict]:
    """The summary rows of one pair (see the module docstring)."""
    head = {"pair": pair.name, "status": pair.status, "run_folder": str(pair.folder)}
    if pair.status != "ok":
        return [{**head, "error": pair.error}]
    folder = StudyFolder(pair.folder)
    summary, claims = steps.read_table(folder, "summary"), steps.read_table(folder, "claims")
    teacher = study.teachers[0] if study.teachers else None
    layer, thr = study.dissect.layers[-1], study.dissect.iou_threshold
    acc = present.accuracy(summary, ["test_acc"]).set_index("run")
    det = present.null_and_trained(summary, layer, [thr]).set_index("run")
    rows = []
    for student in study.students:
        verdicts = [] if claims.empty else [f"{c['claim']}: {c['verdict']}" for c in claims.to_dict("records") if c["a"] == student.name]
        rows.append({**head, "teacher": teacher.name if teacher else None, "teacher_model": teacher.model if teacher else None,
                     "teacher_test_acc": acc.loc[teacher.name, "mean"] if teacher else None,
                     "student": student.name, "student_model": student.model,
                     **{f"test_acc_{k}": acc.loc[student.name, k] for k in present.ESTIMATE},
                     "layer": layer, "iou_threshold": thr,
                     **{f"detectors_{k}": det.loc[student.name, k] for k in ("mean", "low", "high")},
                     "claims": "; ".join(verdicts)})
    return rows


def _claims(pair: PairResult) -> Optional[pd.DataFrame]:
    if pair.status != "ok":
        return None
    claims = steps.read_table(StudyFolder(pair.folder), "claims")
    return None if claims.empty else claims.assign(pair=pair.name)


def make_worlds(studies: list[StudyParams], quiet: bool = False) -> list[Path]:
    """Every distinct generated world of ``studies``, made if absent (:func:`kdlib.runs.steps.world`)."""
    made: dict[Path, StudyParams] = {}
    for study in studies:
        made.setdefault(study.world_dir(), study)
    worlds = [steps.world(study, StudyFolder.for_study(study)) for study in made.values()]
    if not quiet:
        for world in worlds:
            print(f"world: {world or 'real data'}", flush=True)
    return [w for w in worlds if w is not None]


def run_batch(paths: list[Path], jobs: int = 1, out: Optional[str | Path] = None, force: bool = False,
              quiet: bool = False, notebooks: Optional[str] = None, torchrun: Optional[int | str] = None) -> BatchResult:
    """Run every pair (see the module docstring); the batch folder, its summary and each pair's result.
    ``torchrun``: each pair's training step in that many data-parallel processes (default 1)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise KdlibError(f"--jobs = {jobs!r} is not valid; valid: an integer >= 1")
    processes = 1 if torchrun is None else torchrun_processes(str(torchrun))
    pairs = load_pairs(paths)
    studies = {name: study for name, (_, study) in pairs.items()}
    root = Path(out) if out is not None else Path(next(iter(studies.values())).output_root)
    folder = root / batch_id(studies)
    results: dict[str, PairResult] = {}
    with folder_lock(folder, "batch folder"):
        (folder / "logs").mkdir(exist_ok=True)
        make_worlds(list(studies.values()), quiet)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_pair, n, p, s, folder / "logs", force, notebooks, processes): n
                       for n, (p, s) in pairs.items()}
            for future in as_completed(futures):
                pair = future.result()
                results[pair.name] = pair
                if not quiet:
                    what = f"done in {pair.seconds:.0f} s ({pair.folder})" if pair.status == "ok" else f"failed: {pair.error}"
                    print(f"pair {pair.name}: {what}", flush=True)
        ordered = [results[n] for n in pairs]
        rows = [row for pair in ordered for row in pair_rows(pair, studies[pair.name])]
        steps.write_table(folder / "summary.csv", pd.DataFrame(rows))
        claims = [c for c in (_claims(p) for p in ordered) if c is not None]
        steps.write_table(folder / "claims.csv", pd.concat(claims, ignore_index=True) if claims else pd.DataFrame())
    return BatchResult(folder, folder / "summary.csv", ordered)
