"""Known answers for the distillation terms on fixed tensors, each computed without the code under test:
from the paper's formula by hand (plain Python or primitive torch ops), or by torchdistill's own loss
where the term is glue around one. ``kd_permuted`` is checked against every permutation it may draw."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchdistill.losses.mid_level import FTLoss, SSKDLoss

from kdlib.losses import SetupContext, StepIO, build_term


def io(logits, targets, teacher=None, **kw) -> StepIO:
    return StepIO(logits=logits, targets=targets, indices=torch.arange(len(targets)), teacher_logits=teacher, **kw)


def layered(**layers) -> nn.Module:
    """A model whose named children are the given layers, applied in turn (for set-up's shape probes)."""
    model = nn.Sequential()
    for name, module in layers.items():
        model.add_module(name, module)
    return model


def ctx(student, teacher, image_size=4, targets=None, seed=0) -> SetupContext:
    targets = torch.zeros(1, dtype=torch.long) if targets is None else targets
    return SetupContext(student=student, teacher=teacher, num_classes=3, image_size=image_size,
                        train_targets=targets, seed=seed)


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# -- logit controls --------------------------------------------------------------------------------


def test_kd_fixed_perm_forward_hand_value():
    """Row y of the table says where each teacher probability goes; KD then distils from the moved ones."""
    term = build_term({"name": "kd_fixed_perm", "temperature": 2.0})
    table = torch.tensor([[0, 2, 1, 3], [2, 1, 3, 0], [3, 0, 2, 1], [1, 2, 0, 3]])  # row y fixes column y
    term.destinations = table
    s = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.5, 0.2, -0.7, 0.0]])
    t = torch.tensor([[2.0, 0.5, -1.0, 1.0], [0.1, 1.2, 0.4, -0.3]])
    y = torch.tensor([1, 3])
    total = 0.0
    for zs, zt, label in zip(s.tolist(), t.tolist(), y.tolist()):
        p = softmax(zt, 2.0)
        moved = [0.0] * 4
        for c in range(4):
            moved[table[label][c]] = p[c]
        total += kl(moved, softmax(zs, 2.0))
    assert term(io(s, y, t)).item() == pytest.approx(4.0 * total / 2, rel=1e-6)


def _all_permutation_values(s, t, y, temperature):
    """KD value for every way of permuting each sample's non-target teacher probabilities."""
    per_sample = []
    for zs, zt, label in zip(s.tolist(), t.tolist(), y.tolist()):
        p, q = softmax(zt, temperature), softmax(zs, temperature)
        others = [c for c in range(len(p)) if c != label]
        options = []
        for perm in itertools.permutations(others):
            moved = list(p)
            for src, dst in zip(others, perm):
                moved[dst] = p[src]
            options.append((perm, kl(moved, q)))
        per_sample.append(options)
    return {tuple(o[0] for o in combo): temperature**2 * sum(o[1] for o in combo) / len(per_sample)
            for combo in itertools.product(*per_sample)}


def test_kd_permuted_is_kd_from_one_uniformly_drawn_permutation_drawn_afresh_each_step():
    """With 4 classes each sample has 3! = 6 possible permutations; two samples give 36 possible values,
    computed here by hand. Every call must hit exactly one of them, all 36 must occur about equally
    often, and consecutive calls (no reseeding: one step after another) must not repeat one draw."""
    s = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.5, 0.2, -0.7, 0.0]])
    t = torch.tensor([[2.0, 0.5, -1.0, 1.3], [0.1, 1.9, 0.4, -0.8]])
    y = torch.tensor([1, 3])
    values = _all_permutation_values(s, t, y, 1.5)
    assert min(abs(a - b) for a, b in itertools.combinations(values.values(), 2)) > 1e-4  # tell them apart
    term = build_term({"name": "kd_permuted", "temperature": 1.5})
    torch.manual_seed(0)
    hits = []
    for _ in range(3600):
        v = term(io(s, y, t)).item()
        match = [k for k, w in values.items() if abs(w - v) < 1e-5]
        assert len(match) == 1, v
        hits.append(match[0])
    counts = torch.tensor([hits.count(k) for k in values], dtype=torch.float32)
    assert counts.min() > 100 * 0.6 and counts.max() < 100 * 1.4  # expected 100 each (binomial sd ~10)
    repeats = sum(a == b for a, b in zip(hits, hits[1:]))
    assert repeats < 3599 / 36 * 1.5  # a draw reused across steps would repeat every time


# -- feature terms -----------------------------------------------------------------------------------


