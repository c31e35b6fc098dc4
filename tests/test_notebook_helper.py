"""kdlib.runs.notebook: the same study and folders whether a notebook runs in notebooks/ (papermill, nbval,
JupyterLab) or the runner passes absolute paths; fixed-format tables; progress bars swallowed."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from kdlib.errors import KdlibError
from kdlib.layout import run_id
from kdlib.params import load_study
from kdlib.runs import notebook

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("start", [ROOT, ROOT / "notebooks", ROOT / "kdlib" / "runs"])
def test_project_root_is_found_from_inside_the_checkout(start):
    assert notebook.project_root(start) == ROOT


def test_project_root_outside_any_checkout_is_the_one_kdlib_comes_from(tmp_path):
    assert notebook.project_root(tmp_path) == ROOT  # tmp_path holds no project; kdlib is imported from ROOT


def test_a_folder_with_the_markers_is_a_project(tmp_path):
    for name in ("params", "notebooks"):
        (tmp_path / name).mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    assert notebook.project_root(tmp_path / "notebooks") == tmp_path


def test_no_project_anywhere_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(notebook, "_is_project", lambda folder: False)
    with pytest.raises(KdlibError, match="no kdlib project at or above .*; valid: run from inside the checkout"):
        notebook.project_root(tmp_path)


@pytest.mark.parametrize("cwd", ["notebooks", "."])
def test_relative_paths_land_in_the_projects_data_and_outputs_from_any_working_folder(cwd, monkeypatch):
    monkeypatch.chdir(ROOT / cwd)
    study, folder = notebook.open_study("params/tiny.yaml")
    assert study.world_dir() == ROOT / "data" / "world-tiny-s0"
    assert folder.root == ROOT / "outputs" / run_id(load_study(ROOT / "params" / "tiny.yaml"))
    _, other = notebook.open_study("params/tiny.yaml", "outputs/elsewhere")
    assert other.root == ROOT / "outputs" / "elsewhere"


def test_absolute_paths_are_kept_and_the_run_id_does_not_change(tmp_path, monkeypatch):
    import yaml

    params = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    params.update(data_root=str(tmp_path / "d"), output_root="rel-out")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(ROOT / "notebooks")
    study, folder = notebook.open_study(str(path), str(tmp_path / "run"))
    assert study.data_root == str(tmp_path / "d") and study.output_root == str(ROOT / "rel-out")
    assert folder.root == tmp_path / "run"
    assert run_id(study) == run_id(load_study(ROOT / "params" / "tiny.yaml")), "roots are not part of the run id"


def test_open_study_fixes_one_torch_thread():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        notebook.open_study("params/tiny.yaml")
        assert torch.get_num_threads() == notebook.THREADS == 1
    finally:
        torch.set_num_threads(before)


def test_relative_prints_paths_inside_the_project_without_the_checkout(tmp_path):
    assert notebook.relative(ROOT / "outputs" / "x") == "outputs/x"
    assert notebook.relative(tmp_path / "y") == str(tmp_path / "y")


def test_tables_are_fixed_format_text():
    table = pd.DataFrame({"run": ["kd", "ls"], "mean": [1 / 3, 12345.678], "low": [np.nan, 0.000123456], "n": [1, 3]})
    assert notebook.format_table(table).splitlines() == [
        "run      mean       low  n",
        " kd    0.3333         -  1",
        " ls 1.235e+04 0.0001235  3",
    ]
    assert notebook.format_table(pd.DataFrame()) == "(no rows)"


def test_quietly_swallows_displays_and_stderr_but_not_prints(capsys):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    InteractiveShell.instance()  # displays go through a shell, as in a kernel (tqdm's widgets too)
    try:
        with notebook.quietly():
            print("kept")
            print("progress", file=sys.stderr)
            display("a widget")
    finally:
        InteractiveShell.clear_instance()
    out = capsys.readouterr()
    assert out.out == "kept\n" and out.err == ""


def test_describe_names_the_study_without_absolute_paths():
    study, folder = notebook.open_study("params/tiny.yaml")
    text = notebook.describe(study, folder)
    assert str(ROOT) not in text and "run folder outputs/tiny-" in text and "seeds 0, 1, 2" in text
