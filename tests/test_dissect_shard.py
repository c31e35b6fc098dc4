"""Sharded dissection under torchrun: two gloo processes on the CPU give one process's answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlib.dissect import DissectResult

ROOT = Path(__file__).resolve().parents[1]


def _args(world, out):
    return ["--model", "resnet8", "--num-classes", "6", "--random-init", "--seed", "1", "--layers", "layer2", "layer3",
            "--data", str(world), "--out", str(out), "--no-progress", "--quantile", "0.01", "--strips", "none",
            "--batch-size", "7", "--examples", "3"]


@pytest.mark.slow
def test_two_gloo_ranks_give_one_process_answer(tiny_world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdlib.dissect",
                          *_args(tiny_world, tmp_path / "two"), "--cache", str(tmp_path / "cache")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("total") == 2  # rank 0 alone printed the summary (one total row per layer)
    one = subprocess.run([sys.executable, "-m", "kdlib.dissect", *_args(tiny_world, tmp_path / "one")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = DissectResult.load(tmp_path / "one"), DissectResult.load(tmp_path / "two")
    assert a.meta["ranks"] == 1 and b.meta["ranks"] == 2
    for layer in ("layer2", "layer3"):
        assert torch.equal(a[layer].thresholds, b[layer].thresholds)  # the merged top-k: bit for bit
        for name in ("intersection", "activation_cat", "unit_area", "truth"):
            assert torch.equal(getattr(a[layer], name), getattr(b[layer], name)), name
        assert torch.allclose(a[layer].iou, b[layer].iou, atol=1e-6, rtol=0)
        for thr in (0.01, 0.04):
            assert list(a[layer].detectors(thr)["unit"]) == list(b[layer].detectors(thr)["unit"])
        assert torch.equal(a[layer].top_values, b[layer].top_values)  # top examples merged by the same rule
    assert len(list((tmp_path / "cache").glob("layer*.pt"))) == 2  # one writer: one entry per layer
