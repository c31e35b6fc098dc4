"""The headless study driver (kdlib.runs.study.run_study, the steps in order without notebooks, which the
notebooks mirror) on the tiny params at one seed: every step, the run folder, re-runs. The command line
``python -m kdlib.runs run`` is the papermill runner (tests/test_runner.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from study_helpers import tiny_params

from kdlib.runs.manifest import git_commit

ROOT = Path(__file__).resolve().parents[1]


def _run(path: Path) -> Path:
    from kdlib.params import load_study
    from kdlib.runs.study import run_study

    return run_study(load_study(path), progress=False)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    path = tiny_params(tmp, seeds=[0])
    return path, _run(path), yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_study_writes_tables_figures_manifest_and_done(tiny_study):
    _, folder, params = tiny_study
    assert (folder / "done").is_file()
    acc = pd.read_csv(folder / "tables" / "accuracy.csv")
    names = [t["name"] for t in params["teachers"]] + [f"{s['name']}-s0" for s in params["students"]]
    assert acc.network.tolist() == names
    assert (acc.epoch == params["train"]["epochs"]).all(), "the last epoch's weights are used and said so"
    assert acc[["train_acc", "val_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    det = pd.read_csv(folder / "tables" / "detectors.csv")
    models = {t["model"] for t in params["teachers"]} | {s["model"] for s in params["students"]}
    assert set(det.network) == set(names) | {f"random-{m}-s0" for m in models}
    assert set(det.iou_threshold) == {0.04, 0.05}
    assert set(det.layer) == set(params["dissect"]["layers"])
    totals = det[det.category == "total"]
    assert (totals.detectors <= totals.units).all()
    for layer in params["dissect"]["layers"]:
        assert (folder / "figures" / f"detectors_{layer}.png").stat().st_size > 1000
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == params["seed"]
    assert manifest["params"]["world"]["profile"] == "tiny"
    assert manifest["packages"]["torch"] == torch.__version__.split("+")[0]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # the manifest names the commit of the kdlib that ran
        assert manifest["git"]["commit"] == head.stdout.strip() and isinstance(manifest["git"]["dirty"], bool)
    else:
        assert manifest["git"] == {"commit": None, "dirty": None}
    assert set(manifest["timings_s"]) == {"world", "train", "dissect", "tables", "figures", "metrics", "compare"}


@pytest.mark.slow
def test_rerun_reuses_finished_steps_and_gives_the_same_numbers(tiny_study):
    path, folder, _ = tiny_study
    before = {n: (folder / "tables" / n).read_text() for n in ("accuracy.csv", "detectors.csv")}
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "runs").rglob("checkpoint.pt")}
    stamps |= {p: p.stat().st_mtime_ns for p in (folder / "cache").glob("*")}
    assert stamps
    _run(path)
    after = {n: (folder / "tables" / n).read_text() for n in before}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "no network retrained, no layer re-dissected"


def test_bad_params_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain: {epochs: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "kdlib.runs", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: train.epochs = 0 is out of range; valid: >= 1 and <= 10000"


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(repo), "PATH": os.environ["PATH"]}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_head_and_dirty_only_for_tracked_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40 and set(head) <= set("0123456789abcdef")
    assert git_commit(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("new")
    assert git_commit(repo) == {"commit": head, "dirty": False}, "untracked files do not make a checkout dirty"
    (repo / "a.txt").write_text("two")
    assert git_commit(repo) == {"commit": head, "dirty": True}
    _git(repo, "commit", "-q", "-am", "second")
    assert git_commit(repo) == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False} != {"commit": head, "dirty": False}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) == {"commit": None, "dirty": None}


def _direct_dissections(study, folder: Path) -> dict:
    """Every network of the study dissected here, with kdlib.dissect.dissect and the study's settings, from
    what the study folder holds (trained: ``runs/<network>/checkpoint.pt``) or the initial weights
    (``random-<model>-s<seed>``: kdlib.train.initial_network), no cache."""
    from kdlib.data.broden import BrodenDataset
    from kdlib.dissect import dissect
    from kdlib.models.checkpoint import load_model
    from kdlib.train import initial_network

    probe = BrodenDataset(study.world_dir() / "broden", image_size=study.dissect.image_size)
    d = study.dissect
    models = {inst.key: load_model(folder / "runs" / inst.key / "checkpoint.pt")[0] for inst in study.instances()}
    for inst in study.instances():
        models.setdefault(f"random-{inst.run.model}-s{inst.seed}", initial_network(inst.run, study.world.num_classes, inst.seed).eval())
    return {name: dissect(model, probe, layers=d.layers, quantile=d.quantile, iou_threshold=d.iou_threshold,
                          batch_size=d.batch_size, progress=False)
            for name, model in models.items()}  # fmt: skip


@pytest.mark.slow
def test_detectors_table_is_a_direct_dissection_of_each_saved_network(tiny_study):
    """tables/detectors.csv, network by network, equals the summary of a dissection made here from the
    checkpoint the study saved (trained networks) or from the initial weights the runs started from
    (the random nulls), at both IoU thresholds; every category of every layer is there."""
    from kdlib.params import load_study

    path, folder, _ = tiny_study
    study = load_study(path)
    table = pd.read_csv(folder / "tables" / "detectors.csv")
    direct = _direct_dissections(study, folder)
    assert set(table.network) == set(direct)
    assert len(direct) == len(study.instances()) + len({(i.run.model, i.seed) for i in study.instances()})
    for name, result in direct.items():
        rows = table[table.network == name].set_index(["layer", "iou_threshold", "category"]).sort_index()
        expected = pd.concat([result[layer].summary(thr) for layer in study.dissect.layers for thr in (0.04, 0.05)])
        expected = expected.set_index(["layer", "iou_threshold", "category"]).sort_index()
        assert rows.index.equals(expected.index), name
        for layer in study.dissect.layers:
            assert (rows.loc[layer].units == result[layer].units).all(), (name, layer)
        for column in ("detectors", "unique_concepts"):
            assert rows[column].tolist() == expected[column].tolist(), (name, column)
        for column in ("share", "mean_best_iou", "median_best_iou"):
            np.testing.assert_allclose(rows[column], expected[column], rtol=1e-5, atol=1e-7, err_msg=f"{name} {column}")


def test_steps_that_need_an_earlier_step_name_the_first_missing_network(tmp_path):
    from kdlib.errors import KdlibError
    from kdlib.layout import StudyFolder
    from kdlib.params import load_study
    from kdlib.runs import steps

    study = load_study(ROOT / "params" / "tiny.yaml")
    folder = StudyFolder(tmp_path / "empty")
    with pytest.raises(KdlibError, match=r"^network 'teacher' is not trained in .*/empty; valid: run the training step first \(python -m kdlib.train .*tiny.yaml\)$"):
        steps.trained(study, folder)
    with pytest.raises(KdlibError, match=r"^network 'teacher' is not dissected in .*/empty; valid: run the dissection step first$"):
        steps.dissections(study, folder)
    with pytest.raises(KdlibError, match="is not trained"):
        steps.dissect(study, folder, progress=False)
    assert not (tmp_path / "empty").exists(), "nothing written"
