"""The papermill runner (``python -m kdlib.runs run``) on the tiny profile: every notebook executed into the
run folder, a failing notebook stopping the run, a re-run recomputing nothing, ``--force`` removing what
the steps computed.

One module fixture drives the sequence, each command a real subprocess: (1) the notebooks into a folder
an earlier failure left; (2) the same command again; (3) ``--force`` with a copy of the notebooks whose
``01_teacher`` fails. Each test reads what one of them left. The study is params/tiny.yaml at one seed
(the nbval pass of ``make test`` runs the committed notebooks at all three).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import tiny_params

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from kdlib import layout  # noqa: E402
from kdlib.errors import KdlibError  # noqa: E402
from kdlib.locks import folder_lock  # noqa: E402
from kdlib.runs import runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["world_grid", "world_probe", "training_teachers", "training_students", "detectors_layer3", "best_iou_layer3",
           "detectors_ci_layer3", "unique_concepts_ci_layer3", "five_band_hard", "five_band_soft", "diffroar",
           "gradient_alignment", "object_centricity", "object_centricity_units", "class_similarity", "report_accuracy",
           "report_detectors", "report_unique_concepts", "report_best_iou", "report_five_band", "report_diffroar",
           "report_gradient_alignment", "report_object_centricity", "report_class_similarity"]
TABLES = ["accuracy", "detectors", "metrics", "observations", "summary", "differences", "claims"]
FAILING = "raise ValueError('the teacher broke')"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OMP_NUM_THREADS": "1"}


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlib.runs", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=_env())


def _failing_copy(target: Path) -> Path:
    shutil.copytree(ROOT / "notebooks", target)
    path = target / "01_teacher.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell(FAILING))
    nbformat.write(nb, path)
    return target


def _snapshot(folder: Path) -> dict:
    """mtimes of what the steps computed (checkpoints, dissections, cached layers and measures)."""
    paths = [*folder.glob("runs/*/checkpoint.pt"), *folder.glob("dissect/*/dissect_*.pt"), *folder.glob("cache/*.pt"),
             *folder.glob("cache/metrics/*/*.json")]
    return {p: p.stat().st_mtime_ns for p in paths}


def _outputs(nb_path: Path) -> list:
    nb = nbformat.read(nb_path, as_version=4)
    return [[o.get("text") or o.get("data", {}).get("text/plain") for o in c.outputs] for c in nb.cells if c.cell_type == "code"]


def _first_run(folder: Path) -> dict:
    """What a finished run left that the later commands remove or rewrite."""
    injected, errors = {}, {}
    for name in runner.NOTEBOOKS:
        nb = nbformat.read(folder / "notebooks" / f"{name}.ipynb", as_version=4)
        injected[name] = [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        errors[name] = any(o.output_type == "error" for c in nb.cells for o in c.get("outputs", []))
    return {
        "injected": injected, "errors": errors, "html": (folder / "report.html").read_text(),
        "done": layout.read_done(folder, "study"), "failed_left": (folder / "failed").exists(),
        "sizes": {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()},
        "files": {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"},
        "manifest": json.loads((folder / "manifest.json").read_text()),
        "snapshot": _snapshot(folder),
        "outputs": {n: _outputs(folder / "notebooks" / f"{n}.ipynb") for n in runner.NOTEBOOKS},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1) a run over a folder an earlier failure left; (2) the same command again; (3) ``--force`` with a
    copy of the notebooks whose 01_teacher fails before training: what --force removed is gone (what the
    first run computed from nothing is what it would recompute) and the failure is one line."""
    tmp = tmp_path_factory.mktemp("runner")
    path = tiny_params(tmp, seeds=[0])
    folder = tmp / "outputs" / layout.run_id(runner.load(path))
    out = {"params": path, "folder": folder, "tmp": tmp}
    layout.write_failed(folder, "study", notebook="01_teacher", message="an earlier run failed", output="")
    out["first"] = _cli("run", path, "--quiet", cwd=tmp)
    out["first_run"] = _first_run(folder) if out["first"].returncode == 0 else None
    out["again"] = _cli("run", path, "--quiet", cwd=tmp)
    out["again_snapshot"] = _snapshot(folder)
    out["again_outputs"] = {n: _outputs(folder / "notebooks" / f"{n}.ipynb") for n in runner.NOTEBOOKS}
    (folder / "figures" / "stale.png").write_bytes(b"not ours any more")
    (folder / "mine.txt").write_text("the user's")
    out["world_stamp"] = (tmp / "data" / "world-tiny-s0" / "manifest.json").stat().st_mtime_ns
    out["failed"] = _cli("run", path, "--quiet", "--force", "--notebooks", _failing_copy(tmp / "broken"), cwd=tmp)
    out["failed_snapshot"] = _snapshot(folder)
    out["failed_marker"] = layout.read_failed(folder)
    out["failed_manifest"] = json.loads((folder / "manifest.json").read_text())
    out["failed_done"] = (folder / "done").exists()
    return out


@pytest.fixture(scope="module")
def first(runs):
    assert runs["first"].returncode == 0, runs["first"].stderr[-3000:]
    return runs["first_run"]


