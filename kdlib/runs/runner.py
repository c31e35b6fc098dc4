"""The notebook runner: ``python -m kdlib.runs run PARAMS.yaml [--out DIR] [--force] [--quiet]``.

1. The params are validated and :func:`kdlib.runs.steps.check` runs before anything else.
2. The run folder (``<output_root>/<run id>``, or ``--out``) is locked (:mod:`kdlib.locks`); stale
   temporary files of a killed run are removed, ``done`` is cleared.
3. The notebooks run in order (:data:`NOTEBOOKS`) with :func:`kdlib.runs.notebooks.execute_notebook`
   into ``notebooks/<name>.ipynb`` of the run folder, each given exactly the parameters it declares
   (:data:`NOTEBOOK_PARAMETERS`, absolute paths). ``manifest.json`` records every notebook's status and
   wall time as it finishes. Each notebook calls the steps, which skip finished work: a re-run retrains
   and re-dissects nothing whose inputs are unchanged; it re-executes the notebooks (seconds each).
4. The executed ``07_report`` is rendered to ``report.html`` with nbconvert (outputs only, no code),
   atomically; ``failed`` from an earlier run is removed and ``done`` is written last.

**A failing notebook** stops the run: the one line of :class:`~kdlib.runs.notebooks.NotebookFailed`
(notebook, cell, error, where the executed notebook with its traceback is kept), a ``failed`` marker
in the run folder (:func:`kdlib.layout.write_failed`: notebook, message), its status in the manifest,
no ``done``, and exit status 1 from the command line.

**--force** redoes every step of this run folder: before the notebooks run it removes what the steps
and the runner wrote there (``runs/``, ``dissect/``, ``cache/``, ``tables/``, ``figures/``,
``notebooks/``, ``report.html``, ``manifest.json``, ``done``, ``failed``), so every network is retrained,
dissected and scored again. It keeps the generated world (shared by every study of that world, made
deterministically from its params; delete it, or ``python -m kdlib.data.world --force``, to remake it)
and anything else in the folder it did not write.

**Paths**: the params path on the command line is relative to the working folder; a relative
``data_root`` / ``output_root`` in it is relative to the project root, as in the notebooks
(:mod:`kdlib.runs.notebook`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from kdlib import atomic, layout
from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.locks import LOCK_NAME, folder_lock
from kdlib.params import StudyParams, load_study, to_dict
from kdlib.runs import steps
from kdlib.runs.manifest import Manifest
from kdlib.runs.notebook import project_root, resolve_study
from kdlib.runs.notebooks import NotebookFailed, execute_notebook

NOTEBOOKS = ("00_world", "01_teacher", "02_students", "03_dissection", "04_ls_vs_kd", "05_five_band", "06_diffroar",
             "07_report", "08_unit_browser")
REPORT_NOTEBOOK = "07_report"
FORCE_REMOVES = ("runs", "dissect", "sensitivity", "cache", "tables", "figures", "notebooks", layout.REPORT,
                 layout.MANIFEST, layout.DONE, layout.FAILED)


@dataclass(frozen=True)
class Parameter:
    """A parameter the runner passes: its name, the default a notebook declares (what JupyterLab and
    nbval run with), what it means, and the params field whose values it must take, if any."""

    name: str
    default: Any
    help: str
    field: Optional[str] = None


PARAMETERS = {p.name: p for p in (
    Parameter("params", "params/tiny.yaml", "the study params file (relative: to the project root)"),
    Parameter("run_folder", None, "the run folder; None: <output_root>/<run id>"),
    Parameter("network", None, "network whose dissection is browsed; None: the first student at the first seed"),
    Parameter("layer", None, "layer shown first; None: the first of dissect.layers", field="dissect.layers"),
)}
COMMON = ("params", "run_folder")
NOTEBOOK_PARAMETERS = {name: COMMON for name in NOTEBOOKS} | {"08_unit_browser": COMMON + ("network", "layer")}


def notebooks_folder() -> Path:
    return project_root() / "notebooks"


def load(params: str | Path) -> StudyParams:
    """The validated study, relative roots under the project root, checked by :func:`steps.check`."""
    study = resolve_study(load_study(params), project_root())
    steps.check(study)
    return study


def parameters_for(name: str, params: Path, folder: StudyFolder) -> dict[str, Any]:
    """What the runner passes to notebook ``name``: absolute params and run folder, other defaults."""
    given = {"params": str(Path(params).resolve()), "run_folder": str(folder.root.resolve())}
    return {p: given.get(p, PARAMETERS[p].default) for p in NOTEBOOK_PARAMETERS[name]}


def devices(study: StudyParams) -> dict[str, str]:
    """The device each computing section resolves to here (``auto``: CUDA when present)."""
    from kdlib.device import resolve_device

    return {section: str(resolve_device(getattr(study, section).device, f"{section}.device"))
            for section in ("train", "dissect", "metrics")}


def clear_for_force(folder: StudyFolder) -> list[str]:
    """Remove what the steps and the runner wrote in ``folder`` (:data:`FORCE_REMOVES`); the names removed."""
    removed = []
    for name in FORCE_REMOVES:
        path = layout.inside(folder.root, folder.root / name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def fresh_start(params: str | Path = PARAMETERS["params"].default) -> list[Path]:
    """Remove what the notebooks wrote for the study ``params`` (relative: to the project root) in its
    default run folder (:data:`FORCE_REMOVES`) and its generated world, so that the next run computes
    everything again; the paths removed. ``make notebooks`` and the nbval pass of ``make test`` start
    from here: a dissection or score cached by an earlier run would otherwise hide a change in the code
    that computes it. Real data (``data.broden``, ``data.imagefolder``) are never touched."""
    from kdlib.locks import lock_file
    from kdlib.runs.notebook import under_root

    root = project_root()
    study = resolve_study(load_study(under_root(params, root)), root)
    folder = StudyFolder.for_study(study)
    removed = []
    if folder.root.is_dir():
        with folder_lock(folder.root, "study folder", clean=False):
            removed += [folder.root / name for name in clear_for_force(folder)]
    world = study.world_dir()
    if (world / "manifest.json").is_file() and study.data.broden is None and study.data.imagefolder is None:
        with lock_file(world.parent / f".{world.name}.lock", "world folder", world):
            shutil.rmtree(world)
        removed.append(world)
    return removed


def render_report(executed: Path, target: Path) -> Path:
    """The executed report notebook as HTML (outputs only: no code cells, no prompts), written atomically."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(executed))
    atomic.write_text(target, body)
    return target


