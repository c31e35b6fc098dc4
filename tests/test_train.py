"""fit() and python -m kdlib.train: run folder, determinism, kill-and-resume, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdlib.errors import KdlibError
from kdlib.losses import LossTerm
from kdlib.models import build
from kdlib.params import load_study
from kdlib.registry import LOSSES
from kdlib.train import check_study, fit, initial_network, load_model
from kdlib.models import checkpoint as ckpt
from kdlib.data.splits import IndexedSplit
from kdlib.train.loaders import eval_loader
from kdlib.data.transforms import eval_transform
from kdlib.train.step import evaluate

from kdlib.layout import StudyFolder
from train_helpers import fit_named, run_folder, study, study_file

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = {"name": "scratch", "model": "resnet8_w8"}


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


def kd_permuted(teacher: Path, name: str = "kdp") -> dict:
    """A student whose every step draws random numbers (augmentation, shuffling, permutations)."""
    return {"name": name, "model": "resnet8_w8", "teacher": {"checkpoint": str(teacher)},
            "loss": [{"name": "ce", "weight": 0.5}, {"name": "kd_permuted", "weight": 0.5, "temperature": 4.0}]}


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model_state"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_run_folder_layout_and_last_epoch_weights(tiny_world, tmp_path):
    s = study(tmp_path, tiny_world, [SCRATCH])
    result = fit_named(s, "scratch")
    folder = run_folder(s, "scratch-s0")
    assert result.run_dir == str(folder) and result.name == "scratch-s0"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "done", "metrics.csv", "params.yaml"]
    done = json.loads((folder / "done").read_text())
    assert done["kind"] == "train" and done["epoch"] == result.epoch == 2
    history = rows(folder / "metrics.csv")
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert set(history[0]) == {"epoch", "lr", "loss", "loss.ce", "train_acc", "val_loss", "val_acc"}
    assert [float(r["lr"]) for r in history] == pytest.approx([0.05, 0.005])  # milestone at epoch 1
    model, state = load_model(folder, model="resnet8_w8", num_classes=6)
    assert state["epoch"] == 2 and not model.training
    val = IndexedSplit(tiny_world, "val", eval_transform(24))
    ((_, val_acc),) = evaluate(model, [(x, y) for x, y, _ in eval_loader(val, 16, 0, False)], torch.device("cpu"))
    assert val_acc == pytest.approx(result.val_acc)
    again = fit_named(s, "scratch")  # finished: returned as it is, nothing retrained
    assert again == result and same_weights(weights(folder / "checkpoint.pt"), state["model_state"])


@pytest.mark.slow
def test_same_params_same_weights_other_seed_other_weights(tiny_world, tmp_path, teacher):
    runs = []
    for name, seed_dir in (("a", "one"), ("b", "two")):
        s = study(tmp_path / seed_dir, tiny_world, [kd_permuted(teacher)], teacher_amp=True)
        runs.append(fit_named(s, "kdp"))
    assert same_weights(weights(Path(runs[0].checkpoint)), weights(Path(runs[1].checkpoint)))
    assert rows(Path(runs[0].run_dir) / "metrics.csv") == rows(Path(runs[1].run_dir) / "metrics.csv")
    other = load_study(study_file(tmp_path / "three", tiny_world, [kd_permuted(teacher)], teacher_amp=True))
    other = dataclasses.replace(other, seed=1)
    third = fit_named(other, "kdp")
    assert not same_weights(weights(Path(runs[0].checkpoint)), weights(Path(third.checkpoint)))


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlib.train", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def _kill_at(params: Path, out: Path, seconds: float) -> bool:
    """Start the CLI, SIGKILL it after ``seconds``; True if it was still running (the kill interrupted it)."""
    proc = subprocess.Popen([sys.executable, "-m", "kdlib.train", str(params), "--quiet", "--out", str(out), "--jobs", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_identical_weights(tiny_world, tmp_path, teacher):
    """Two training processes (a stack of two students, and one student alone) killed twice at
    random moments of the run (start-up, an epoch, a checkpoint being saved: wherever the draw lands),
    resumed each time; the end is the uninterrupted run's weights and metrics, bit for bit. A killed
    parent takes its training processes with it: a survivor would hold its run folder's lock and make
    the next attempt fail."""
    students = [kd_permuted(teacher), dict(SCRATCH, name="scratch"), {"name": "ls", "model": "resnet8_w8", "loss": [{"name": "ls"}]}]
    params = study_file(tmp_path, tiny_world, students, epochs=3, batch_size=8, stack=2)
    began = time.perf_counter()
    whole = _cli(str(params), "--quiet", "--out", str(tmp_path / "whole"), "--jobs", "2")
    duration = time.perf_counter() - began
    assert whole.returncode == 0, whole.stderr
    moments = [random.uniform(0.2, 0.8) * duration for _ in range(2)]
    interrupted = [_kill_at(params, tmp_path / "killed", m) for m in moments]
    assert any(interrupted), f"no kill interrupted the run (moments {moments}, whole run {duration:.1f} s)"
    resumed = _cli(str(params), "--quiet", "--out", str(tmp_path / "killed"), "--jobs", "2")
    assert resumed.returncode == 0, f"moments {moments}: {resumed.stderr}"
    for key in ("kdp-s0", "scratch-s0", "ls-s0"):
        a, b = tmp_path / "killed" / "runs" / key, tmp_path / "whole" / "runs" / key
        assert same_weights(weights(a / "checkpoint.pt"), weights(b / "checkpoint.pt")), f"{key}, moments {moments}"
        assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
        assert not (a / "checkpoint.next.pt").exists()


class _Stop(Exception):
    """Raised by an epoch callback: the run stops right after that epoch's checkpoint."""


