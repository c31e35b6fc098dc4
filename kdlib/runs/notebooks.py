"""Executing a parameterised notebook with papermill, strictly.

::

    from kdlib.runs.notebooks import execute_notebook
    run = execute_notebook("notebooks/03_dissection.ipynb", "outputs/r/03_dissection.ipynb", {"layers": ["layer4"]})
    run.wall_s, run.status, run.output

What papermill leaves loose, this makes strict:

- **Parameters.** The notebook must have exactly one cell tagged ``parameters``; every parameter passed
  must be declared there (read with papermill's own :func:`papermill.inspect_notebook`, the parser that
  also injects them). Anything else is refused before a kernel starts (papermill only logs a warning
  for an unknown parameter and runs anyway).
- **Failures.** A cell that raises (or a kernel that dies or times out) raises :class:`NotebookFailed`,
  a :class:`~kdlib.errors.KdlibError` whose one line names the notebook, the cell (its 0-based index in
  the source notebook and its first line) and the error. The executed notebook, traceback included, is
  kept at ``output``.
- **Atomic output.** Papermill writes the output notebook as cells finish; here it writes a temporary
  file beside ``output`` that is renamed onto ``output`` at the end (after success or failure), so a
  reader never sees a half-written notebook at ``output``.
- **The kernel.** Whatever kernel name the notebook's metadata says, the kernel is ipykernel started
  with the running interpreter (``sys.executable``). jupyter_client would look the name up among the
  installed kernelspecs, where a user-level ``python3`` spec can point at another Python; the venv's own
  spec says ``python`` and only works because jupyter_client swaps that word for ``sys.executable``.
  Starting the interpreter directly needs no kernelspec at all on a fresh machine. The kernel's own
  standard error (C-level output; Python's goes into the notebook) is kept out of the caller's: its
  last line joins the message when the kernel dies.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from kdlib.errors import KdlibError

PARAMETERS_TAG = "parameters"
_PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


@dataclass(frozen=True)
class NotebookRun:
    """What one execution did: ``status`` is ``"ok"`` or ``"failed"`` (then ``error`` says why)."""

    source: Path
    output: Path
    status: str
    wall_s: float
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for a manifest)."""
        return {**asdict(self), "source": str(self.source), "output": str(self.output)}


class NotebookFailed(KdlibError):
    """A notebook stopped on an error; :attr:`run` is its :class:`NotebookRun` (status ``"failed"``)."""

    def __init__(self, message: str, run: NotebookRun):
        super().__init__(message)
        self.run = run


# -- the kernel -----------------------------------------------------------------------------------