def run_notebooks(params: str | Path, out: Optional[str | Path] = None, force: bool = False, progress: bool = True,
                  source: Optional[Path] = None, echo: Callable[[str], None] = print) -> StudyFolder:
    """Run the study's notebooks into its run folder (see the module docstring); the folder."""
    params = Path(params)
    study = load(params)
    folder = StudyFolder.for_study(study, out)
    source = Path(source) if source is not None else notebooks_folder()
    with folder_lock(folder.root, "study folder", clean=False):
        atomic.remove_stale(folder.root, recursive=True, skip=lambda p: (p / LOCK_NAME).exists())
        if force:
            echo(f"--force: removed {', '.join(clear_for_force(folder)) or 'nothing'} in {folder.root}")
        layout.clear_done(folder.root)
        manifest = Manifest(folder=folder.root, params=to_dict(study), seed=study.seed, seeds=study.student_seeds,
                            devices=devices(study), data={"params_file": str(params.resolve())})
        manifest.save()
        for name in NOTEBOOKS:
            _run_one(name, source, params, folder, manifest, progress, echo)
        with manifest.step("report.html"):
            render_report(folder.notebook(REPORT_NOTEBOOK), folder.report)
        layout.clear_failed(folder.root)
        layout.write_done(folder.root, "study", run_id=folder.root.name, notebooks=list(NOTEBOOKS), report=layout.REPORT)
    return folder


def _run_one(name: str, source: Path, params: Path, folder: StudyFolder, manifest: Manifest, progress: bool,
             echo: Callable[[str], None]) -> None:
    """Execute one notebook and record it; on failure write ``failed`` and raise the executor's one line."""
    notebook = source / f"{name}.ipynb"
    if not notebook.is_file():
        raise KdlibError(f"notebook {str(notebook)!r} does not exist; valid: the project's notebooks/ ({', '.join(NOTEBOOKS)})")
    try:
        run = execute_notebook(notebook, folder.notebook(name), parameters_for(name, params, folder), progress=progress)
    except NotebookFailed as exc:
        manifest.record_notebook(name, exc.run.as_dict())
        layout.write_failed(folder.root, "study", notebook=name, message=str(exc), output=str(exc.run.output))
        raise
    manifest.record_notebook(name, run.as_dict())
    echo(f"{name}: {run.wall_s:.1f} s")
