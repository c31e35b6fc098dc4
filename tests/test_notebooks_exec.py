"""The strict papermill executor (kdlib.runs.notebooks) on throwaway notebooks written here, and the unit
browser notebook run headless (where it must degrade to its static strip)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from kdlib.errors import KdlibError  # noqa: E402
from kdlib.runs.notebooks import NotebookFailed, check_parameters, declared_parameters, execute_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path: Path, sources: list[str], parameters_at: list[int] = (0,)) -> Path:
    nb = new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    for i in parameters_at:
        nb.cells[i].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def good(tmp_path):
    return _notebook(
        tmp_path / "good.ipynb",
        ['scale = 2  # a number\nname = "x"', "import os, sys\nprint(sys.executable)\nprint(os.getcwd())", "print(name * scale)"],
    )


def _stream(nb, index: int) -> str:
    return "".join(o.get("text", "") for o in nb.cells[index].outputs if o.output_type == "stream")


@pytest.mark.slow
def test_a_good_notebook_runs_with_its_parameters(good, tmp_path):
    out = tmp_path / "runs" / "good.ipynb"
    run = execute_notebook(good, out, {"scale": 3, "name": "ab"}, progress=False)
    assert (run.status, run.output, run.parameters, run.error) == ("ok", out, {"scale": 3, "name": "ab"}, None)
    assert 0 < run.wall_s < 120
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]
    assert _stream(executed, 2).splitlines() == [sys.executable, str(good.resolve().parent)]  # this interpreter, the notebook's folder
    assert _stream(executed, 3) == "ababab\n"
    assert executed.metadata["papermill"]["output_path"] == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["good.ipynb"]  # no temporary file left beside it
    assert json.loads(json.dumps(run.as_dict()))["status"] == "ok"


def test_parameters_are_read_from_the_parameters_cell(good):
    declared = declared_parameters(good)
    assert list(declared) == ["scale", "name"]
    assert declared["scale"]["default"] == "2" and declared["scale"]["help"] == "a number"
    assert check_parameters(good, {"name": "y"}) == {"name": "y"}


@pytest.mark.parametrize(
    "parameters,match",
    [
        ({"scales": 3}, r"parameter 'scales' is not declared in good\.ipynb's parameters cell; valid: scale, name"),
        ([("scale", 3)], r"parameters = \[\('scale', 3\)\] is not valid; valid: a mapping"),
    ],
)
def test_an_unknown_parameter_is_refused_before_anything_runs(good, tmp_path, parameters, match):
    with pytest.raises(KdlibError, match=match) as info:
        execute_notebook(good, tmp_path / "out.ipynb", parameters, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.parametrize("tagged,found", [([], "no cell"), ([0, 1], r"cells \[0, 1\]")])
def test_exactly_one_parameters_cell(tmp_path, tagged, found):
    nb = _notebook(tmp_path / "nb.ipynb", ["a = 1", "b = 2", "print(a + b)"], parameters_at=tagged)
    with pytest.raises(KdlibError, match=f"notebook nb.ipynb has {found} tagged 'parameters'; valid: exactly one cell"):
        execute_notebook(nb, tmp_path / "out.ipynb", {}, progress=False)
    assert not (tmp_path / "out.ipynb").exists()


def test_a_missing_notebook_is_one_line(tmp_path):
    with pytest.raises(KdlibError, match="notebook .*nope.ipynb' does not exist"):
        execute_notebook(tmp_path / "nope.ipynb", tmp_path / "out.ipynb")


@pytest.mark.slow
def test_a_failing_cell_names_notebook_cell_and_error_and_keeps_the_output(tmp_path):
    source = _notebook(
        tmp_path / "fails.ipynb",
        ["limit = 1", "total = limit + 1", "raise ValueError(f'total {total} is over')  # cell 2, after the parameters\nprint('x')", "print('never')"],
    )
    out = tmp_path / "runs" / "fails.ipynb"
    out.parent.mkdir()
    out.write_text("stale")
    with pytest.raises(NotebookFailed) as info:
        execute_notebook(source, out, {"limit": 5}, progress=False)
    message = str(info.value)
    assert message == (
        "notebook fails.ipynb failed at cell 2 (\"raise ValueError(f'total {total} is over') # cell 2, after the parameters\"): "
        f"ValueError: total 6 is over; executed notebook kept at {out}"
    )
    assert isinstance(info.value, KdlibError)
    run = info.value.run
    assert (run.status, run.error, run.output) == ("failed", "ValueError: total 6 is over", out)
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ValueError" and any("total 6 is over" in line for line in errors[0].traceback)
    assert "never" not in json.dumps(executed.cells[-1].get("outputs", []))
    assert [p.name for p in out.parent.iterdir()] == ["fails.ipynb"]


@pytest.mark.slow
def test_the_kernels_own_stderr_stays_out_of_the_callers_and_its_last_words_name_a_death(tmp_path, capfd):
    """What the kernel's C libraries print to file descriptor 2 (a libzmq assertion as it dies under a
    full disk, say) is not the caller's stderr; when the kernel dies, its last line joins the message."""
    source = _notebook(
        tmp_path / "dies.ipynb",
        ["code = 3", "import os\nos.write(2, b'native noise\\n')", "os.write(2, b'Assertion failed: x (y.cpp:1)\\n')\nos._exit(code)"],
    )
    with pytest.raises(NotebookFailed) as info:
        execute_notebook(source, tmp_path / "runs" / "dies.ipynb", progress=False)
    message = str(info.value)
    assert message.startswith("notebook dies.ipynb failed at cell 2 (\"os.write(2, b'Assertion failed: x (y.cpp:1)\\\\n')\"): DeadKernelError"), message
    assert "(the kernel's last words: Assertion failed: x (y.cpp:1))" in message, message
    captured = capfd.readouterr()
    assert "native noise" not in captured.err and "Assertion failed" not in captured.err, captured.err


