"""The nbval pass of ``make test`` (``pytest tests notebooks --nbval ...``) starts from scratch.

When the whole ``notebooks/`` folder is collected with ``--nbval``, the tiny study's run folder and its
generated world are removed first (:func:`kdlib.runs.runner.fresh_start`), so the notebooks recompute
every number they print: a dissection or score cached by an earlier run would otherwise hide a change
in the code that computes it. A single notebook given alone runs on what is already there.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _collects_all_notebooks(args: list[str]) -> bool:
    folder = ROOT / "notebooks"
    return any(Path(arg.split("::")[0]).resolve() == folder for arg in args)


def pytest_sessionstart(session) -> None:
    option = session.config.option
    if (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)) and _collects_all_notebooks(session.config.args):
        from kdlib.runs.runner import fresh_start

        removed = fresh_start()
        print(f"nbval: fresh start, removed {len(removed)} paths of the tiny study")