@pytest.mark.slow
def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_weights(tiny_world, tmp_path):
    """The kill test's deterministic companion: stopped right after epoch 1's checkpoint, resumed, the end
    is the uninterrupted run's weights and metrics bit for bit. The learning rate changes at epochs 1 and
    2, so a resume that lost the scheduler's state (or the optimizer's, or the history) differs; with one
    milestone at epoch 1 a fresh scheduler would give the right rates by chance."""
    from kdlib.train import fit_stack

    schedule = {"name": "multistep", "milestones": [1, 2], "gamma": 0.1}
    whole = fit_named(study(tmp_path / "whole", tiny_world, [SCRATCH], epochs=3, schedule=schedule), "scratch")
    s = study(tmp_path / "stopped", tiny_world, [SCRATCH], epochs=3, schedule=schedule)
    folder = run_folder(s, "scratch-s0")

    def stop_after_epoch_1(keys, epoch):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        fit_stack(s, s.instances(["scratch"]), [folder], [None], progress=False, on_epoch=stop_after_epoch_1)
    assert ckpt.load(folder / "checkpoint.pt")["epoch"] == 1 and not (folder / "done").exists()
    resumed = fit_named(s, "scratch")
    assert resumed.epoch == 3
    assert same_weights(weights(Path(whole.checkpoint)), weights(Path(resumed.checkpoint)))
    assert rows(Path(whole.run_dir) / "metrics.csv") == rows(Path(resumed.run_dir) / "metrics.csv")


@pytest.mark.slow
def test_processes_train_the_same_weights_as_one_process(tiny_world, tmp_path, teacher):
    from kdlib.train import fit_study

    students = [kd_permuted(teacher), dict(SCRATCH, name="scratch")]
    results = {}
    for jobs in (1, 2):
        s = study(tmp_path / str(jobs), tiny_world, students, epochs=1)
        results[jobs] = fit_study(s, StudyFolder.for_study(s), progress=False, jobs=jobs)
    assert [r.name for r in results[1]] == [r.name for r in results[2]] == ["kdp-s0", "scratch-s0"]
    for a, b in zip(results[1], results[2]):
        assert same_weights(weights(Path(a.checkpoint)), weights(Path(b.checkpoint))) and a.val_acc == b.val_acc


