"""A run's manifest: what made it (params, seeds, git commit and dirty flag, package versions, machine,
devices) and how long each step or notebook took.

Written as ``manifest.json`` in the run folder, atomically, and rewritten as steps and notebooks finish,
so an interrupted or failed run still tells what it had done. The ``done`` marker is separate and
written last. The notebook runner records each executed notebook under ``notebooks`` (status, wall
time, output path, error) and its wall time under ``timings_s`` too.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from kdlib import atomic

PACKAGES = ("kdlib", "torch", "torchvision", "numpy", "pillow", "pandas", "scipy", "torchdistill", "captum", "papermill",
            "nbconvert", "nbclient", "ipykernel", "matplotlib", "seaborn")


def git_commit(root: str | Path = ".") -> dict[str, Any]:
    """The checkout's commit and whether it had uncommitted changes to tracked files (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@dataclass
class Manifest:
    """Accumulates a run's record; :meth:`save` writes it atomically to ``folder/manifest.json``."""

    folder: Path
    params: dict[str, Any]
    seed: int
    seeds: list[int] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "seed": self.seed,
            "seeds": self.seeds,
            "git": git_commit(Path(__file__).resolve().parents[2]),
            "packages": package_versions(),
            "machine": machine(),
            "devices": self.devices,
            "command": sys.argv,
            "data": self.data,
            "steps_done": self.steps,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "notebooks": self.notebooks,
        }

    def save(self) -> None:
        atomic.write_text(Path(self.folder) / "manifest.json", json.dumps(self.record(), indent=1, sort_keys=True, default=str) + "\n")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step; on success record it and save the manifest."""
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.steps.append(name)
        self.save()

    def record_notebook(self, name: str, run: dict[str, Any]) -> None:
        """Record one executed notebook (``run``: :meth:`kdlib.runs.notebooks.NotebookRun.as_dict`) and save."""
        self.notebooks[name] = {"status": run["status"], "wall_s": round(float(run["wall_s"]), 3),
                                "output": run["output"], "error": run.get("error")}
        self.timings[name] = float(run["wall_s"])
        if run["status"] == "ok":
            self.steps.append(name)
        self.save()
