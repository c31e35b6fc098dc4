"""Run folders: the one place that names every file and folder kdlib writes, and reads and writes ``done``.

A study's run folder ``<output_root>/<run id>/`` (run id ``<params stem>-<8 hex digits of the params that
the trained networks depend on>``, so the same params always land in the same folder and params that
train other networks in another)::

    manifest.json               params, seeds, git commit, versions, machine, per-step wall times
    runs/<network>/             one training run per network (teachers by name, students <name>-s<seed>)
        params.yaml             the resolved params the run was made from
        checkpoint.pt           the latest completed epoch (atomic)
        checkpoint.next.pt      only while a stacked session saves: see kdlib.train.runfiles
        metrics.csv             one row per epoch
        done                    written last (see below)
    dissect/<network>/          one dissection per network (trained, or random-<model>[-s<seed>])
    cache/                      per-layer dissection cache (keyed by weights, data, settings)
    tables/<name>.csv           tables
    figures/<name>.png|svg      figures
    notebooks/<NN_name>.ipynb   executed notebooks
    report.html                 the executed report (07_report rendered by nbconvert, no code)
    done                        written last: the whole study finished
    failed                      a run stopped on a failing notebook (which, where, why); removed by
                                the next run that finishes
    .lock                       held while a process works in the folder (kdlib.locks)

``done`` is always JSON ``{"kind": ..., "finished": <ISO time>, ...}``; :func:`read_done` returns it,
None when absent, and one line when the file is not such a record. ``failed`` is the same kind of record
(:func:`write_failed`, :func:`read_failed`, :func:`clear_failed`). Every name that becomes a path is
a plain name (:func:`kdlib.params.check_plain_name`), and :func:`inside` checks that a path lies under
its root, so nothing a params file or a command line says can write outside the output folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kdlib import atomic
from kdlib.digest import json_digest
from kdlib.errors import KdlibError
from kdlib.params import StudyParams, check_plain_name, to_dict

DONE = "done"
FAILED = "failed"
LOCK = ".lock"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_NEXT = "checkpoint.next.pt"  # a stack's next checkpoint, before every network of the stack has one
METRICS_CSV = "metrics.csv"
PARAMS_YAML = "params.yaml"
REPORT = "report.html"

# The run id covers what the trained networks depend on. Dissection, metrics and report settings and
# the places data and outputs go are left out: changing them reruns only their own (keyed) steps in the
# same folder instead of retraining every network in a new one.
RUN_ID_SECTIONS = ("seed", "seeds", "world", "data", "train", "teachers", "students")


def run_id(study: StudyParams) -> str:
    """``<params file stem>-<8 hex digits of RUN_ID_SECTIONS>`` (``study-...`` for params not from a file)."""
    stem = Path(study.source).stem if study.source.endswith((".yaml", ".yml")) else "study"
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in stem) or "study"
    content = {k: v for k, v in to_dict(study).items() if k in RUN_ID_SECTIONS}
    return f"{safe}-{json_digest(content, 8)}"


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` resolved, after checking that it lies under ``root`` (also resolved); else one line."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise KdlibError(f"{what} {str(path)!r} lies outside {str(root)!r}; valid: a plain name inside the output folder")
    return path_r


@dataclass(frozen=True)
class StudyFolder:
    """The run folder of one study: every path in it comes from here."""

    root: Path

    @classmethod
    def for_study(cls, study: StudyParams, out: str | os.PathLike | None = None) -> "StudyFolder":
        """``out`` when given (any folder), else ``<output_root>/<run id>``; one line when it is a file."""
        root = Path(out) if out is not None else Path(study.output_root) / run_id(study)
        if root.exists() and not root.is_dir():
            raise KdlibError(f"run folder {str(root)!r} is a file; valid: a folder (or a path that does not exist)")
        return cls(root)

    def _under(self, *parts: str) -> Path:
        for part in parts:
            check_plain_name(part, "name")
        return inside(self.root, self.root.joinpath(*parts)) if parts else self.root

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, key: str) -> Path:
        """A training run's folder: ``runs/<key>``."""
        return self._under("runs", key)

    def dissection(self, network: str) -> Path:
        return self._under("dissect", network)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def table(self, name: str) -> Path:
        return self._under("tables", f"{name}.csv")

    def figure(self, name: str, ext: str = "png") -> Path:
        return self._under("figures", f"{name}.{ext}")

    def notebook(self, name: str) -> Path:
        return self._under("notebooks", f"{name}.ipynb")

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def failed(self) -> Path:
        return self.root / FAILED


def _write_marker(path: Path, kind: str, record: dict[str, Any]) -> Path:
    body = {"kind": kind, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
    atomic.write_text(path, json.dumps(body, indent=1, sort_keys=True, default=str) + "\n")
    return path


def write_done(folder: str | os.PathLike, kind: str, **record: Any) -> Path:
    """Write ``folder/done`` (atomically, last): ``{"kind": kind, "finished": <ISO time>, **record}``."""
    return _write_marker(Path(folder) / DONE, kind, record)


def write_failed(folder: str | os.PathLike, kind: str, **record: Any) -> Path:
    """Write ``folder/failed`` (atomically): the same record as :func:`write_done`, saying what stopped."""
    return _write_marker(Path(folder) / FAILED, kind, record)


def read_done(folder: str | os.PathLike, kind: Optional[str] = None) -> Optional[dict[str, Any]]:
    """``folder/done`` as written by :func:`write_done`, or None when there is none.

    A ``done`` that is not such a record (garbage, a folder, another kind) is one line: kdlib never
    guesses whether work it cannot read back was finished."""
    return _read_marker(Path(folder) / DONE, kind, "done")


def read_failed(folder: str | os.PathLike, kind: Optional[str] = None) -> Optional[dict[str, Any]]:
    """``folder/failed`` as written by :func:`write_failed`, or None when there is none."""
    return _read_marker(Path(folder) / FAILED, kind, "failed")


def _read_marker(path: Path, kind: Optional[str], what: str) -> Optional[dict[str, Any]]:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdlibError(
            f"{path} cannot be read as a {what} marker ({type(exc).__name__}); valid: a file written by kdlib, "
            "or none (delete it to redo the step)"
        ) from None
    if not isinstance(record, dict) or "kind" not in record or (kind is not None and record["kind"] != kind):
        want = f"a {kind!r} {what} marker" if kind else f"a kdlib {what} marker"
        raise KdlibError(f"{path} is not {want}; valid: a file written by kdlib, or none (delete it to redo the step)")
    return record


def clear_done(folder: str | os.PathLike) -> None:
    """Remove ``folder/done`` before a step rewrites the folder's contents."""
    _clear_marker(Path(folder) / DONE, "done")


def clear_failed(folder: str | os.PathLike) -> None:
    """Remove ``folder/failed`` (a run that finishes clears an earlier failure)."""
    _clear_marker(Path(folder) / FAILED, "failed")


def _clear_marker(path: Path, what: str) -> None:
    if path.is_dir():
        raise KdlibError(f"{path} is a folder; valid: a {what} file or none (remove the folder)")
    path.unlink(missing_ok=True)