@pytest.mark.slow
def test_a_failing_training_process_is_one_line(tiny_world, tmp_path):
    """A training process that stops with a KdlibError (here: a loss weighted 1e30 overflows after the
    first step) makes fit_study stop with that one line; the other process is stopped too."""
    from kdlib.train import fit_study

    huge = {"model": "resnet8_w8", "loss": [{"name": "ce", "weight": 1.0e30}]}
    s = study(tmp_path, tiny_world, [dict(huge, name="a"), dict(huge, name="b")], epochs=1)
    with pytest.raises(KdlibError) as e:
        fit_study(s, StudyFolder.for_study(s), progress=False, jobs=2)
    assert "valid: a finite loss (lower the learning rate or a loss weight)" in str(e.value)
    assert str(e.value).startswith(f"{s.source}: ") and "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_trains_teacher_then_student_and_reports_errors_in_one_line(tiny_world, tmp_path):
    params = study_file(tmp_path, tiny_world, [{"name": "kd", "model": "resnet8_w8", "teacher": {"run": "teacher"},
                                               "loss": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]}],
                        teacher={"name": "teacher", "model": "resnet8_w8"}, epochs=1)
    out = _cli(str(params), "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("teacher: epoch 1") and out.stdout.splitlines()[2].startswith("kd-s0: epoch 1")
    bad = study_file(tmp_path / "bad", tiny_world, [{"name": "s", "model": "resnet8_w8"}], optimizer={"name": "adamx", "lr": 0.1})
    out = _cli(str(bad))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {bad}: s.train.optimizer.name = 'adamx' is unknown; valid: adam, adamw, sgd"
    ]


def test_student_of_an_unfinished_teacher_run(tiny_world, tmp_path):
    s = study(tmp_path, tiny_world, [{"name": "kd", "model": "resnet8_w8", "teacher": {"run": "teacher"},
                                      "loss": [{"name": "kd"}]}], teacher={"name": "teacher", "model": "resnet8_w8"})
    with pytest.raises(KdlibError, match=r"kd.teacher.run = 'teacher' has not finished .* valid: train it first"):
        fit_named(s, "kd")


@pytest.mark.parametrize(
    "student, train, message",
    [
        ({"name": "s", "model": "resnet9"}, {}, "unknown model 'resnet9'; valid: "),
        ({"name": "s", "model": "resnet8", "loss": [{"name": "kdd"}]}, {}, "s.loss[0]: unknown loss 'kdd'"),
        ({"name": "s", "model": "resnet8"}, {"schedule": {"name": "step"}}, "s.train.schedule.name = 'step' is unknown; valid: constant, cosine, multistep"),
        ({"name": "s", "model": "resnet8"}, {"optimizer": {"name": "rmsprop"}}, "s.train.optimizer.name = 'rmsprop' is unknown; valid: adam, adamw, sgd"),
        ({"name": "s", "model": "resnet8", "teacher": {"checkpoint": "nowhere.pt"}, "loss": [{"name": "kd"}]}, {},
         "s: teacher checkpoint 'nowhere.pt' does not exist"),
        ({"name": "s", "model": "resnet8", "loss": [{"name": "kd"}]}, {}, "s.loss[0] (kd) needs a teacher"),
    ],
)
def test_bad_runs_fail_before_training(tiny_world, tmp_path, student, train, message):
    s = study(tmp_path, tiny_world, [student], **train)
    with pytest.raises(KdlibError) as e:
        check_study(s)
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KdlibError) as e:
        fit_named(s, "s")
    assert message.split(";")[0].split(": ", 1)[-1] in str(e.value)


def _copy_world(world: Path, to: Path, rename_val: bool = False, empty_train: bool = False) -> Path:
    import shutil

    shutil.copytree(world / "imagefolder", to / "imagefolder")
    if rename_val:
        first = sorted((to / "imagefolder" / "val").iterdir())[0]
        first.rename(first.with_name("99_unknown"))
    if empty_train:
        shutil.rmtree(to / "imagefolder" / "train")
        (to / "imagefolder" / "train").mkdir()
    return to / "imagefolder"