def test_at_paper_mode_hand_value():
    """Zagoruyko & Komodakis Eq. 2: sum over pairs of || Q_s / ||Q_s|| - Q_t / ||Q_t|| ||_2 with
    Q = sum_c F_c^2 (flattened), averaged over the batch."""
    torch.manual_seed(1)
    fs, ft = torch.randn(3, 4, 2, 2), torch.randn(3, 6, 2, 2)
    step = io(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long), torch.zeros(3, 3),
              student_io={"layer3": {"output": fs}}, teacher_io={"layer3": {"output": ft}})
    got = build_term({"name": "at", "layers": ["layer3"], "mode": "paper"})(step).item()
    total = 0.0
    for b in range(3):
        qs = [sum(fs[b, c, i, j].item() ** 2 for c in range(4)) for i in range(2) for j in range(2)]
        qt = [sum(ft[b, c, i, j].item() ** 2 for c in range(6)) for i in range(2) for j in range(2)]
        ns, nt = math.sqrt(sum(v * v for v in qs)), math.sqrt(sum(v * v for v in qt))
        total += math.sqrt(sum((a / ns - c / nt) ** 2 for a, c in zip(qs, qt)))
    assert got == pytest.approx(total / 3, rel=1e-5)


def _batchnorm_train(x):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_fitnet_hand_value():
    """Romero et al.: MSE between the teacher's hint and the regressor (conv 3x3, BatchNorm on batch
    statistics, ReLU) of the student's guided layer."""
    student = layered(layer3=nn.Conv2d(3, 2, 1))
    teacher = layered(layer3=nn.Conv2d(3, 5, 1))
    term = build_term({"name": "fitnet", "layer": "layer3"})
    term.setup(ctx(student, teacher))
    torch.manual_seed(2)
    conv = term.regressor.conv
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight))
        conv.bias.copy_(torch.randn_like(conv.bias))
    fs, ft = torch.randn(4, 2, 3, 3), torch.randn(4, 5, 3, 3)
    step = io(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3),
              student_io={"layer3": {"output": fs}}, teacher_io={"layer3": {"output": ft}})
    term.train()
    got = term(step).item()
    guided = _batchnorm_train(F.conv2d(fs, conv.weight, conv.bias, padding=1)).clamp_min(0)
    assert got == pytest.approx(((guided - ft) ** 2).mean().item(), rel=1e-5)


def test_ft_hand_value_and_torchdistill():
    """Kim et al.: mean | T(F_s) / ||T(F_s)|| - E(F_t) / ||E(F_t)|| | (p = 1), the paraphraser's encoder E
    on the teacher's layer, the translator T on the student's; and the paraphraser stage's reconstruction
    mean (D(E(F_t)) - F_t)^2."""
    student = layered(layer4=nn.Conv2d(3, 4, 1))
    teacher = layered(layer4=nn.Conv2d(3, 6, 1))
    term = build_term({"name": "ft", "layer": "layer4", "k": 0.5})
    term.setup(ctx(student, teacher))
    torch.manual_seed(3)
    fs, ft = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    step = io(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3),
              student_io={"layer4": {"output": fs}}, teacher_io={"layer4": {"output": ft}})
    term.eval()
    got = term(step).item()
    with torch.no_grad():
        factor = term.paraphraser(ft).flatten(1)
        translated = term.translator(fs).flatten(1)
    a = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in translated.tolist()]
    b = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in factor.tolist()]
    hand = sum(abs(x - z) for ra, rb in zip(a, b) for x, z in zip(ra, rb)) / (len(a) * len(a[0]))
    assert got == pytest.approx(hand, rel=1e-5)
    ref = FTLoss(p=1, reduction="mean")({"translator": {"output": translated}}, {"paraphraser": {"output": factor}})
    assert got == pytest.approx(ref.item(), rel=1e-6)
    (stage,) = term.stages()
    term.paraphraser.uses_decoder = True
    with torch.no_grad():
        rebuilt = term.paraphraser(ft)
    term.paraphraser.uses_decoder = False
    assert stage.loss(step).item() == pytest.approx(((rebuilt - ft) ** 2).mean().item(), rel=1e-5)


def _normalised(x, linear):
    z = x @ linear.weight.T + linear.bias
    return z / z.norm(dim=1, keepdim=True)