@pytest.mark.slow
def test_the_kernel_is_the_running_interpreter_whatever_kernelspecs_say(good, tmp_path, monkeypatch):
    """A user-level 'python3' kernelspec that points at a missing Python breaks plain papermill, not this."""
    import papermill

    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps({"argv": [str(tmp_path / "no-such-python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "elsewhere", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    with pytest.raises(FileNotFoundError):
        papermill.execute_notebook(str(good), str(tmp_path / "plain.ipynb"), progress_bar=False, start_timeout=20)
    run = execute_notebook(good, tmp_path / "ours.ipynb", progress=False)
    assert run.status == "ok"


@pytest.mark.slow
def test_the_unit_browser_notebook_run_headless_shows_the_static_strip(tmp_path, tiny_dissected):
    params, folder = tiny_dissected
    source = ROOT / "notebooks" / "08_unit_browser.ipynb"
    run = execute_notebook(source, tmp_path / "08.ipynb", {"params": str(params), "run_folder": str(folder), "network": "kd-s0"},
                           progress=False)
    executed = nbformat.read(run.output, as_version=4)
    last = executed.cells[-1]
    assert last.source == "viz.unit_browser(result, probe, layer=layer)"
    kinds = [sorted(o.get("data", {})) for o in last.outputs]
    assert kinds == [["image/png", "text/plain"], ["text/html", "text/plain"]]
    assert last.outputs[0].data["text/plain"].startswith("layer3: units 1, 2, 3, 4 of the 32")
    assert "kdlib-unit-label" not in json.dumps(executed)  # no widget was built: no caption in outputs or widget state
    shown = [o.data["text/plain"] for c in executed.cells for o in c.get("outputs", []) if o.get("data", {}).get("text/plain", "").startswith("DissectResult")]
    from kdlib.dissect import DissectResult

    assert shown == [repr(DissectResult.load(folder / "dissect" / "kd-s0"))], "the saved dissection of the network asked for"


@pytest.mark.slow
def test_the_unit_browser_refuses_a_network_the_study_lacks(tmp_path, tiny_dissected):
    params, folder = tiny_dissected
    with pytest.raises(NotebookFailed, match=r"network = 'kd-s7' is not a network of .*; valid: teacher, scratch-s0"):
        execute_notebook(ROOT / "notebooks" / "08_unit_browser.ipynb", tmp_path / "08.ipynb",
                         {"params": str(params), "run_folder": str(folder), "network": "kd-s7"}, progress=False)


@pytest.mark.slow
def test_execute_in_place_rewrites_an_unchanged_notebook_byte_for_byte(tmp_path):
    from kdlib.runs.notebooks import execute_in_place

    path = _notebook(tmp_path / "nb.ipynb", ["scale = 2", "import time\nprint(scale * 21)", "scale + 1"])
    execute_in_place(path)
    first = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    assert _stream(nb, 1) == "42\n" and nb.cells[2].outputs[0].data["text/plain"] == "3"
    assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    assert "papermill" not in nb.metadata and not any("execution" in c.metadata for c in nb.cells), "no timestamps"
    execute_in_place(path)
    assert path.read_bytes() == first


@pytest.mark.slow
def test_execute_in_place_leaves_a_failing_notebook_as_it_was(tmp_path):
    from kdlib.runs.notebooks import execute_in_place

    path = _notebook(tmp_path / "nb.ipynb", ["limit = 1", "raise KeyError('gone')"])
    before = path.read_bytes()
    with pytest.raises(NotebookFailed, match=r"notebook nb.ipynb failed at cell 1 \(\"raise KeyError\('gone'\)\"\): KeyError: 'gone'; .* left unchanged"):
        execute_in_place(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"]


def test_fresh_start_removes_the_studys_outputs_and_generated_world_only(tmp_path):
    from study_helpers import tiny_params

    from kdlib.layout import run_id
    from kdlib.params import load_study
    from kdlib.runs.runner import fresh_start

    path = tiny_params(tmp_path)
    folder = tmp_path / "outputs" / run_id(load_study(path))
    for name in ("runs/teacher/checkpoint.pt", "tables/a.csv", "done", "mine.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    world = tmp_path / "data" / "world-tiny-s0"
    world.mkdir(parents=True)
    (world / "manifest.json").write_text("{}")
    (tmp_path / "data" / "world-other-s0").mkdir()
    removed = fresh_start(path)
    assert removed == [folder / "runs", folder / "tables", folder / "done", world]
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == ["mine.txt"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith(".")) == ["world-other-s0"]
    assert fresh_start(path) == []