def test_documented_training_errors_are_one_line(tiny_world, tmp_path, monkeypatch):
    """README and docstrings promise one line for each of these; each names the bad value."""
    def fails(s, message):
        with pytest.raises(KdlibError) as e:
            fit_named(s, "s")
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)

    with pytest.raises(KdlibError) as e:
        study(tmp_path / "w", tiny_world, [{"name": "s", "model": "resnet8_w8", "loss": [{"name": "ce", "weight": -1.0}]}])
    assert str(e.value).endswith(": students[0].loss[0].weight = -1.0 is not valid; valid: a finite number >= 0")
    plain = [{"name": "s", "model": "resnet8_w8"}]
    if not torch.cuda.is_available():
        fails(study(tmp_path / "cuda", tiny_world, plain, device="cuda"),
              "s.train.device = 'cuda' but CUDA is not available here; valid: auto or cpu")
    fails(study(tmp_path / "none", tmp_path / "no-such-world", plain),
          f"data.imagefolder = {str(tmp_path / 'no-such-world')!r} does not exist; valid: a folder with train/ and val/")
    renamed = _copy_world(tiny_world, tmp_path / "renamed", rename_val=True)
    fails(study(tmp_path / "r", renamed, plain), f"{renamed}/val has classes ")
    fails(study(tmp_path / "r", renamed, plain), f"valid: the same class folders as {renamed}/train")
    empty = _copy_world(tiny_world, tmp_path / "empty", empty_train=True)
    fails(study(tmp_path / "e", empty, plain), f"split folder {str(empty / 'train')!r} has no class folders; valid: ")
    monkeypatch.setattr("kdlib.data.tensors.MAX_BYTES", 1000)
    fails(study(tmp_path / "big", tiny_world, plain), "GiB in memory; valid: train.batches: loader for data this large")


def test_a_layer_the_model_lacks(tiny_world, tmp_path, teacher):
    s = study(tmp_path, tiny_world, [{"name": "s", "model": "resnet8_w8", "teacher": {"checkpoint": str(teacher)},
                                      "loss": [{"name": "at", "layers": ["layer4"]}]}])
    message = "s.loss[0] (at) (student resnet8_w8): layer 'layer4' is not in the model; valid: a module path such as conv1, bn1"
    for call in (lambda: check_study(s), lambda: fit_named(s, "s")):
        with pytest.raises(KdlibError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)