@functools.cache
def _interpreter_kernel_manager(stderr: int | None = None):
    """An AsyncKernelManager subclass whose kernel is ``sys.executable -m ipykernel_launcher``, its
    standard error going to file descriptor ``stderr`` (None: this process's)."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec

    class InterpreterKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                          "--IPKernelApp.log_level=ERROR"],  # no kernel start-up warnings on stderr
                    display_name=f"Python {sys.version_info[0]} ({sys.executable})",
                    language="python",
                )
            return self._kernel_spec

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if stderr is not None:
                kw["stderr"] = stderr
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return InterpreterKernelManager


def _last_line(log) -> str:
    """The last non-blank line of the binary file ``log``, read from its start."""
    log.flush()
    log.seek(0)
    lines = [line for line in log.read()[-4000:].decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _check_kernel_available() -> None:
    for module in ("papermill", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            raise KdlibError(f"{module} is not installed in {sys.executable}; valid: pip install -e '.[notebooks]'")


# -- parameters -----------------------------------------------------------------------------------


def _read(path: Path):
    import nbformat

    if not path.is_file():
        raise KdlibError(f"notebook {str(path)!r} does not exist; valid: a path to an .ipynb file")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types for a broken file
        raise KdlibError(f"notebook {path} cannot be read ({exc.__class__.__name__}); valid: a Jupyter notebook (nbformat 4)") from None


def declared_parameters(source: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The parameters the notebook's one ``parameters`` cell declares, as :func:`papermill.inspect_notebook`
    reads them (name -> {name, inferred_type_name, default, help}); refuses zero or several such cells."""
    import papermill

    path = Path(source)
    nb = _read(path)
    tagged = [i for i, cell in enumerate(nb.cells) if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        where = f"cells {tagged}" if tagged else "no cell"
        raise KdlibError(f"notebook {path.name} has {where} tagged {PARAMETERS_TAG!r}; valid: exactly one cell tagged {PARAMETERS_TAG!r}")
    return papermill.inspect_notebook(str(path))


def check_parameters(source: str | os.PathLike, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` as a dict if every name is declared in the notebook's ``parameters`` cell."""
    if not isinstance(parameters, Mapping) or not all(isinstance(k, str) for k in parameters):
        raise KdlibError(f"parameters = {parameters!r} is not valid; valid: a mapping from parameter name to value")
    declared = declared_parameters(source)
    unknown = [name for name in parameters if name not in declared]
    if unknown:
        raise KdlibError(
            f"parameter {unknown[0]!r} is not declared in {Path(source).name}'s parameters cell; valid: {', '.join(declared) or 'none'}"
        )
    return dict(parameters)


# -- failures -------------------------------------------------------------------------------------


def _failed_cell(nb) -> tuple[int, str] | None:
    """(0-based index in the source notebook, first source line) of the cell that failed in an executed
    notebook: the first with an error output, else the one papermill marked as raising or left running,
    else the first that started and never had a reply (the kernel died in it)."""
    cells = [c for c in nb.cells if not _PAPERMILL_TAGS & set(c.get("metadata", {}).get("tags", []))]
    for test in (
        lambda c: any(o.get("output_type") == "error" for o in c.get("outputs", [])),
        lambda c: c.get("metadata", {}).get("papermill", {}).get("exception") is True,
        lambda c: c.get("metadata", {}).get("papermill", {}).get("status") == "running",
        _never_replied,
    ):
        for index, cell in enumerate(cells):
            if test(cell):
                lines = cell.source.strip().splitlines()
                return index, (lines[0] if lines else "")
    return None


def _never_replied(cell) -> bool:
    """A code cell papermill ran (status "completed") whose execute reply never came: where a kernel died."""
    ran = cell.get("metadata", {}).get("papermill", {}).get("status") == "completed"
    return cell.get("cell_type") == "code" and bool(cell.source.strip()) and ran and \
        "shell.execute_reply" not in cell.get("metadata", {}).get("execution", {})


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure_message(source: Path, output: Path | None, error: str) -> str:
    nb = _read(output) if output is not None else None
    cell = _failed_cell(nb) if nb is not None else None
    where = f"cell {cell[0]} ({_one_line(cell[1], 80)!r})" if cell else "an unknown cell"
    kept = f"; executed notebook kept at {output}" if nb is not None else ""
    return f"notebook {source.name} failed at {where}: {_one_line(error)}{kept}"


# -- execution ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` (no braces in its name: papermill formats paths with the
    parameters); removed afterwards unless it was renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".papermill-", suffix=".ipynb", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _settle(tmp: Path, output: Path) -> bool:
    """Record the final path in the notebook's papermill metadata and rename it onto ``output``; False
    when papermill wrote nothing (it failed before the first save)."""
    import nbformat

    if not tmp.is_file() or not tmp.stat().st_size:
        return False
    nb = nbformat.read(tmp, as_version=4)
    nb.metadata.setdefault("papermill", {})["output_path"] = str(output)
    nbformat.write(nb, tmp)
    os.replace(tmp, output)
    return True


def execute_notebook(
    source: str | os.PathLike,
    output: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    start_timeout: float = 60,
    progress: bool = True,
) -> NotebookRun:
    """Run ``source`` with ``parameters`` into ``output`` (see the module docstring for what is checked).

    ``cwd``: the kernel's working folder (default: the source notebook's folder, as in JupyterLab and
    nbval); ``timeout``: seconds per cell (None: no limit); ``progress``: papermill's progress bar.
    Returns a :class:`NotebookRun`; raises :class:`NotebookFailed` when a cell fails.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    _check_kernel_available()
    source, output = Path(source), Path(output)
    params = check_parameters(source, parameters or {})
    cwd = source.resolve().parent if cwd is None else Path(cwd)
    start = time.perf_counter()
    # the kernel's own stderr (what its C libraries print, e.g. a libzmq assertion as it dies) goes to a
    # temporary file, so the caller's stderr keeps its one line; its last line names a death
    with _temporary_beside(output) as tmp, tempfile.TemporaryFile(prefix="kdlib-kernel-") as log:
        try:
            papermill.execute_notebook(
                str(source), str(tmp), parameters=params, cwd=str(cwd), progress_bar=progress,
                start_timeout=start_timeout, execution_timeout=timeout,
                kernel_manager_class=_interpreter_kernel_manager(log.fileno()),
            )
        except (papermill.PapermillExecutionError, CellTimeoutError, DeadKernelError) as exc:
            error = f"{exc.ename}: {exc.evalue}" if isinstance(exc, papermill.PapermillExecutionError) else f"{type(exc).__name__}: {exc}"
            last_words = _last_line(log) if isinstance(exc, DeadKernelError) else ""
            if last_words:
                error += f" (the kernel's last words: {last_words})"
            kept = _settle(tmp, output)
            run = NotebookRun(source, output, "failed", time.perf_counter() - start, params, _one_line(error))
            raise NotebookFailed(_failure_message(source, output if kept else None, error), run) from None
        _settle(tmp, output)
    return NotebookRun(source, output, "ok", time.perf_counter() - start, params)


def execute_in_place(path: str | os.PathLike, timeout: float | None = None, start_timeout: float = 60) -> float:
    """Re-execute notebook ``path`` in place with the defaults of its ``parameters`` cell and return its
    wall time in seconds: how the committed outputs are made (``make notebooks``).

    As ``jupyter nbconvert --execute --inplace`` does, with three differences: the kernel is the running
    interpreter's (see the module docstring), no timing or papermill metadata and no widget state are
    stored (so an unchanged notebook is rewritten byte for byte), and the file is replaced atomically
    only when every cell ran: a failing cell raises :class:`NotebookFailed` and leaves the file as it
    was. The kernel's working folder is the notebook's folder, as in nbval and JupyterLab.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from kdlib.atomic import write_text

    _check_kernel_available()
    path = Path(path)
    nb = _read(path)
    declared_parameters(path)  # exactly one parameters cell
    client = NotebookClient(nb, timeout=timeout, startup_timeout=start_timeout, record_timing=False,
                            store_widget_state=False, kernel_manager_class=_interpreter_kernel_manager(),
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        error = f"{exc.ename}: {exc.evalue}" if isinstance(exc, CellExecutionError) else f"{type(exc).__name__}: {exc}"
        cell = _failed_cell(nb)
        where = f"cell {cell[0]} ({_one_line(cell[1], 80)!r})" if cell else "an unknown cell"
        run = NotebookRun(path, path, "failed", time.perf_counter() - start, {}, _one_line(error))
        raise NotebookFailed(f"notebook {path.name} failed at {where}: {_one_line(error)}; {path} left unchanged", run) from None
    text = nbformat.writes(nb)
    write_text(path, text if text.endswith("\n") else text + "\n")
    return time.perf_counter() - start
