"""Data-parallel training under torchrun (kdlib.train.distributed): two gloo processes on the CPU train
the weights one process trains from the same global batches, up to per-rank BatchNorm statistics.

Tolerance. torch's SyncBatchNorm does not run on the CPU, so under gloo each rank normalises with its
own half of the batch. The exact reference is therefore one process that feeds each batch's two halves
through the network separately (each half normalised by its own statistics) and weights their mean
losses by their share of the batch: DDP's averaged gradient is that gradient, so the trained parameters
agree to float32 rounding (``EXACT``, the sums are split differently). Against a plain one-process
run (BatchNorm over the whole batch) the weights differ by the BatchNorm statistics alone; that
difference is measured and printed, and must stay below ``BN_BOUND`` of how far training moved the
weights, while being well above the rounding (so the exact check is not vacuous).
"""

from __future__ import annotations

import csv
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdlib.errors import KdlibError
from kdlib.train import distributed

from train_helpers import fit_named, study, study_file

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-6  # max |w_ddp - w_ghost| over parameters (measured: 0, bit for bit, on this machine)
BN_BOUND = 0.6  # ||w_ddp - w_one|| / ||w_one - w_init|| (measured 0.357): per-rank BatchNorm over 8 images, 18 steps
STUDENT = [{"name": "scratch", "model": "resnet8_w4"}]
TRAIN = {"epochs": 2, "batch_size": 16, "augment": False}


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(args: list[str], nproc: int = 2, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _params(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["model_state"]
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def ghost_reference(s, size: int = 2) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One process, each batch's ``size`` contiguous chunks normalised separately (what per-rank
    BatchNorm does), mean losses weighted by chunk share; the session's optimizer and schedule. The
    trained parameters and each epoch's mean training loss."""
    from kdlib.data.splits import load_splits
    from kdlib.train.session import NetworkSpec, TrainingSession

    inst = s.instances()[0]
    train = s.train_for(inst.run)
    torch.set_num_threads(1)
    session = TrainingSession(train, load_splits(s, train, False), [NetworkSpec(inst.key, inst.run, inst.seed)], {},
                              torch.device("cpu"))
    net, losses = session.network.train(), []
    for epoch in range(1, train.epochs + 1):
        total, seen = 0.0, 0
        for images, targets, _ in session.batches.epoch(inst.seed, epoch):
            loss = sum(torch.nn.functional.cross_entropy(net(x), t) * (t.numel() / targets.numel())
                       for x, t in zip(torch.tensor_split(images, size), torch.tensor_split(targets, size)))
            session.stepper(loss)
            total, seen = total + loss.item() * targets.numel(), seen + targets.numel()
        session.scheduler.step()
        losses.append(total / seen)
    return {k: v.detach().clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}, losses


@pytest.mark.slow
def test_two_gloo_ranks_train_one_process_weights(tmp_path, tiny_world):
    s = study(tmp_path / "a", tiny_world, STUDENT, **TRAIN)
    ddp_folder = tmp_path / "ddp"
    out = torchrun(["-m", "kdlib.train", str(s.source), "--out", str(ddp_folder), "--quiet"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 processes, DistributedDataParallel" in out.stdout
    ddp = _params(ddp_folder / "runs" / "scratch-s0" / "checkpoint.pt")
    one = _params(Path(fit_named(s, "scratch").checkpoint))
    ghost, losses = ghost_reference(s)
    from kdlib.train.session import initial_network

    init = {k: v for k, v in initial_network(s.students[0], 6, 0).state_dict().items() if k in ddp}
    exact = max((ddp[k] - ghost[k]).abs().max().item() for k in ddp)
    norm = lambda a, b: sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item()  # noqa: E731
    bn = norm(ddp, one) / norm(one, init)
    print(f"max |ddp - ghost| = {exact:.2e}; ||ddp - one|| / ||one - init|| = {bn:.4f}")
    assert exact <= EXACT
    assert 100 * EXACT < max((ddp[k] - one[k]).abs().max().item() for k in ddp)  # BatchNorm's share is visible
    assert bn <= BN_BOUND
    with open(ddp_folder / "runs" / "scratch-s0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses, rel=1e-5)  # statistics summed over ranks


@pytest.mark.slow
def test_batch_that_does_not_divide_is_one_line(tmp_path, tiny_world):
    path = study_file(tmp_path / "a", tiny_world, STUDENT, **{**TRAIN, "batch_size": 15})
    out = torchrun(["-m", "kdlib.train", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert out.returncode != 0
    assert "batch_size = 15 does not divide among 2 processes; valid: a multiple of the world size 2" in out.stderr
    assert not (tmp_path / "out" / "runs" / "scratch-s0" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_params_that_differ_across_ranks_are_refused(tmp_path, tiny_world):
    for rank, lr in ((0, 0.05), (1, 0.01)):
        study_file(tmp_path / f"r{rank}", tiny_world, STUDENT, **TRAIN, optimizer={"name": "sgd", "lr": lr})
    script = tmp_path / "per_rank.py"
    script.write_text("import os, sys\nfrom kdlib.train.__main__ import main\n"
                      f"sys.exit(main([f'{tmp_path}/r{{os.environ[\"RANK\"]}}/study.yaml', '--out', '{tmp_path}/out', '--quiet']))\n")
    out = torchrun([str(script)])
    assert out.returncode != 0
    assert "the params differ across ranks" in out.stderr
    assert not (tmp_path / "out" / "runs" / "scratch-s0" / "checkpoint.pt").exists()


def _rank_pid(marker: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if f"KDLIB_TEST_MARK={marker}".encode() in env and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def _epoch(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except Exception:  # absent, or being replaced
        return -1


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_and_it_resumes(tmp_path, tiny_world):
    path = study_file(tmp_path / "a", tiny_world, [{"name": "scratch", "model": "resnet18_w8"}],
                      **{**TRAIN, "epochs": 6, "batch_size": 8, "schedule": {"name": "constant"}})
    out_dir, marker = tmp_path / "out", f"ddp-{os.getpid()}-{time.time_ns()}"
    ckpt = out_dir / "runs" / "scratch-s0" / "checkpoint.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "kdlib.train", str(path), "--out", str(out_dir), "--quiet"]
    began = time.monotonic()
    run = subprocess.Popen(command, env=_env(KDLIB_TEST_MARK=marker, KDLIB_DIST_TIMEOUT="60"), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while _epoch(ckpt) < 1 and run.poll() is None and time.monotonic() - began < 200:
            time.sleep(0.05)
        pid = _rank_pid(marker, 1)
        assert pid is not None and run.poll() is None, "the run ended before a rank could be killed"
        time.sleep(0.3)  # into the next epoch
        os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=120)  # fails, does not hang
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode != 0
    # kdlib's line from the surviving rank, or torchrun's summary when it stopped that rank first
    ours = "training stopped because another rank failed or vanished" in output
    assert ours or ("Root Cause" in output and "rank      : 1" in output), output[-2000:]
    kept = _epoch(ckpt)
    assert 1 <= kept < 6
    done = out_dir / "runs" / "scratch-s0" / "done"
    assert not done.exists()
    again = torchrun(["-m", "kdlib.train", str(path), "--out", str(out_dir), "--quiet"])
    assert again.returncode == 0, again.stdout + again.stderr
    import json

    result = json.loads(done.read_text())
    assert result["epoch"] == 6 and result["resumed_from"] >= kept


def test_checks_of_a_two_rank_world(monkeypatch):
    monkeypatch.setattr(distributed, "ranks", lambda: distributed.Ranks(1, 2, 1))
    with pytest.raises(KdlibError, match=r"^x.train.batch_size = 15 does not divide among 2 processes; valid: a multiple"):
        distributed.check_batch(15, 100, "x.train")
    with pytest.raises(KdlibError, match=r"the last batch of 97 images holds 1, fewer than the 2 processes"):
        distributed.check_batch(16, 97, "x.train")
    distributed.check_batch(16, 98, "x.train")
    assert distributed.share(torch.arange(16)).tolist() == list(range(8, 16))
    assert distributed.share(torch.arange(5)).tolist() == [3, 4]  # a ragged last batch: 3 + 2
    assert distributed.loss_weight(2, 5) == pytest.approx(0.8)  # 2 ranks x 2 of the 5 images


def test_one_process_is_untouched():
    assert distributed.ranks() == distributed.Ranks(0, 1, 0)
    assert distributed.share(torch.arange(7)).tolist() == list(range(7))
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap(net, torch.device("cpu")) is net


def test_bad_timeout_is_one_line(monkeypatch):
    monkeypatch.setenv("KDLIB_DIST_TIMEOUT", "soon")
    with pytest.raises(KdlibError, match=r"^KDLIB_DIST_TIMEOUT = 'soon' is not valid; valid: seconds > 0$"):
        distributed.timeout_s()


def _two_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "ranks", lambda: distributed.Ranks(0, 2, 0))


def test_under_torchrun_stacks_are_not_used_and_said_so(tmp_path, tiny_world, monkeypatch, capsys):
    plan = importlib.import_module("kdlib.train.plan")

    s = study(tmp_path / "a", tiny_world, [{"name": "a", "model": "resnet8_w4"}, {"name": "b", "model": "resnet8_w4"}], stack=2)
    assert [g.keys for g in plan.plan(s)] == [["a-s0", "b-s0"]]
    _two_ranks(monkeypatch)
    groups = plan.plan(s)
    assert [g.keys for g in groups] == [["a-s0"], ["b-s0"]]
    assert plan._check_torchrun(s, groups, None) == 1
    assert capsys.readouterr().out == "torchrun (2 processes): train.stack = 2 is not used, every network trains alone\n"
    with pytest.raises(KdlibError, match=r"^--jobs = 2 under torchrun \(2 processes\); valid: --jobs 1"):
        plan._check_torchrun(s, groups, 2)


def test_under_torchrun_a_loss_with_stages_is_refused_before_training(tmp_path, tiny_world, monkeypatch):
    plan = importlib.import_module("kdlib.train.plan")

    s = study(tmp_path / "a", tiny_world, [{"name": "ft", "model": "resnet8_w4", "loss": [{"name": "ft", "layer": "layer3"}]}])
    _two_ranks(monkeypatch)
    with pytest.raises(KdlibError, match=r"ft.loss has pre-training stages, which do not run under torchrun yet"):
        plan._check_torchrun(s, plan.plan(s), None)


@pytest.mark.parametrize("mode", ["memory", "loader"])
def test_the_ranks_chunks_together_are_the_single_process_batches(tmp_path, tiny_world, monkeypatch, mode):
    """144 images in batches of 20 (the last of 4): rank 0 then rank 1 of each step is that step's batch."""
    from kdlib.data.splits import load_splits
    from kdlib.train.batches import LoaderBatches, MemoryBatches

    s = study(tmp_path / "a", tiny_world, STUDENT, **TRAIN, batches=mode)
    train = s.train_for(s.students[0])
    split = load_splits(s, train, False).train
    make = (lambda: MemoryBatches(split, 24, 20, False, torch.device("cpu"), False)) if mode == "memory" else \
        (lambda: LoaderBatches(split, 20, 0, torch.device("cpu"), False))
    whole = [idx.tolist() for _, _, idx in make().epoch(0, 1)]
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "ranks", lambda rank=rank: distributed.Ranks(rank, 2, rank))
        per_rank.append([(idx.tolist(), t.tolist(), img) for img, t, idx in make().epoch(0, 1)])
    assert [len(b) for b in whole] == [20] * 7 + [4]
    assert [a[0] + b[0] for a, b in zip(*per_rank)] == whole
    assert [len(a[0]) for a in per_rank[0]] == [10] * 7 + [2]
    targets = split.targets.tolist()
    for batches in per_rank:
        for idx, t, img in batches:
            assert t == [targets[i] for i in idx] and img.shape[0] == len(idx)


PRIMITIVES = '''
import json, os, sys
import torch
from kdlib.train import distributed
from kdlib.train.session import Stepper

r = distributed.init_from_env()
p = torch.nn.Parameter(torch.zeros(3))
optimizer = torch.optim.SGD([p], lr=1.0)
Stepper(optimizer, False, torch.device("cpu"), [p])((p * (r.rank + 1.0)).sum())  # gradient rank + 1
distributed.check_same({"same": 1}, "x")
out = {"rank": r.rank, "size": r.size, "p": p.tolist(), "sum": distributed.sum_over_ranks(torch.tensor([r.rank + 1])).tolist(),
       "share": distributed.share(torch.arange(5)).tolist()}
with open(os.path.join(sys.argv[1], f"rank{r.rank}.json"), "w") as f:
    json.dump(out, f)
distributed.shutdown()
'''


@pytest.mark.slow
def test_the_primitives_under_two_gloo_ranks(tmp_path):
    import json

    script = tmp_path / "primitives.py"
    script.write_text(PRIMITIVES)
    out = torchrun([str(script), str(tmp_path)])
    assert out.returncode == 0, out.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, got in enumerate(ranks):
        assert (got["rank"], got["size"], got["sum"]) == (r, 2, [3])
        assert got["p"] == [-1.5] * 3  # SGD lr 1 on the mean of the gradients 1 and 2 (an objective's own parameter)
    assert ranks[0]["share"] + ranks[1]["share"] == [0, 1, 2, 3, 4] and ranks[0]["share"] == [0, 1, 2]