def test_truncated_and_foreign_teacher_checkpoints(tiny_world, tmp_path, teacher):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(teacher.read_bytes()[: teacher.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    for path, message in ((truncated, "cannot be read (") , (foreign, "is not a kdlib checkpoint")):
        s = study(tmp_path / path.stem, tiny_world, [{"name": "s", "model": "resnet8_w8", "teacher": {"checkpoint": str(path)},
                                                      "loss": [{"name": "kd"}]}])
        with pytest.raises(KdlibError) as e:
            fit_named(s, "s")
        assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_teacher_with_another_class_count(tiny_world, tmp_path):
    other = tmp_path / "five.pt"
    ckpt.save(other, {"model": {"name": "resnet8_w8", "kwargs": {}, "num_classes": 5, "classes": list("abcde")},
                      "identity": {}, "epoch": 1, "model_state": build("resnet8_w8", 5).state_dict()})
    s = study(tmp_path, tiny_world, [{"name": "s", "model": "resnet8_w8", "teacher": {"checkpoint": str(other)},
                                      "loss": [{"name": "kd"}]}])
    with pytest.raises(KdlibError) as e:
        fit_named(s, "s")
    assert str(e.value).endswith(f"teacher checkpoint {str(other)!r} has 5 classes but the data has 6; valid: a checkpoint trained on the same classes")
    with pytest.raises(KdlibError, match="holds model 'resnet8_w8'; valid: a checkpoint of 'resnet20'"):
        load_model(other, model="resnet20")


def test_resuming_with_other_params_refuses(tiny_world, tmp_path):
    """Other params get another study folder (the run id); told to reuse a folder, fit refuses one made
    from other params."""
    first = study(tmp_path, tiny_world, [SCRATCH])
    fit_named(first, "scratch")
    folder = StudyFolder.for_study(first)
    changed = study(tmp_path, tiny_world, [SCRATCH], epochs=3)
    assert StudyFolder.for_study(changed) != folder
    with pytest.raises(KdlibError, match=r"holds a run made from other params \(train.epochs: 2 != 3\)"):
        fit_named(changed, "scratch", folder=folder)
    other_model = study(tmp_path, tiny_world, [{"name": "scratch", "model": "resnet14_w8"}])
    with pytest.raises(KdlibError, match="holds model 'resnet8_w8'; valid: a checkpoint of 'resnet14_w8'"):
        fit_named(other_model, "scratch", folder=folder)


class _NanFrom(LossTerm):
    """Test-only: cross-entropy that turns NaN from epoch ``epoch`` on."""

    def __init__(self, *, epoch: int = 2):
        super().__init__()
        self.epoch = epoch

    def forward(self, io):
        loss = torch.nn.functional.cross_entropy(io.logits, io.targets)
        return loss * float("nan") if io.epoch >= self.epoch else loss


if "test_nan" not in LOSSES:
    LOSSES.add("test_nan", _NanFrom)


class _Threads(LossTerm):
    """Test-only: cross-entropy that records torch's thread count at every step."""

    seen: list = []

    def forward(self, io):
        _Threads.seen.append(torch.get_num_threads())
        return torch.nn.functional.cross_entropy(io.logits, io.targets)


if "test_threads" not in LOSSES:
    LOSSES.add("test_threads", _Threads)


def test_training_runs_at_the_params_thread_count(tiny_world, tmp_path):
    before = torch.get_num_threads()
    _Threads.seen.clear()
    s = study(tmp_path, tiny_world, [{"name": "s", "model": "resnet8_w8", "loss": [{"name": "test_threads"}]}],
              threads=before + 1, epochs=1)
    fit_named(s, "s")
    assert set(_Threads.seen) == {before + 1} and torch.get_num_threads() == before


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tiny_world, tmp_path):
    s = study(tmp_path, tiny_world, [{"name": "s", "model": "resnet8_w8", "loss": [{"name": "test_nan", "epoch": 2}]}], epochs=3)
    with pytest.raises(KdlibError) as e:
        fit_named(s, "s")
    folder = run_folder(s, "s-s0")
    assert "loss is nan at epoch 2, step 0; stopped, the last good checkpoint (epoch 1) is kept at" in str(e.value)
    assert "\n" not in str(e.value)
    assert ckpt.load(folder / "checkpoint.pt")["epoch"] == 1 and not (folder / "done").exists()
    assert torch.isfinite(torch.cat([v.flatten().float() for v in weights(folder / "checkpoint.pt").values()])).all()


def test_checkpoint_zero_holds_the_initial_network(tiny_world, tmp_path):
    """A NaN at the first step leaves checkpoint 0: the weights fit started from, which initial_network rebuilds."""
    s = study(tmp_path, tiny_world, [{"name": "s", "model": "resnet8_w8", "loss": [{"name": "test_nan", "epoch": 1}]}])
    with pytest.raises(KdlibError, match=r"\(epoch 0\) is kept"):
        fit_named(s, "s")
    state = ckpt.load(run_folder(s, "s-s0") / "checkpoint.pt")
    assert state["epoch"] == 0
    assert same_weights(state["model_state"], initial_network(s.run("s"), 6, seed=0).state_dict())
    assert not same_weights(state["model_state"], initial_network(s.run("s"), 6, seed=1).state_dict())


def test_shipped_tiny_params_check(tiny_world):
    check_study(load_study(ROOT / "params" / "tiny.yaml"))
    check_study(load_study(ROOT / "params" / "default.yaml"))
