"""Loss terms: exact values on hand-computed inputs, torchdistill equivalence, the permuted controls."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchdistill.losses.mid_level import ATLoss, KDLoss

from kdlib.errors import KdlibError
from kdlib.losses import SetupContext, StepIO, build_objective, build_term
from kdlib.losses.kd_fixed_perm import fixed_destinations
from kdlib.losses.kd_permuted import permute_non_target, random_destinations

S = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])  # student logits
T = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 2.0]])  # teacher logits
Y = torch.tensor([0, 2])


def io(logits=S, teacher=T, targets=Y, **kw) -> StepIO:
    return StepIO(logits=logits, targets=targets, indices=torch.arange(len(targets)), teacher_logits=teacher, **kw)


def value(spec: dict, step: StepIO | None = None) -> float:
    return build_term(spec)(step or io()).item()


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_ce_exact():
    assert value({"name": "ce"}, io(S[:1], targets=Y[:1])) == pytest.approx(0.4076059644443804, abs=1e-6)  # log(e^2+e+1) - 2
    expected = sum(-math.log(softmax(z)[y]) for z, y in zip(S.tolist(), Y.tolist())) / 2
    assert value({"name": "ce"}) == pytest.approx(expected, abs=1e-6)
    assert value({"name": "ce"}, io(torch.zeros(1, 3), targets=torch.tensor([1]))) == pytest.approx(math.log(3), abs=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_ls_against_its_formula(eps):
    """(1 - eps) CE(y) + eps CE(uniform) = CE against the target (1 - eps) onehot + eps / K."""
    total = 0.0
    for z, y in zip(S.tolist(), Y.tolist()):
        p = softmax(z)
        target = [(1 - eps) * (k == y) + eps / 3 for k in range(3)]
        total += -sum(t * math.log(q) for t, q in zip(target, p))
    assert value({"name": "ls", "epsilon": eps}) == pytest.approx(total / 2, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_exact(temperature):
    """T^2 KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    total = 0.0
    for s, t in zip(S.tolist(), T.tolist()):
        p, q = softmax(t, temperature), softmax(s, temperature)
        total += sum(a * math.log(a / b) for a, b in zip(p, q))
    expected = temperature**2 * total / 2
    assert value({"name": "kd", "temperature": temperature}) == pytest.approx(expected, abs=1e-6)


