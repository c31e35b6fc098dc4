"""The headless study driver (kdlib.runs.study.run_study, the steps in order without notebooks, which the
notebooks mirror) on the tiny params at one seed: every step, the run folder, re-runs. The command line
``python -m kdlib.runs run`` is the papermill runner (tests/test_runner.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_helpers import tiny_params

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
    assert manifest["packages"]["torch"] and len(manifest["git"]["commit"] or "x" * 40) == 40
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
