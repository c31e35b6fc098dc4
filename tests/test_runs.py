"""The headless study driver on the tiny params: every step, the run folder, re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    params = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    params.update(data_root=str(tmp / "data"), output_root=str(tmp / "outputs"))
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "kdlib.runs", "run", str(path), "--quiet"], capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = Path(proc.stdout.split("study done: ")[1].split()[0])
    return path, (tmp / folder if not folder.is_absolute() else folder), params


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
    proc = subprocess.run([sys.executable, "-m", "kdlib.runs", "run", str(path), "--quiet"], capture_output=True, text=True, cwd=path.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {n: (folder / "tables" / n).read_text() for n in before}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "no network retrained, no layer re-dissected"


def test_bad_params_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain: {epochs: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "kdlib.runs", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: train.epochs = 0 is out of range; valid: >= 1 and <= 10000"