def test_crd_hand_value_and_memory_update():
    """Tian et al. with NCE over a memory bank (torchdistill's CRDLoss): embeddings e_s = normalise(W_s f_s),
    e_t likewise; for the positive and K negatives j of sample b, h = exp(m_j . e / tau) / Z (Z = the
    first batch's mean of exp(.) times N); the loss of one direction is
    -(sum_b log(h_pos / (h_pos + K/N)) + sum_{b,j} log((K/N) / (h_j + K/N))) / B; both directions summed.
    Then each positive's memory row becomes normalise(momentum * row + (1 - momentum) * e)."""
    n, k, dim, tau, mom = 6, 2, 3, 0.5, 0.5
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    student = layered(conv=nn.Conv2d(3, 3, 1), avgpool=nn.Flatten(), fc=nn.Identity())
    term = build_term({"name": "crd", "layer": "avgpool", "feat_dim": dim, "negatives": k, "nce_temperature": tau, "momentum": mom})
    term.setup(ctx(student, student, image_size=2, targets=targets))
    torch.manual_seed(4)
    bank_s, bank_t = torch.randn(n, dim), torch.randn(n, dim)
    term.loss.memory_v1.copy_(bank_s)
    term.loss.memory_v2.copy_(bank_t)
    negatives = torch.tensor([[2, 4], [5, 0]])  # of other classes than samples 1 and 3
    term.sampler.forward = lambda t, count: negatives
    fs, ft = torch.randn(2, 12), torch.randn(2, 12)
    pos = torch.tensor([1, 3])
    step = StepIO(logits=torch.zeros(2, 3), targets=targets[pos], indices=pos, teacher_logits=torch.zeros(2, 3),
                  student_io={"avgpool": {"output": fs}}, teacher_io={"avgpool": {"output": ft}})
    with torch.no_grad():
        es, et = _normalised(fs, term.student_embed.linear), _normalised(ft, term.teacher_embed.linear)
        got = term(step).item()

    def direction(bank, e):
        rows = torch.cat([pos.view(-1, 1), negatives], 1)
        raw = [[math.exp(float(bank[rows[b, j]] @ e[b]) / tau) for j in range(k + 1)] for b in range(2)]
        z = sum(sum(r) for r in raw) / (2 * (k + 1)) * n
        noise = k / n
        total = 0.0
        for b in range(2):
            h = [v / z for v in raw[b]]
            total += math.log(h[0] / (h[0] + noise + 1e-7)) + sum(math.log(noise / (v + noise + 1e-7)) for v in h[1:])
        return -total / 2

    # the student's embedding meets the teacher-side bank (memory_v2) and vice versa
    assert got == pytest.approx(direction(bank_t, es) + direction(bank_s, et), rel=1e-5)
    moved = mom * bank_s[pos] + (1 - mom) * es
    assert torch.allclose(term.loss.memory_v1[pos], moved / moved.norm(dim=1, keepdim=True), atol=1e-6)
    untouched = torch.tensor([0, 2, 4, 5])
    assert torch.equal(term.loss.memory_v1[untouched], bank_s[untouched])


def test_crd_negatives_are_other_classes_and_uniform():
    from kdlib.losses.crd import NegativeSampler

    targets = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    draw = NegativeSampler(targets)
    torch.manual_seed(5)
    picks = draw(torch.tensor([1] * 3000), 4)
    assert (targets[picks] != 1).all()
    share = torch.bincount(picks.flatten(), minlength=60).float() / picks.numel()
    others = torch.cat([torch.arange(10), torch.arange(30, 60)])
    assert torch.allclose(share[others], torch.full((40,), 1 / 40), atol=0.006)  # sd ~0.0016 per index


def test_sskd_glue_equals_torchdistill_sskdloss():
    """The term feeds torchdistill's SSKDLoss every view's logits, its own head on the student's features
    and the frozen teacher head on the teacher's, with the loss weights (0, 0, ss_weight, tf_weight)."""
    student = layered(conv=nn.Conv2d(3, 3, 1), avgpool=nn.Flatten(), fc=nn.Identity())
    term = build_term({"name": "sskd", "ss_weight": 10.0, "tf_weight": 2.7, "ss_ratio": 0.75, "tf_ratio": 1.0})
    term.setup(ctx(student, student, image_size=2))
    torch.manual_seed(6)
    b, classes = 4, 3
    fs, ft = torch.randn(4 * b, 12), torch.randn(4 * b, 12)
    zs, zt = torch.randn(4 * b, classes), torch.randn(4 * b, classes)
    y = torch.randint(0, classes, (b,))
    step = StepIO(logits=zs[::4], targets=y, indices=torch.arange(b), teacher_logits=zt[::4], views=4,
                  all_logits=zs, all_teacher_logits=zt, student_io={"avgpool": {"output": fs}},
                  teacher_io={"avgpool": {"output": ft}})
    got = term(step).item()
    ref = SSKDLoss("logits", "logits", "head", "head", kl_temp=4.0, ss_temp=0.5, tf_temp=4.0, ss_ratio=0.75,
                   tf_ratio=1.0, loss_weights=[0.0, 0.0, 10.0, 2.7])
    with torch.no_grad():
        expected = ref({"logits": {"output": zs}, "head": {"output": term.student_head(fs)}},
                       {"logits": {"output": zt}, "head": {"output": term.teacher_head(ft)}}, y)
    assert got == pytest.approx(expected.item(), rel=1e-6)
