"""What the cells of every notebook call: the study and its run folder, found the same way whoever runs it.

::

    from kdlib.runs import notebook
    study, folder = notebook.open_study(params, run_folder)   # the first cell after the parameters
    notebook.show(table)                                       # a table as fixed-format text (what nbval compares)
    notebook.show_figure(fig, folder, "detectors_ci", table)  # saved as PNG + SVG, shown, its numbers printed

**Paths.** The runner (papermill) and nbval start a notebook's kernel in ``notebooks/``, JupyterLab in
the folder of the notebook, and a relative path in a params file must land in the project's ``data/``
and ``outputs/`` all the same. So every relative path a notebook meets is taken relative to the
*project root* (:func:`project_root`: the checkout holding ``pyproject.toml``, ``params/`` and
``notebooks/``): the ``params`` and ``run_folder`` parameters, and the params file's ``data_root`` and
``output_root``. The runner resolves them the same way (:func:`resolve_study`) and passes absolute
paths. Printed paths are relative to the project root, so no output depends on where the checkout is.

**Determinism.** :func:`open_study` fixes torch to one thread in the kernel: dissection and the measures
sum floats in an order that depends on the thread count, and nbval compares the printed numbers.
Tables are printed as text with four significant digits (:func:`format_table`), never as HTML whose
markup changes with the pandas version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.params import StudyParams, load_study

MARKERS = ("pyproject.toml", "params", "notebooks")
DIGITS = 4
THREADS = 1


def _is_project(folder: Path) -> bool:
    return all((folder / m).exists() for m in MARKERS)


def project_root(start: Optional[str | os.PathLike] = None) -> Path:
    """The project checkout: the nearest folder at or above ``start`` (default: the working folder) that
    holds ``pyproject.toml``, ``params/`` and ``notebooks/``; else the checkout kdlib itself is imported
    from; else one line."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_project(folder):
            return folder
    package_checkout = Path(__file__).resolve().parents[2]
    if _is_project(package_checkout):
        return package_checkout
    raise KdlibError(
        f"no kdlib project at or above {str(here)!r} (nor where kdlib is imported from); "
        "valid: run from inside the checkout (a folder with pyproject.toml, params/ and notebooks/)"
    )


def under_root(path: str | os.PathLike, root: Path) -> Path:
    """``path`` itself when absolute, else ``root / path``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def resolve_study(study: StudyParams, root: Path) -> StudyParams:
    """``study`` with a relative ``data_root`` / ``output_root`` made absolute under ``root`` (neither
    enters the run id, so the run folder's name does not change)."""
    return dataclasses.replace(
        study, data_root=str(under_root(study.data_root, root)), output_root=str(under_root(study.output_root, root))
    )


def open_study(params: str | os.PathLike, run_folder: Optional[str | os.PathLike] = None) -> tuple[StudyParams, StudyFolder]:
    """The validated study of the params file ``params`` and its run folder (``run_folder``, default
    ``<output_root>/<run id>``), every relative path under the project root; torch at one thread."""
    import torch

    root = project_root()
    study = resolve_study(load_study(under_root(params, root)), root)
    folder = StudyFolder.for_study(study, under_root(run_folder, root) if run_folder is not None else None)
    torch.set_num_threads(THREADS)
    return study, folder


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Swallow what the block displays and writes to stderr (progress bars: tqdm draws widgets in a
    kernel, with random model ids, and only when there is work to do, so a cell's output would depend
    on whether the work was already done). Printed output still shows."""
    from IPython.utils.capture import capture_output

    with capture_output(stdout=False, stderr=True, display=True):
        yield


def relative(path: str | os.PathLike) -> str:
    """``path`` relative to the project root when it lies inside it (for printing), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(project_root()))
    except (ValueError, KdlibError):
        return str(path)


def describe(study: StudyParams, folder: StudyFolder) -> str:
    """One paragraph: the params file, the run folder, the world, seeds and networks."""
    teachers = ", ".join(f"{r.name} ({r.model})" for r in study.teachers) or "none"
    students = ", ".join(f"{r.name} ({r.model})" for r in study.students) or "none"
    seeds = ", ".join(str(s) for s in study.student_seeds)
    return (f"params {Path(study.source).name}; run folder {relative(folder.root)}; world {relative(study.world_dir())}\n"
            f"teachers: {teachers}\nstudents: {students}; seeds {seeds}\n"
            f"dissected layers: {', '.join(study.dissect.layers)}; IoU threshold {study.dissect.iou_threshold:g}")


def format_table(table: pd.DataFrame, digits: int = DIGITS) -> str:
    """Fixed-format text of ``table``: no index, floats with ``digits`` significant digits, NaN as ``-``."""
    if table.empty:
        return "(no rows)"
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.{digits}g}")


def show(table: pd.DataFrame, digits: int = DIGITS) -> None:
    """Print :func:`format_table` (text output: what nbval compares)."""
    print(format_table(table, digits))


def show_markdown(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_figure(fig, folder: StudyFolder, name: str, table: Optional[pd.DataFrame] = None) -> None:
    """Save ``fig`` as ``figures/<name>.png`` and ``.svg`` (:func:`kdlib.runs.steps.save_figure`), show
    the saved PNG, then print ``table``, the numbers the figure plots (nbval compares no image)."""
    from IPython.display import Image, display

    from kdlib.runs.steps import save_figure

    save_figure(fig, folder, name)
    display(Image(data=folder.figure(name, "png").read_bytes()))
    if table is not None:
        show(table)