@pytest.mark.slow
def test_a_failing_notebook_stops_the_run_with_one_line_and_a_failed_marker(runs):
    proc, folder = runs["failed"], runs["folder"]
    assert proc.returncode == 1
    output = folder / "notebooks" / "01_teacher.ipynb"
    line = f"error: notebook 01_teacher.ipynb failed at cell 3 ({FAILING!r}): ValueError: the teacher broke; executed notebook kept at {output}"
    assert proc.stderr.strip().splitlines()[-1] == line
    assert not runs["failed_done"], "the finished run's done is gone"
    marker = runs["failed_marker"]
    assert marker["kind"] == "study" and marker["notebook"] == "01_teacher" and marker["message"] == line[len("error: "):]
    notebooks = runs["failed_manifest"]["notebooks"]
    assert list(notebooks) == ["00_world", "01_teacher"], "the run stopped at the failing notebook"
    assert notebooks["00_world"]["status"] == "ok" and notebooks["01_teacher"]["status"] == "failed"
    assert notebooks["01_teacher"]["error"] == "ValueError: the teacher broke"


@pytest.mark.slow
def test_a_run_executes_every_notebook_into_the_run_folder(runs, first):
    proc, folder = runs["first"], runs["folder"]
    assert proc.stdout.splitlines()[-2:] == [f"study done: {folder}", f"report: {folder / 'report.html'}"]
    for name in runner.NOTEBOOKS:
        injected = first["injected"][name]
        assert len(injected) == 1 and str(runs["params"]) in injected[0] and str(folder) in injected[0]
        assert not first["errors"][name], name
    for name in FIGURES:
        for ext in ("png", "svg"):
            assert first["sizes"].get(f"figures/{name}.{ext}", 0) > 1000, (name, ext)
    for name in TABLES:
        assert first["sizes"].get(f"tables/{name}.csv", 0) > 10, name
    assert sum(1 for p in first["snapshot"] if p.name == "checkpoint.pt") == 1 + 3
    assert "dissect/random-resnet8_w8-s0/dissect.json" in first["sizes"]


@pytest.mark.slow
def test_the_manifest_records_what_made_the_run_and_each_notebooks_time(first):
    manifest = first["manifest"]
    assert list(manifest["notebooks"]) == list(runner.NOTEBOOKS)
    assert all(n["status"] == "ok" and n["wall_s"] > 0 for n in manifest["notebooks"].values())
    assert set(runner.NOTEBOOKS) | {"report.html"} <= set(manifest["timings_s"])
    assert manifest["seeds"] == [0] and manifest["params"]["world"]["profile"] == "tiny"
    assert len(manifest["git"]["commit"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    assert manifest["packages"]["papermill"] and manifest["packages"]["torch"]
    assert set(manifest["devices"]) == {"train", "dissect", "metrics"} and manifest["devices"]["train"] in ("cpu", "cuda")


@pytest.mark.slow
def test_report_html_shows_outputs_without_code_and_done_is_written_last(runs, first):
    folder, html = runs["folder"], first["html"]
    assert "Claims and verdicts" in html and "Of the 9 claims judged" in html and "data:image/png;base64" in html
    assert "open_study(" not in html and "notebook.show(" not in html, "no code cells in the report"
    files = first["files"]
    assert files[folder / "done"] == max(files.values()), "done is the last file written"
    assert first["done"]["notebooks"] == list(runner.NOTEBOOKS) and first["done"]["run_id"] == folder.name
    assert not first["failed_left"], "the successful run removed the earlier failure"


@pytest.mark.slow
def test_a_rerun_recomputes_nothing_and_prints_the_same_numbers(runs, first):
    assert runs["again"].returncode == 0, runs["again"].stderr[-3000:]
    assert first["snapshot"] and runs["again_snapshot"] == first["snapshot"], "no network retrained, re-dissected or re-scored"
    assert runs["again_outputs"] == first["outputs"], "the notebooks print the same whether the steps ran or were read back"


@pytest.mark.slow
def test_force_removes_every_step_and_keeps_the_world_and_foreign_files(runs):
    folder = runs["folder"]
    assert runs["failed"].stdout.startswith("--force: removed runs, dissect, sensitivity, cache, tables, figures, notebooks, report.html, manifest.json, done")
    assert runs["failed_snapshot"] == {}, "no checkpoint, dissection, cached layer or measure survives --force"
    assert not (folder / "figures" / "stale.png").exists() and (folder / "mine.txt").read_text() == "the user's"
    assert not (folder / "report.html").exists()
    assert (runs["tmp"] / "data" / "world-tiny-s0" / "manifest.json").stat().st_mtime_ns == runs["world_stamp"]


def test_bad_params_are_one_line_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain: {epochs: 0}\n")
    proc = _cli("run", bad, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: train.epochs = 0 is out of range; valid: >= 1 and <= 10000"
    assert list(tmp_path.iterdir()) == [bad]


def test_a_folder_in_use_is_refused(tmp_path):
    path = tiny_params(tmp_path)
    out = tmp_path / "run"
    with folder_lock(out, "study folder", clean=False):
        proc = _cli("run", path, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2 and "error: study folder" in proc.stderr and "is in use by process" in proc.stderr
    assert not (out / "manifest.json").exists()


def test_clear_for_force_removes_only_what_kdlib_wrote(tmp_path):
    from kdlib.layout import StudyFolder

    folder = StudyFolder(tmp_path)
    for name in ("runs/a/x", "tables/t.csv", "report.html", "done", "failed", "notes/keep.txt", "keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert runner.clear_for_force(folder) == ["runs", "tables", "report.html", "done", "failed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "notes"]


def test_a_missing_notebook_is_one_line(tmp_path):
    with pytest.raises(KdlibError, match="notebook .*00_world.ipynb' does not exist; valid: the project's notebooks/"):
        runner.run_notebooks(ROOT / "params" / "tiny.yaml", tmp_path / "run", source=tmp_path, echo=lambda _: None)
