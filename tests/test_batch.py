"""The batch of teacher/student pairs (``python -m kdlib.runs batch``): every pair file checked first, one
process per pair, a failing pair reported while the others go on, a summary across pairs.

The pairs are params/tiny.yaml at one seed with a narrower teacher (``tiny_narrow``: it runs through) and
a wider one whose probe set path does not exist (``tiny_broken``: it fails in ``03_dissection``), run two
at a time. The shipped pairs (params/pairs/*.yaml, on the default world) are only validated here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_helpers import tiny_params

pytest.importorskip("papermill")

from kdlib.runs import batch, runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _pair(tmp: Path, name: str, teacher: str, **extra) -> Path:
    teachers = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())["teachers"]
    teachers[0]["model"] = teacher
    return tiny_params(tmp, f"pairs/{name}", seeds=[0], teachers=teachers, **extra)


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdlib.runs", "batch", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    narrow = _pair(tmp, "tiny_narrow", "resnet14_w4")
    broken = _pair(tmp, "tiny_broken", "resnet14_w16", data={"broden": str(tmp / "no-probe-set")})
    proc = _cli(narrow, broken, "--jobs", "2", cwd=tmp)
    studies = {p.stem: runner.load(p) for p in (narrow, broken)}
    return proc, tmp / "outputs" / batch.batch_id(studies), studies


@pytest.mark.slow
def test_a_failing_pair_is_reported_and_the_others_go_on(done):
    proc, folder, _ = done
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("pair tiny_narrow: done in ") for line in lines)
    failed = [line for line in lines if line.startswith("pair tiny_broken: failed: ")]
    assert len(failed) == 1 and "notebook 03_dissection.ipynb failed at cell" in failed[0] and "no-probe-set" in failed[0]
    assert lines[-1] == f"summary: {folder / 'summary.csv'}"
    assert proc.stderr.strip().splitlines()[-1] == "error: 1 of 2 pairs failed: tiny_broken"
    assert (folder / "logs" / "tiny_broken.log").read_text().strip().endswith(failed[0].split("failed: ", 1)[1])


@pytest.mark.slow
def test_the_summary_has_each_pairs_teacher_students_detectors_and_verdicts(done):
    _, folder, studies = done
    summary = pd.read_csv(folder / "summary.csv")
    ok = summary[summary.pair == "tiny_narrow"]
    assert ok["student"].tolist() == ["scratch", "ls", "kd"] and set(ok.status) == {"ok"}
    run = Path(ok["run_folder"].iloc[0])
    accuracy = pd.read_csv(run / "tables" / "accuracy.csv").set_index("network")
    assert ok["teacher_model"].iloc[0] == "resnet14_w4"
    assert ok["teacher_test_acc"].iloc[0] == pytest.approx(accuracy.loc["teacher", "test_acc"])
    kd = ok[ok.student == "kd"].iloc[0]
    assert kd["test_acc_mean"] == pytest.approx(accuracy.loc["kd-s0", "test_acc"]) and kd["test_acc_n"] == 1
    detectors = pd.read_csv(run / "tables" / "detectors.csv")
    total = detectors[(detectors.network == "kd-s0") & (detectors.layer == "layer3") & (detectors.category == "total")
                      & (detectors.iou_threshold == 0.04)]["detectors"].iloc[0]
    assert kd["detectors_mean"] == total and (kd["layer"], kd["iou_threshold"]) == ("layer3", 0.04)
    claims = pd.read_csv(run / "tables" / "claims.csv")
    about_kd = [f"{c}: {v}" for a, c, v in zip(claims.a, claims.claim, claims.verdict) if a == "kd"]
    assert kd["claims"] == "; ".join(about_kd) and "KD has more detectors than scratch: undecided" in kd["claims"]
    broken = summary[summary.pair == "tiny_broken"].iloc[0]
    assert broken["status"] == "failed" and "03_dissection" in broken["error"]
    long = pd.read_csv(folder / "claims.csv")
    assert set(long.pair) == {"tiny_narrow"} and len(long) == len(claims)


def test_every_pair_file_is_checked_before_any_pair_runs(tmp_path):
    good = _pair(tmp_path, "good", "resnet14_w4")
    bad = _pair(tmp_path, "bad", "resnet14_w4")
    bad.write_text(bad.read_text().replace("epochs: 2", "epochs: 0"))
    proc = _cli(good, bad, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {bad}: train.epochs = 0 is out of range; valid: >= 1 and <= 10000"
    assert not (tmp_path / "outputs").exists(), "nothing ran"


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_must_be_positive(tmp_path, jobs):
    proc = _cli(_pair(tmp_path, "good", "resnet14_w4"), "--jobs", jobs, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --jobs = {jobs} is not valid; valid: an integer >= 1"


def test_the_same_pair_twice_is_refused(tmp_path):
    path = _pair(tmp_path, "good", "resnet14_w4")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "good.yaml").write_text(path.read_text())
    proc = _cli(path, other / "good.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "pair name 'good' is given twice" in proc.stderr


def test_the_batch_folder_is_named_by_the_pairs_not_where_they_write(tmp_path):
    a = runner.load(_pair(tmp_path / "a", "p", "resnet14_w4"))
    b = runner.load(_pair(tmp_path / "b", "p", "resnet14_w4"))
    c = runner.load(_pair(tmp_path / "c", "p", "resnet14_w16"))
    assert batch.batch_id({"p": a}) == batch.batch_id({"p": b}) != batch.batch_id({"p": c})
    assert batch.batch_id({"p": a}).startswith("batch-") and len(batch.batch_id({"p": a})) == len("batch-") + 8


@pytest.mark.parametrize("path", sorted((ROOT / "params" / "pairs").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_pairs_are_valid_studies_of_one_teacher(path):
    study = runner.load(path)
    assert len(study.teachers) == 1 and [s.name for s in study.students] == ["scratch", "ls", "kd"]
    assert study.world.profile == "default" and study.student_seeds == [0, 1, 2] and study.report.claims
    default = runner.load(ROOT / "params" / "default.yaml")
    assert study.train == default.train and study.dissect == default.dissect, "kept in step with params/default.yaml"


def test_two_pairs_are_shipped_a_wider_and_a_narrower_teacher():
    models = {p.stem: runner.load(p).teachers[0].model for p in (ROOT / "params" / "pairs").glob("*.yaml")}
    assert models == {"wide_teacher": "resnet34_w32", "narrow_teacher": "resnet34_w8"}