def test_kd_hand_value_and_zero_when_equal():
    # one sample, T = 1: p = softmax([1, 2, 0.5]), q = softmax([2, 1, 0]) -> KL = 0.41067 (worked by hand: -0.24434 + 0.59284 + 0.06215)
    p, q = softmax([1.0, 2.0, 0.5]), softmax([2.0, 1.0, 0.0])
    assert sum(a * math.log(a / b) for a, b in zip(p, q)) == pytest.approx(0.41067, abs=1e-4)
    assert value({"name": "kd", "temperature": 1.0}, io(S[:1], T[:1], Y[:1])) == pytest.approx(0.41067, abs=1e-4)
    assert value({"name": "kd", "temperature": 3.0}, io(S, S)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("alpha, temperature", [(0.5, 1.0), (0.1, 2.0), (0.3, 4.0)])
def test_kd_equals_torchdistill_kdloss_with_alpha_mapped(alpha, temperature):
    """torchdistill's KDLoss(alpha) = alpha * ce + (1 - alpha) * kd in kdlib's explicit weights."""
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    theirs = KDLoss("fc", "output", "fc", "output", temperature=temperature, alpha=alpha)(
        {"fc": {"output": s}}, {"fc": {"output": t}}, y
    )
    objective = build_objective([{"name": "ce", "weight": alpha}, {"name": "kd", "weight": 1 - alpha, "temperature": temperature}])
    ours, _ = objective(io(s, t, y))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def entropy(p):
    return -(p * p.log()).sum(1)


def test_random_destinations_are_bijections_fixing_the_target_and_uniform():
    y = torch.tensor([2] * 6000)
    dest = random_destinations(y, 4, torch.Generator().manual_seed(0))
    assert torch.equal(dest.sort(1).values, torch.arange(4).expand(6000, 4))
    assert (dest[:, 2] == 2).all()
    # each non-target class goes to each non-target slot with probability 1/3
    for c in (0, 1, 3):
        share = torch.bincount(dest[:, c], minlength=4).float() / 6000
        assert share[2] == 0
        assert torch.allclose(share[[0, 1, 3]], torch.full((3,), 1 / 3), atol=0.03)


def test_kd_permuted_keeps_target_probability_and_entropy_but_moves_the_rest():
    torch.manual_seed(1)
    logits, y = torch.randn(256, 10) * 2, torch.randint(0, 10, (256,))
    p = logits.softmax(1)
    q = permute_non_target(p, random_destinations(y, 10))
    rows = torch.arange(256)
    assert torch.equal(q[rows, y], p[rows, y])
    assert torch.allclose(entropy(q), entropy(p), atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(256))
    moved = (q != p).any(1).float().mean()
    assert moved > 0.95  # similarity structure destroyed almost everywhere
    # the term distils from exactly that distribution
    term = build_term({"name": "kd_permuted", "temperature": 2.0})
    step = io(torch.randn(256, 10), logits, y)
    torch.manual_seed(5)
    got = term(step)
    torch.manual_seed(5)
    permuted = permute_non_target((logits / 2).softmax(1), random_destinations(y, 10))
    want = torch.nn.functional.kl_div((step.logits / 2).log_softmax(1), permuted, reduction="batchmean") * 4
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def _ctx(seed, k=10):
    return SetupContext(student=nn.Identity(), teacher=nn.Identity(), num_classes=k, image_size=8,
                        train_targets=torch.zeros(1, dtype=torch.long), seed=seed)


def test_fixed_destinations_table():
    sigma = torch.tensor([1, 2, 0, 3])  # 0->1, 1->2, 2->0, 3->3
    table = fixed_destinations(sigma)
    assert table.tolist() == [
        [0, 2, 1, 3],  # y=0: 1->2; 2 would land on 0 and takes sigma(0)=1
        [2, 1, 0, 3],  # y=1: 0 would land on 1 and takes sigma(1)=2; 2->0
        [1, 0, 2, 3],  # y=2: 0->1; 1 would land on 2 and takes sigma(2)=0
        [1, 2, 0, 3],  # y=3: sigma fixes 3, so sigma itself
    ]


def test_kd_fixed_perm_is_one_consistent_permutation_from_the_seed():
    term = build_term({"name": "kd_fixed_perm", "temperature": 1.0})
    term.setup(_ctx(seed=7))
    table = term.destinations
    assert torch.equal(table.sort(1).values, torch.arange(10).expand(10, 10))
    assert torch.equal(table.diagonal(), torch.arange(10))
    other = build_term({"name": "kd_fixed_perm"})
    other.setup(_ctx(seed=7))
    assert torch.equal(other.destinations, table)
    third = build_term({"name": "kd_fixed_perm"})
    third.setup(_ctx(seed=8))
    assert not torch.equal(third.destinations, table)
    # same label -> same relabelling; target probability and entropy kept
    logits, y = torch.randn(64, 10), torch.randint(0, 10, (64,))
    p = logits.softmax(1)
    q = permute_non_target(p, table[y])
    rows = torch.arange(64)
    assert torch.equal(q[rows, y], p[rows, y])
    assert torch.allclose(entropy(q), entropy(p), atol=1e-6)
    same = p.clone()
    same[1] = p[0]
    q2 = permute_non_target(same, table[torch.tensor([y[0]] * 64)])
    assert torch.equal(q2[0], q2[1])


def test_at_glue_matches_the_formula_and_torchdistill():
    torch.manual_seed(0)
    fs, ft = torch.randn(4, 8, 5, 5).relu(), torch.randn(4, 16, 5, 5).relu()
    step = io(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
              student_io={"layer3": {"output": fs}}, teacher_io={"layer3": {"output": ft}})
    got = build_term({"name": "at", "layers": ["layer3"]})(step)

    def att(f):
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    assert got.item() == pytest.approx((att(fs) - att(ft)).pow(2).mean().item(), rel=1e-5)
    pairs = {"p": {"student": {"io": "output", "path": "layer3"}, "teacher": {"io": "output", "path": "layer3"}, "weight": 1}}
    assert got.item() == pytest.approx(ATLoss(pairs)(step.student_io, step.teacher_io).item(), rel=1e-6)


def test_objective_is_the_explicit_weighted_sum():
    objective = build_objective([
        {"name": "ce", "weight": 0.25}, {"name": "kd", "weight": 0.75, "temperature": 2},
        {"name": "kd", "weight": 0.0, "temperature": 1}, {"name": "ls", "epsilon": 0.2},
    ])
    assert objective.labels == ["ce", "kd1", "kd2", "ls"]
    total, values = objective(io())
    expected = 0.25 * values["ce"] + 0.75 * values["kd1"] + 1.0 * values["ls"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert values["kd2"].item() > 0  # a zero-weight term is still reported
    assert objective.needs_teacher and not build_objective([{"name": "ls"}]).needs_teacher


def test_rotated_views_are_cut_to_originals_for_single_view_terms():
    logits = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)
    step = StepIO(logits=logits[::4], targets=Y, indices=torch.arange(2), views=4, all_logits=logits,
                  student_io={"x": {"output": torch.arange(8)}})
    cut = step.originals()
    assert cut.views == 1 and torch.equal(cut.student_io["x"]["output"], torch.tensor([0, 4]))
    assert torch.equal(cut.logits, logits[[0, 4]])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "kdd"}, "loss[0]: unknown loss 'kdd'; valid: at, ce, crd, fitnet, ft, kd, kd_fixed_perm, kd_permuted, ls, sskd"),
        ({"name": "kd", "temp": 4}, "loss[0] (kd): 'temp' is not an option of kd; valid: weight, temperature"),
        ({"name": "ce", "epsilon": 0.1}, "loss[0] (ce): 'epsilon' is not an option of ce; valid: weight only"),
        ({"name": "kd", "temperature": 0}, "loss[0] (kd): temperature = 0 is not valid; valid: a number > 0"),
        ({"name": "ls", "epsilon": 1.5}, "loss[0] (ls): epsilon = 1.5 is not valid; valid: a number in [0, 1]"),
        ({"name": "at", "mode": "both"}, "loss[0] (at): mode = 'both' is not valid; valid: 'code' or 'paper'"),
        ({"name": "crd", "negatives": 0}, "loss[0] (crd): negatives = 0 is not valid"),
    ],
)
def test_bad_terms_are_one_line(spec, message):
    with pytest.raises(KdlibError) as e:
        build_objective([spec])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_layer_the_model_lacks_is_one_line():
    student = nn.Sequential()
    student.add_module("layer1", nn.Conv2d(3, 4, 3, padding=1))
    ctx = SetupContext(student=student, teacher=student, num_classes=3, image_size=8,
                       train_targets=torch.zeros(1, dtype=torch.long), seed=0)
    objective = build_objective([{"name": "at", "layers": ["layer9"]}], "x.yaml: s.loss")
    with pytest.raises(KdlibError) as e:
        objective.setup(ctx)
    assert str(e.value) == (
        "x.yaml: s.loss[0] (at) (student student): layer 'layer9' is not in the model; valid: a module path such as layer1"
    )


def test_a_teacher_term_without_teacher_is_one_line():
    ctx = SetupContext(student=nn.Linear(2, 2), teacher=None, num_classes=2, image_size=8,
                       train_targets=torch.zeros(1, dtype=torch.long), seed=0)
    with pytest.raises(KdlibError, match=r"loss\[1\] \(kd\) needs a teacher"):
        build_objective([{"name": "ce"}, {"name": "kd"}]).setup(ctx)
