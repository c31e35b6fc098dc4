"""The command-line tools run as a hostile or unlucky user would run them.

Every case runs a tool as a subprocess and asserts: the exit status (2 for bad input and environment
failures, 130 for Ctrl-C), at most a few lines on stderr, no traceback, nothing written outside the
output root, nothing half-written (no temporary file, no ``done`` of a failed step). The cases are
grouped by how kdlib handles them (``pytest --collect-only -q tests/test_hostile.py`` counts them).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SMALL_TRAIN = {"epochs": 2, "batch_size": 16, "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.1},
               "optimizer": {"name": "sgd", "lr": 0.05}}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def run_tool(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([PY, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300, **kw)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, needle: str, status: int = 2) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == status, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(err.splitlines()) <= 3, err
    assert needle in err, err


def assert_nothing_half_written(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def params_file(folder: Path, world: Path, **sections) -> Path:
    """A study over the tiny world (read as real data), with ``sections`` replacing the defaults."""
    data = {
        "seed": 0, "world": {"profile": "tiny"},
        "data": {"imagefolder": str(world), "broden": str(world / "broden")},
        "output_root": str(folder / "outputs"), "data_root": str(folder / "data"),
        "train": {**SMALL_TRAIN, "image_size": 24},
        "teachers": [{"name": "teacher", "model": "resnet8_w8"}],
        "students": [{"name": "scratch", "model": "resnet8_w8"}],
        "dissect": {"layers": ["layer3"], "batch_size": 16},
    }
    data.update(sections)
    path = folder / "study.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# 1. params files: refused before any work, one line naming the key and what is valid
# --------------------------------------------------------------------------------------------

PARAMS_TEXT_CASES = [
    ("empty file", "", "the file is empty"),
    ("duplicate key", "seed: 0\nseed: 1\n", "key 'seed' is written twice (lines 1 and 2)"),
    ("nested duplicate key", "train:\n  epochs: 2\n  epochs: 3\n", "key 'epochs' is written twice"),
    ("yaml tag", "seed: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML at line 1"),
    ("not yaml", "seed: [0\n", "not valid YAML"),
    ("top-level list", "- 1\n- 2\n", "top level = list is not valid"),
    ("world is a list", "world: []\n", "world = [] has the wrong type; valid: a mapping"),
    ("infinite lr", "train: {optimizer: {lr: .inf}}\n", "train.optimizer.lr = inf is not valid; valid: a finite number"),
    ("nan lr", "train: {optimizer: {lr: .nan}}\n", "train.optimizer.lr = nan is not valid; valid: a finite number"),
    ("milestone after the end", "train: {epochs: 5, schedule: {milestones: [3, 9]}}\n", "has 9, outside the 5 epochs"),
    ("warm-up longer than training", "train: {epochs: 2, schedule: {milestones: [1], warmup_epochs: 2}}\n",
     "warmup_epochs = 2 is not valid"),
    ("huge batch", "train: {batch_size: 1000000000}\n", "train.batch_size = 1000000000 is out of range"),
    ("huge image size", "train: {image_size: 100000}\n", "train.image_size = 100000 is out of range"),
    ("huge probe set", "world: {probe_images: 1000000000}\n", "world.probe_images = 1000000000 is out of range"),
    ("zero epochs", "train: {epochs: 0}\n", "train.epochs = 0 is out of range"),
    ("unknown key", "sed: 1\n", "sed is an unknown key"),
    ("duplicate seeds", "seeds: [0, 0]\n", "seeds = [0, 0] is not valid; valid: distinct integers >= 0"),
    ("negative seed", "seeds: [-1]\n", "seeds = [-1] is not valid"),
    ("run name escapes", "teachers: [{name: ../escape, model: resnet8_w8}]\n", "name = '../escape' is not a plain name"),
    ("absolute run name", "teachers: [{name: /tmp/abs, model: resnet8_w8}]\n", "name = '/tmp/abs' is not a plain name"),
    ("empty run name", "teachers: [{name: '', model: resnet8_w8}]\n", "name = '' is not a plain name"),
    ("dot run name", "teachers: [{name: '.', model: resnet8_w8}]\n", "name = '.' is not a plain name"),
    ("negative loss weight", "students: [{name: s, model: resnet8_w8, loss: [{name: ce, weight: -1}]}]\n",
     "loss[0].weight = -1 is not valid"),
    ("infinite loss weight", "students: [{name: s, model: resnet8_w8, loss: [{name: ce, weight: .inf}]}]\n",
     "loss[0].weight = inf is not valid"),
    ("teacher is itself", "teachers: [{name: t, model: resnet8_w8, teacher: {run: t}}]\n", "is the run itself"),
    ("teacher cycle", "teachers: [{name: a, model: resnet8_w8, teacher: {run: b}}, "
     "{name: b, model: resnet8_w8, teacher: {run: a}}]\n", "teachers form a cycle (a -> b -> a)"),
    ("student teaches", "students: [{name: s, model: resnet8_w8}, {name: k, model: resnet8_w8, teacher: {run: s}}]\n",
     "names a student"),
    ("teacher names nothing", "students: [{name: k, model: resnet8_w8, teacher: {run: nobody}}]\n", "names no teacher"),
    ("no runs", "seed: 0\n", "no teachers or students to"),
]


# Both tools read params with the same load_study; the training tool is run on a sample of the cases.
# kdlib.runs reads them before importing torch (a refusal takes a fraction of a second); a case is slow
# (about 5 s of imports) when the tool gets as far as importing torch: every kdlib.train case (its
# package imports torch), and "no runs", which kdlib.runs finds while checking the models.
TOOL_CASES = [(["kdlib.runs", "run"], *case) for case in PARAMS_TEXT_CASES] + [
    (["kdlib.train"], *case) for case in PARAMS_TEXT_CASES if case[0] in
    ("empty file", "duplicate key", "infinite lr", "run name escapes", "teacher cycle", "no runs")
]


def _tool_case(tool, label, text, needle):
    slow = tool == ["kdlib.train"] or label == "no runs"
    return pytest.param(tool, label, text, needle, id=f"{tool[0]}-{label}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("tool, label, text, needle", [_tool_case(*case) for case in TOOL_CASES])
def test_bad_params_text_is_one_line_before_any_work(tmp_path, tool, label, text, needle):
    path = _write(tmp_path, text)
    before = tree(tmp_path)
    proc = run_tool([*tool, str(path), "--quiet"], tmp_path)
    assert_one_line_refusal(proc, needle)
    assert tree(tmp_path) == before, "nothing written, not even a folder"
    assert not (tmp_path / "pwned").exists()


def test_the_runner_refuses_bad_params_before_importing_torch(tmp_path):
    """The refusal comes before the heavy imports (seconds of torch, torchvision, papermill): with a torch
    that cannot be imported, the bad params are still the one line."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    path = _write(tmp_path, "train: {epochs: 0}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    proc = subprocess.run([PY, "-m", "kdlib.runs", "run", str(path)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_refusal(proc, "train.epochs = 0 is out of range")


def _write(folder: Path, text: str) -> Path:
    path = folder / "x.yaml"
    path.write_text(text)
    return path


def _folder_params(d: Path) -> Path:
    (d / "dir.yaml").mkdir()
    return d / "dir.yaml"


def _latin1_params(d: Path) -> Path:
    (d / "latin.yaml").write_bytes(b"seed: \xff\xfe\n")
    return d / "latin.yaml"


@pytest.mark.parametrize(
    "make, needle",
    [(lambda d: d / "nope.yaml", "does not exist"), (_folder_params, "does not exist"), (_latin1_params, "not UTF-8 text")],
    ids=["missing", "folder", "latin1"],
)
def test_unreadable_params_files(tmp_path, make, needle):
    proc = run_tool(["kdlib.runs", "run", str(make(tmp_path))], tmp_path)
    assert_one_line_refusal(proc, needle)


@pytest.mark.slow
def test_layers_that_a_model_lacks_are_found_before_training(tmp_path, tiny_world):
    path = params_file(tmp_path, tiny_world, dissect={"layers": ["layer4"]})  # resnet8 has 3 stages
    proc = run_tool(["kdlib.runs", "run", str(path), "--quiet"], tmp_path)
    assert_one_line_refusal(proc, "dissect.layers: layer 'layer4' is not in CifarResNet")
    assert not (tmp_path / "outputs").exists(), "refused before any training"


# --------------------------------------------------------------------------------------------
# 2. checkpoints that would run code when loaded
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _crafted(folder: Path) -> tuple[Path, Path]:
    import torch

    marker = folder / "code-ran"
    path = folder / "evil.pt"
    torch.save({"format": "kdlib-checkpoint/2", "model": _Payload(marker)}, path)
    return path, marker


def test_crafted_checkpoint_is_refused_without_running(tmp_path):
    from kdlib.errors import KdlibError
    from kdlib.models.checkpoint import load

    path, marker = _crafted(tmp_path)
    with pytest.raises(KdlibError, match="holds objects other than tensors and plain data .* refused unread"):
        load(path)
    assert not marker.exists(), "the pickle's code must not run"


@pytest.mark.slow
def test_crafted_teacher_checkpoint_in_params_is_refused_without_running(tmp_path, tiny_world):
    path, marker = _crafted(tmp_path)
    study = params_file(tmp_path, tiny_world, teachers=[],
                        students=[{"name": "kd", "model": "resnet8_w8", "teacher": {"checkpoint": str(path)},
                                   "loss": [{"name": "kd"}]}], report={"baseline": "kd"})
    proc = run_tool(["kdlib.train", str(study), "--quiet"], tmp_path)
    assert_one_line_refusal(proc, "refused unread")
    assert not marker.exists()


def test_old_pickled_checkpoint_format_is_named(tmp_path):
    import torch

    from kdlib.errors import KdlibError
    from kdlib.models.checkpoint import load

    torch.save({"format": "kdlib-checkpoint/1", "epoch": 1}, tmp_path / "old.pt")
    with pytest.raises(KdlibError, match="is an old kdlib-checkpoint/1 checkpoint"):
        load(tmp_path / "old.pt")


# --------------------------------------------------------------------------------------------
# 3. the environment: read-only, full, a file where a folder belongs, corrupt run folders, Ctrl-C
# --------------------------------------------------------------------------------------------


def _make_read_only(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a read-only folder here")


def _undo_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


@pytest.mark.slow
def test_read_only_output_location(tmp_path, tiny_world):
    ro = tmp_path / "ro"
    study = params_file(tmp_path, tiny_world, output_root=str(ro / "outputs"))
    _make_read_only(ro)
    try:
        proc = run_tool(["kdlib.runs", "run", str(study), "--quiet"], tmp_path)
    finally:
        _undo_read_only(ro)
    assert_one_line_refusal(proc, "cannot use")
    assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, tiny_world):
    """A file-size limit stands in for a full disk: the write fails with an OSError (EFBIG), as with ENOSPC."""
    study = params_file(tmp_path, tiny_world)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    proc = run_tool(["kdlib.runs", "run", str(study), "--quiet"], tmp_path, preexec_fn=small_files)
    # the runner: a notebook that stops on an environment failure is status 1 (kdlib.runs), one line naming it
    assert_one_line_refusal(proc, "File too large", status=1)
    assert proc.stderr.startswith("error: notebook ")
    assert_nothing_half_written(tmp_path / "outputs")
    assert not list((tmp_path / "outputs").rglob("done"))


@pytest.mark.slow
def test_out_naming_an_existing_file(tmp_path, tiny_world):
    study = params_file(tmp_path, tiny_world)
    (tmp_path / "afile").write_text("x")
    for tool in (["kdlib.runs", "run"], ["kdlib.train"]):
        proc = run_tool([*tool, str(study), "--quiet", "--out", str(tmp_path / "afile")], tmp_path)
        assert_one_line_refusal(proc, "afile")
        assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.slow
def test_corrupt_run_folders(tmp_path, tiny_world):
    study = params_file(tmp_path, tiny_world, students=[])
    out = tmp_path / "study"
    assert run_tool(["kdlib.train", str(study), "--quiet", "--out", str(out)], tmp_path).returncode == 0
    run = out / "runs" / "teacher"
    (run / "done").write_text("garbage{")
    proc = run_tool(["kdlib.train", str(study), "--quiet", "--out", str(out)], tmp_path)
    assert_one_line_refusal(proc, "cannot be read as a done marker")
    (run / "done").unlink()
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    proc = run_tool(["kdlib.train", str(study), "--quiet", "--out", str(out)], tmp_path)
    assert_one_line_refusal(proc, "checkpoint.pt")
    assert_nothing_half_written(out)


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_resumes(tmp_path, tiny_world):
    study = params_file(tmp_path, tiny_world, train={**SMALL_TRAIN, "image_size": 24, "epochs": 2000,
                                                        "schedule": {"name": "constant"}}, students=[])
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "kdlib.train", str(study), "--quiet", "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "runs" / "teacher" / "metrics.csv"
    deadline = time.time() + 600  # a loaded machine may take minutes to reach the first epoch
    while not metrics.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted:")
    assert len(err.strip().splitlines()) <= 3, err
    assert_nothing_half_written(out)
    assert not (out / "runs" / "teacher" / "done").exists()


@pytest.mark.slow
def test_second_process_on_the_same_study_folder_stops_at_once(tmp_path, tiny_world):
    study = params_file(tmp_path, tiny_world, train={**SMALL_TRAIN, "image_size": 24, "epochs": 2000,
                                                        "schedule": {"name": "constant"}}, students=[])
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([PY, "-m", "kdlib.runs", "run", str(study), "--quiet", "--out", str(out)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 600
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        started = time.time()
        second = run_tool(["kdlib.runs", "run", str(study), "--quiet", "--out", str(out)], tmp_path)
        assert time.time() - started < 30
        assert_one_line_refusal(second, f"is in use by process {first.pid}")
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert first.returncode == 130, "the first process was working (interrupted, not failed) when the second came"


# --------------------------------------------------------------------------------------------
# 4. the world generator's command line
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--profile", "huge"], "error: --profile 'huge' is not a profile; valid: default, tiny"),
        (["--profile", "tiny", "--workers", "0"], "--workers 0 is not valid"),
        (["--profile", "tiny", "--seed", "-3"], "seed = -3 is not valid"),
    ],
    ids=["profile", "workers", "seed"],
)
def test_world_cli_refusals(tmp_path, args, needle):
    proc = run_tool(["kdlib.data.world", *args, "--out", str(tmp_path / "w")], tmp_path)
    assert_one_line_refusal(proc, needle)
    assert not (tmp_path / "w").exists()


def test_world_cli_out_is_a_file(tmp_path):
    """The generator's own refusal, not the OS error a later step would hit (that one also says "is a file":
    "a part of the path is a file, not a folder")."""
    (tmp_path / "w").write_text("x")
    proc = run_tool(["kdlib.data.world", "--profile", "tiny", "--out", str(tmp_path / "w")], tmp_path)
    assert_one_line_refusal(proc, f"error: output {str(tmp_path / 'w')!r} is a file; valid: a new or empty folder, or an existing world")
    assert (tmp_path / "w").read_text() == "x"

