"""The training step under torchrun: ``python -m kdlib.runs run PAIR --torchrun N`` (and ``batch ...
--torchrun N``, which passes it to every pair) sets ``KDLIB_TORCHRUN=N`` for the notebooks' kernels, and
:func:`kdlib.runs.steps.train` then trains in ``N`` data-parallel processes on this machine::

    python -m torch.distributed.run --standalone --nproc_per_node N -m kdlib.train PARAMS --out RUN_FOLDER --quiet

(:mod:`kdlib.train.distributed`), waits for it and reads the finished runs from the folder. Unset or 1:
the step trains in the kernel's process, as before. Several machines are launched by hand with
``torchrun --nnodes`` (README, Scale-out), not by the runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from kdlib.errors import KdlibError
from kdlib.runs.notebook import project_root

ENV = "KDLIB_TORCHRUN"


def torchrun_processes(text: Optional[str] = None) -> int:
    """The processes the training step runs in (``KDLIB_TORCHRUN``, default 1); one line when not a count."""
    text = os.environ.get(ENV, "1") if text is None else text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024:
        raise KdlibError(f"{ENV} (--torchrun) = {text!r} is not valid; valid: a number of processes from 1 to 1024")
    return n


def torchrun_command(n: int, params: str | Path, folder: Path, names: Optional[list[str]] = None) -> list[str]:
    """The command that trains the runs ``names`` (default: all) of ``params`` into ``folder`` in ``n`` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "kdlib.train", str(params), "--out", str(folder), "--quiet"]
    for name in names or []:
        command += ["--run", name]
    return command


def train_under_torchrun(n: int, params: str | Path, folder: Path, names: Optional[list[str]] = None) -> None:
    """Run :func:`torchrun_command` in the project root (where relative ``data_root`` and ``output_root``
    point, as in the notebooks); one line (kdlib's error line, or the exit status) when it fails."""
    proc = subprocess.run(torchrun_command(n, params, folder, names), capture_output=True, text=True, cwd=project_root())
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        reason = errors[-1][len("error: "):] if errors else f"exit status {proc.returncode}: {proc.stderr.strip()[-300:]}"
        raise KdlibError(f"training under torchrun ({n} processes) failed: {reason}")
