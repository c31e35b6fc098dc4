"""The house refactor changed no number: the default params on the tiny world give the checkpoints and
tallies, bit for bit, of commit 6ddbd16 (the commit before it).

``tests/data/reference_6ddbd16.json`` holds the SHA-256 digests of every trained network's weights and
every dissected layer's counts, made by running commit 6ddbd16's own ``python -m kdlib.runs`` on
that commit's ``params/default.yaml`` (its runs are written out below) with ``world: {profile: tiny}``, 3 epochs (milestone at 2), batch 32, dissection
batch 16, that commit's training pipeline (set explicitly below: the default params have moved to the
fast path), one torch thread (results depend on the thread count), and hashing the run folder with
:func:`folder_digests` below. Network names then had no seed suffix (``kd``, ``random-resnet18_w8``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdlib.digest import state_digest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference_6ddbd16.json"
TALLY_KEYS = ("thresholds", "intersection", "activation_cat", "unit_area", "truth", "top_images", "top_values")


# The runs of params/default.yaml at 6ddbd16 (the default study has since gained the LS teacher and
# kd_from_ls, and kd_fixed_perm moved to params/extended.yaml)
_KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 1.0}]
LEGACY_TEACHERS = [{"name": "teacher", "model": "resnet34_w16", "loss": [{"name": "ce", "weight": 1.0}]}]
LEGACY_STUDENTS = [
    {"name": "scratch", "model": "resnet18_w8", "loss": [{"name": "ce", "weight": 1.0}]},
    {"name": "ls", "model": "resnet18_w8", "loss": [{"name": "ls", "weight": 1.0, "epsilon": 0.1}]},
    {"name": "kd", "model": "resnet18_w8", "teacher": {"run": "teacher"}, "loss": _KD},
    {"name": "kd_permuted", "model": "resnet18_w8", "teacher": {"run": "teacher"},
     "loss": [_KD[0], {"name": "kd_permuted", "weight": 0.5, "temperature": 1.0}]},
    {"name": "kd_fixed_perm", "model": "resnet18_w8", "teacher": {"run": "teacher"},
     "loss": [_KD[0], {"name": "kd_fixed_perm", "weight": 0.5, "temperature": 1.0}]},
]


def folder_digests(runs: Path, dissect: Path) -> dict:
    """Digests of ``runs/*/checkpoint.pt`` weights and ``dissect/*/dissect_<layer>.pt`` counts."""
    out: dict[str, dict] = {"weights": {}, "tallies": {}}
    for ckpt in sorted(runs.glob("*/checkpoint.pt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        out["weights"][ckpt.parent.name] = state_digest(dict(sorted(state["model_state"].items())))
    for path in sorted(dissect.glob("*/dissect_*.pt")):
        s = torch.load(path, map_location="cpu", weights_only=True)
        out["tallies"][f"{path.parent.name}/{s['layer']}"] = state_digest({k: s[k] for k in sorted(TALLY_KEYS)})
    return out


def _old_name(network: str) -> str:
    return network.removesuffix("-s0")


@pytest.mark.slow
def test_default_params_on_the_tiny_world_match_commit_6ddbd16(tmp_path):
    params = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    params.update(seeds=[0], teachers=LEGACY_TEACHERS, students=LEGACY_STUDENTS)  # 6ddbd16's study, one seed
    params["world"] = {"profile": "tiny"}
    params["train"].update(epochs=3, batch_size=32, schedule={"name": "multistep", "milestones": [2], "gamma": 0.1})
    # the pipeline of 6ddbd16, explicitly: DataLoader with PIL transforms, float32 student in the default
    # memory format, every network alone, one thread (the default params use the fast path)
    params["train"].update(batches="loader", amp=False, channels_last=False, stack=1, threads=1, teacher_amp=True)
    params["dissect"]["batch_size"] = 16
    for later in ("metrics", "report"):  # sections 6ddbd16 did not have (their claims name today's runs)
        params.pop(later, None)
    params.update(data_root=str(tmp_path / "data"), output_root=str(tmp_path / "outputs"))
    path = tmp_path / "default_tiny.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the steps whose outputs 6ddbd16 pinned (training and dissection), in a fresh interpreter
    script = ("import sys; from kdlib.layout import StudyFolder; from kdlib.params import load_study; "
              "from kdlib.runs import steps; study = load_study(sys.argv[1]); folder = StudyFolder.for_study(study); "
              "steps.world(study, folder); steps.train(study, folder, progress=False); steps.dissect(study, folder, progress=False)")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = next((tmp_path / "outputs").iterdir())
    new = folder_digests(folder / "runs", folder / "dissect")
    reference = json.loads(REFERENCE.read_text())
    assert {_old_name(k): v for k, v in new["weights"].items()} == reference["weights"]
    tallies = {f"{_old_name(k.split('/')[0])}/{k.split('/')[1]}": v for k, v in new["tallies"].items()}
    assert tallies == reference["tallies"]
