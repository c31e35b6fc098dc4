"""The committed notebooks against the runner and the params schema, and their shape: one markdown cell on
top saying what each reads and writes, exactly the runner's parameters, short cells, clean outputs."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from kdlib.errors import KdlibError  # noqa: E402
from kdlib.params import StudyParams, load_study  # noqa: E402
from kdlib.runs import runner  # noqa: E402
from kdlib.runs.notebook import project_root  # noqa: E402
from kdlib.runs.notebooks import declared_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
NAMES = list(runner.NOTEBOOKS)
MAX_CELL_LINES = 15


def _nb(name: str):
    return nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)


def _code_cells(name: str):
    return [c for c in _nb(name).cells if c.cell_type == "code"]


def schema_type(path: str):
    """The type of a dotted field of the params schema (``dissect.layers`` -> ``list[str]``)."""
    cls: typing.Any = StudyParams
    for part in path.split("."):
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        assert part in names, f"{path}: {part!r} is not a field of {cls.__name__}"
        cls = hints[part]
    return cls


def test_the_folder_holds_exactly_the_runners_notebooks_in_order():
    assert sorted(p.stem for p in FOLDER.glob("*.ipynb")) == NAMES == sorted(NAMES)
    assert runner.REPORT_NOTEBOOK in NAMES and runner.notebooks_folder() == FOLDER


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_declares_exactly_the_runners_parameters(name):
    declared = declared_parameters(FOLDER / f"{name}.ipynb")
    assert list(declared) == list(runner.NOTEBOOK_PARAMETERS[name])
    for pname, info in declared.items():
        spec = runner.PARAMETERS[pname]
        assert ast.literal_eval(info["default"]) == spec.default, (name, pname)
        assert info["help"] == spec.help, (name, pname)
    study = runner.load(project_root() / ast.literal_eval(declared["params"]["default"]))
    assert study.world.profile == "tiny", "committed outputs come from the tiny profile"


@pytest.mark.parametrize("name", sorted({p for ps in runner.NOTEBOOK_PARAMETERS.values() for p in ps}))
def test_a_parameter_that_names_a_params_field_matches_the_schema(name):
    spec = runner.PARAMETERS[name]
    if spec.field is None:
        return
    tp = schema_type(spec.field)
    element = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    assert spec.default is None or isinstance(spec.default, element)
    tiny = load_study(ROOT / "params" / "tiny.yaml")
    assert spec.default is None or spec.default in getattr(tiny.dissect, spec.field.split(".")[-1])


def test_schema_walk_fails_on_a_missing_field():
    with pytest.raises(AssertionError, match="'nope' is not a field of DissectParams"):
        schema_type("dissect.nope")


def test_the_runner_passes_each_notebook_only_what_it_declares(tmp_path):
    from kdlib.layout import StudyFolder

    folder = StudyFolder(tmp_path / "run")
    for name in NAMES:
        given = runner.parameters_for(name, ROOT / "params" / "tiny.yaml", folder)
        assert list(given) == list(declared_parameters(FOLDER / f"{name}.ipynb"))
        assert Path(given["params"]).is_absolute() and given["run_folder"] == str(folder.root.resolve())


@pytest.mark.parametrize("name", NAMES)
def test_top_cell_says_what_it_reads_and_writes(name):
    first = _nb(name).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {name[:2]} ")
    assert "**Reads:**" in first.source and "**Writes:**" in first.source
    assert sum(c.cell_type == "markdown" and "**Reads:**" in c.source for c in _nb(name).cells) == 1


@pytest.mark.parametrize("name", NAMES)
def test_cells_are_a_few_lines_and_call_kdlib(name):
    cells = _code_cells(name)
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(cells) if len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"{name}: cells {long} are longer than {MAX_CELL_LINES} lines; move them into kdlib"
    imports = {m.group(1) for c in cells for m in re.finditer(r"^(?:from|import) (\w+)", c.source, re.MULTILINE)}
    assert imports <= {"kdlib"}, f"{name} imports {imports - {'kdlib'}}: computation belongs in kdlib"
    assert "notebook.open_study(params, run_folder)" in cells[1].source, "the first cell after the parameters opens the study"


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_clean(name):
    nb = _nb(name)
    text = json.dumps(nb)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count == i for i, c in enumerate(cells, start=1)), "executed top to bottom, once"
    assert not any(o.output_type == "error" for c in cells for o in c.outputs)
    assert "application/vnd.jupyter.widget-view+json" not in text and "widgets" not in nb.metadata
    assert "papermill" not in nb.metadata and not any("execution" in c.metadata for c in cells), "no timestamps"
    assert str(ROOT) not in text and "/tmp/" not in text, "no absolute path in the outputs"
    assert not any(c.metadata.get("tags") and set(c.metadata["tags"]) & {"nbval-ignore-output", "nbval-skip"} for c in cells)


def test_an_undeclared_parameter_is_refused(tmp_path):
    from kdlib.runs.notebooks import execute_notebook

    with pytest.raises(KdlibError, match=r"parameter 'seed' is not declared in 00_world\.ipynb's parameters cell; valid: params, run_folder"):
        execute_notebook(FOLDER / "00_world.ipynb", tmp_path / "out.ipynb", {"seed": 1}, progress=False)
