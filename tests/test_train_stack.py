"""Stacked training: a network trained in a stack is the same network trained alone (to float tolerance),
writes an ordinary checkpoint, trains deterministically, resumes, and the plan says who stacks with whom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlib import layout
from kdlib.data.splits import load_splits
from kdlib.errors import KdlibError
from kdlib.models import build, checkpoint
from kdlib.models.stacked import StackedNetwork, member_slices
from kdlib.params import load_study
from kdlib.train import fit_stack, load_model, plan
from kdlib.train.fit import load_teacher
from kdlib.train.optim import member_optimizer_state, stacked_optimizer_state
from kdlib.train.runfiles import recover, save
from kdlib.train.seeding import deterministic
from kdlib.train.session import NetworkSpec, TrainingSession

from train_helpers import study

ROOT = Path(__file__).resolve().parents[1]
# float32: a stack's kernels sum in another order than one network's; 3 steps of SGD at lr 0.05 moved
# the weights of the tiny-world students apart by at most 2e-6 of each tensor's norm (measured)
FLOAT32_TOLERANCE = 2e-5
# bfloat16 rounds to 3 significant digits, and rounding differences grow with every step: after one
# step at most 5e-4 of a tensor's norm (measured)
BFLOAT16_TOLERANCE = 5e-3


def students(teacher: Path) -> list[dict]:
    return [
        {"name": "scratch", "model": "resnet8_w8"},
        {"name": "ls", "model": "resnet8_w8", "loss": [{"name": "ls", "epsilon": 0.1}]},
        {"name": "kdp", "model": "resnet8_w8", "teacher": {"checkpoint": str(teacher)},
         "loss": [{"name": "ce", "weight": 0.5}, {"name": "kd_permuted", "weight": 0.5, "temperature": 2.0}]},
        # a second network drawing loss randomness: each must draw from its own stream, as if alone
        {"name": "kdp4", "model": "resnet8_w8", "teacher": {"checkpoint": str(teacher)},
         "loss": [{"name": "ce", "weight": 0.5}, {"name": "kd_permuted", "weight": 0.5, "temperature": 4.0}]},
    ]


def relative_difference(a: dict, b: dict) -> float:
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-12)).item()
               for k in b if b[k].is_floating_point())


def test_stacked_network_is_its_members_and_gives_their_states_back():
    torch.manual_seed(0)
    nets = [build("resnet8_w8", 5) for _ in range(3)]
    for n in nets:  # make the BatchNorm buffers differ too
        n.train()(torch.randn(4, 3, 12, 12))
    stack = StackedNetwork(nets, "resnet8_w8")
    x = torch.randn(6, 3, 12, 12)
    for n in nets:
        n.eval()
    stack.eval()
    with torch.no_grad():
        out = stack(x)
        for g, n in enumerate(nets):
            want = n(x)
            assert out.shape == (6, 3, 5)
            assert ((out[:, g] - want).abs().max() / want.abs().max()).item() < 1e-5
    for g, n in enumerate(nets):
        state = stack.member_state(g)
        assert state.keys() == n.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in n.state_dict().items())
    other = StackedNetwork([build("resnet8_w8", 5) for _ in range(3)], "resnet8_w8")
    other.load_member_states([n.state_dict() for n in nets])
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), stack.state_dict().values()))
    assert [t.shape for t in member_slices(torch.zeros(2, 12, 3), 3, 1)] == [(2, 4, 3)] * 3


def test_a_model_whose_members_would_mix_is_refused():
    class Mixer(nn.Module):  # sums over channels: the members' blocks would meet
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x).sum(1, keepdim=True).flatten(1)

    with pytest.raises(KdlibError, match=r"^model mixer cannot be stacked \(its members' outputs mix\); valid: train.stack: 1$"):
        StackedNetwork([Mixer(), Mixer()], "mixer")
    lstm = nn.Sequential(nn.Flatten(), nn.LSTM(4, 4))
    with pytest.raises(KdlibError, match="layer '1' is a LSTM; valid: train.stack: 1"):
        StackedNetwork([lstm, lstm], "lstm")


def _sessions(tmp_path, world, teacher, amp: bool):
    s = study(tmp_path, world, students(teacher), amp=amp, channels_last=True, stack=4)
    splits, device = load_splits(s, s.train), torch.device("cpu")
    teachers = {"t": load_teacher(teacher, len(splits.classes), device, s.train, "t")[0]}
    specs = [NetworkSpec(i.key, i.run, i.seed, "t" if i.run.teacher else None, i.key) for i in s.instances()]
    return TrainingSession(s.train, splits, specs, teachers, device), [TrainingSession(s.train, splits, [sp], teachers, device) for sp in specs]


def _steps(session: TrainingSession, steps: int) -> TrainingSession:
    session.seed_epoch("epoch", 1)
    session.network.train()
    with session:
        for step, (x, y, i) in zip(range(steps), session.batches.epoch(session.seed, 1)):
            session.step(x, y, i, epoch=1, step=step)
    return session


@pytest.mark.slow
@pytest.mark.parametrize("amp, steps, tolerance", [(False, 3, FLOAT32_TOLERANCE), (True, 1, BFLOAT16_TOLERANCE)])
def test_a_network_trained_in_a_stack_is_the_network_trained_alone(tiny_world, tiny_teacher, tmp_path, amp, steps, tolerance):
    with deterministic(True):
        stacked, alone = _sessions(tmp_path, tiny_world, tiny_teacher, amp)
        _steps(stacked, steps)
        for g, single in enumerate(alone):
            _steps(single, steps)
            mine, theirs = stacked.member_state(g), single.member_state(0)
            assert relative_difference(mine["model_state"], theirs["model_state"]) < tolerance
            momentum = {i: s["momentum_buffer"] for i, s in mine["optimizer_state"]["state"].items()}
            want = {i: s["momentum_buffer"] for i, s in theirs["optimizer_state"]["state"].items()}
            assert momentum.keys() == want.keys() and relative_difference(momentum, want) < tolerance
            assert mine["optimizer_state"]["param_groups"] == theirs["optimizer_state"]["param_groups"]
            assert mine["model_state"].keys() == theirs["model_state"].keys()


def test_optimizer_state_cut_into_members_and_put_back_is_unchanged():
    torch.manual_seed(0)
    stacked = [nn.Parameter(torch.randn(6, 2)), nn.Parameter(torch.randn(3))]
    own = [nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(1))]  # 1, 0, 2 per network
    for name in ("sgd", "adam"):
        opt = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)(stacked + own, lr=0.1, **({"momentum": 0.9} if name == "sgd" else {}))
        (sum(p.sum() ** 2 for p in stacked + own)).backward()
        opt.step()
        state = opt.state_dict()
        ranges = [range(2, 3), range(3, 3), range(3, 5)]
        members = [member_optimizer_state(state, 2, 3, ranges, g) for g in range(3)]
        for key, value in state["state"][0].items():  # network 1's block of the first stacked tensor: rows 2-3
            want = value if value.dim() == 0 else value[2:4]
            assert torch.equal(members[1]["state"][0][key], want)
        assert torch.equal(members[2]["state"][3][next(k for k in state["state"][4] if k != "step")],
                           state["state"][4][next(k for k in state["state"][4] if k != "step")])  # network 2's second own
        assert [len(m["param_groups"][0]["params"]) for m in members] == [3, 2, 4]
        back = stacked_optimizer_state(members, 2, ranges)
        assert back["param_groups"] == state["param_groups"]
        assert back["state"].keys() == state["state"].keys()
        for i, entry in state["state"].items():
            assert all(torch.equal(back["state"][i][k], v) if torch.is_tensor(v) else back["state"][i][k] == v for k, v in entry.items())


@pytest.mark.slow
def test_stacked_fit_is_deterministic_and_writes_ordinary_checkpoints(tiny_world, tiny_teacher, tmp_path):
    runs = []
    for name in ("one", "two"):
        s = study(tmp_path / name, tiny_world, students(tiny_teacher)[:3], amp=True, channels_last=True, stack=3, epochs=2)
        folder = layout.StudyFolder.for_study(s)
        insts = s.instances()
        teachers = [None, None, tiny_teacher]
        runs.append(fit_stack(s, insts, [folder.run(i.key) for i in insts], teachers, progress=False))
    for a, b in zip(*runs):
        wa, wb = checkpoint.load(a.checkpoint), checkpoint.load(b.checkpoint)
        assert all(torch.equal(wa["model_state"][k], wb["model_state"][k]) for k in wa["model_state"])
        assert wa["identity"]["stack"] == ["scratch-s0", "ls-s0", "kdp-s0"]
        model, _ = load_model(a.checkpoint, model="resnet8_w8", num_classes=6)  # an ordinary network
        assert sorted(p.name for p in Path(a.run_dir).iterdir()) == ["checkpoint.pt", "done", "metrics.csv", "params.yaml"]
        assert a.val_acc == b.val_acc and a.epoch == 2
    assert len({json.dumps(checkpoint.load(r.checkpoint)["model_state"]["fc.bias"].tolist()) for r in runs[0]}) == 3


def test_an_interrupted_stack_save_is_finished_or_undone(tmp_path):
    folders = [tmp_path / n for n in ("a", "b", "c")]

    def state(epoch):
        return {"model": {}, "identity": {}, "epoch": epoch}

    save([(f, state(1)) for f in folders])
    epochs = lambda: [checkpoint.load(f / layout.CHECKPOINT)["epoch"] for f in folders]  # noqa: E731
    # killed while writing the next checkpoints: a and b have one, c not -> undone, all stay at epoch 1
    for f in folders[:2]:
        checkpoint.save(f / layout.CHECKPOINT_NEXT, state(2))
    recover(folders)
    assert epochs() == [1, 1, 1] and not any((f / layout.CHECKPOINT_NEXT).exists() for f in folders)
    # killed while renaming: a renamed, b and c still next -> finished, all at epoch 2
    checkpoint.save(folders[0] / layout.CHECKPOINT, state(2))
    for f in folders[1:]:
        checkpoint.save(f / layout.CHECKPOINT_NEXT, state(2))
    recover(folders)
    assert epochs() == [2, 2, 2] and not any((f / layout.CHECKPOINT_NEXT).exists() for f in folders)


def test_the_default_study_plan():
    s = load_study(ROOT / "params" / "default.yaml")
    groups = plan(s)
    keys = [g.keys for g in groups]
    teachers = [k for k in keys if k[0] in ("teacher", "ls_teacher")]
    assert teachers == [["teacher"], ["ls_teacher"]] == keys[:2]  # teachers alone, first
    stacks = keys[2:]
    assert sorted(k for g in stacks for k in g) == sorted(i.key for i in s.instances() if i.role == "student")
    cap = s.train.stack
    for g in groups[2:]:
        assert 1 <= len(g.keys) <= cap and len({i.seed for i in g.insts}) == 1
        for name in {i.run.teacher.run for i in g.insts if i.run.teacher}:
            # every student of one teacher and seed in one stack: the teacher runs once per batch
            same = [k for h in groups[2:] for k, i in zip(h.keys, h.insts) if i.seed == g.insts[0].seed and i.run.teacher and i.run.teacher.run == name]
            assert all(k in g.keys for k in same)
        assert g.needs == {i.run.teacher.run for i in g.insts if i.run.teacher}


@pytest.mark.slow
def test_selecting_one_network_of_a_stack_trains_its_stack(tiny_world, tmp_path, tiny_teacher):
    """A network's weights depend on its stack (float sums), so selecting it trains its whole stack, as the
    plan made it from the params; the stack's networks come back finished too."""
    from kdlib.train import fit_study

    s = study(tmp_path, tiny_world, students(tiny_teacher)[:2] + [{"name": "alone", "model": "resnet14_w8"}],
              stack=2, epochs=1)
    results = fit_study(s, layout.StudyFolder.for_study(s), names=["ls"], progress=False, jobs=1)
    assert [r.name for r in results] == ["scratch-s0", "ls-s0"]
    assert checkpoint.load(results[1].checkpoint)["identity"]["stack"] == ["scratch-s0", "ls-s0"]
    assert not layout.StudyFolder.for_study(s).run("alone-s0").exists()
