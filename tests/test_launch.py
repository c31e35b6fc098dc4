"""The training step under torchrun (kdlib.runs.launch) and the batch runner's processes: each pair in its
own process, ``--jobs`` of them at once, ``--torchrun N`` passed to every pair's training."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.runs import batch, launch, steps

from study_helpers import tiny_params
from train_helpers import study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text", ["0", "two", "-3", "1025"])
def test_a_bad_process_count_is_one_line(text):
    with pytest.raises(KdlibError, match=rf"^KDLIB_TORCHRUN \(--torchrun\) = '{text}' is not valid; valid: a number of processes from 1 to 1024$"):
        launch.torchrun_processes(text)


def test_the_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(launch.ENV, raising=False)
    assert launch.torchrun_processes() == 1
    monkeypatch.setenv(launch.ENV, "3")
    assert launch.torchrun_processes() == 3


def test_the_torchrun_command_trains_the_named_runs_into_the_folder(tmp_path):
    command = launch.torchrun_command(2, "p.yaml", tmp_path, ["teacher", "kd"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdlib.train",
                       "p.yaml", "--out", str(tmp_path), "--quiet", "--run", "teacher", "--run", "kd"]


def test_batch_runs_each_pair_in_its_own_process_jobs_at_a_time(tmp_path, monkeypatch):
    """``subprocess.run`` replaced by a recorder that holds each pair 0.5 s and fails it (no notebooks run)."""
    paths = [tiny_params(tmp_path, f"pairs/p{i}", seeds=[0]) for i in range(3)]
    calls, lock = [], threading.Lock()

    def fake_run(command, stdout, **_):
        began = time.monotonic()
        time.sleep(0.5)
        stdout.write("error: fake failure\n")
        with lock:
            calls.append((command, began, time.monotonic(), threading.get_ident()))
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(batch, "make_worlds", lambda studies, quiet=False: [])
    monkeypatch.setattr(batch.subprocess, "run", fake_run)
    result = batch.run_batch(paths, jobs=2, out=tmp_path / "out", quiet=True, torchrun=2)
    assert sorted(c[0][4] for c in calls) == sorted(str(p.resolve()) for p in paths)
    for command, *_ in calls:
        assert command[:4] == [sys.executable, "-m", "kdlib.runs", "run"] and command[5:] == ["--quiet", "--torchrun", "2"]
    spans = sorted((b, e) for _, b, e, _ in calls)
    assert spans[1][0] < spans[0][1]  # two at once
    assert spans[2][0] >= min(e for _, e in spans[:2]) - 0.05  # never three
    assert [p.error for p in result.pairs] == ["fake failure"] * 3


def test_batch_without_torchrun_passes_no_flag(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(batch.subprocess, "run", lambda command, stdout, **_: seen.append(command) or subprocess.CompletedProcess(command, 0))
    path = tiny_params(tmp_path, "pairs/p", seeds=[0])
    pair = batch.run_pair("p", path, batch.runner.load(path), tmp_path, False, None)
    assert pair.status == "ok" and seen[0][5:] == ["--quiet"]


def test_a_bad_torchrun_is_refused_before_any_pair(tmp_path):
    with pytest.raises(KdlibError, match=r"^KDLIB_TORCHRUN \(--torchrun\) = '0' is not valid"):
        batch.run_batch([tiny_params(tmp_path, "pairs/p", seeds=[0])], torchrun=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_training_step_trains_under_torchrun(tmp_path, tiny_world, monkeypatch):
    s = study(tmp_path / "a", tiny_world, [{"name": "scratch", "model": "resnet8_w4"}], epochs=1, batch_size=16)
    monkeypatch.setenv(launch.ENV, "2")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    folder = StudyFolder.for_study(s)
    results = steps.train(s, folder, progress=False)
    assert list(results) == ["scratch-s0"] and results["scratch-s0"].epoch == 1
    state = torch.load(folder.run("scratch-s0") / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["identity"]["world_size"] == 2
