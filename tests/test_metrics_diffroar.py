"""DiffROAR on a toy task whose answer is known, keep-masks, pair averaging, and the real retrainer."""

from __future__ import annotations

import pytest
import torch

from kdlib.errors import KdlibError
from kdlib.metrics.diffroar import DiffRoar, keep_mask, masked, pair_stats
from kdlib.params.metrics import RetrainParams

SIZE = 8
PATCH = (slice(2, 4), slice(5, 7))  # 4 of 64 pixels per channel decide the label


def toy(n: int, seed: int):
    """Two classes; every coordinate is noise except a 2x2 patch (all channels) holding +-1.5 by class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen)
    images[:, :, PATCH[0], PATCH[1]] += (labels.float() * 3 - 1.5).view(n, 1, 1, 1)
    return images, labels


def oracle(images: torch.Tensor) -> torch.Tensor:
    """The attribution that knows the answer: 1 on the patch, 0 elsewhere (ties broken by position)."""
    maps = torch.zeros_like(images)
    maps[:, :, PATCH[0], PATCH[1]] = 1.0
    return maps


def logistic(train_x, train_y, test_x, test_y, seed: int) -> float:
    """A retraining written here (not kdlib.train): logistic regression, full-batch gradient descent."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(train_x[0].numel(), generator=gen) * 0.01).requires_grad_(True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.5)
    x, y = train_x.flatten(1), train_y.float()
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((test_x.flatten(1) @ w + b > 0).long() == test_y).double().mean())


def test_keep_mask_keeps_the_top_or_bottom_fraction_of_each_channel():
    scores = torch.arange(2 * 3 * 16, dtype=torch.float32).view(2, 3, 4, 4)
    scores[:, 1] = scores[:, 1].flip(-2)  # channel 1's largest values in row 0: ranks are per channel
    top, bottom = keep_mask(scores, 0.25, "top"), keep_mask(scores, 0.25, "bottom")
    assert top.sum(dim=(2, 3)).tolist() == [[4, 4, 4]] * 2 == bottom.sum(dim=(2, 3)).tolist()
    assert top[0, 0, 3].all() and bottom[0, 0, 0].all() and top[0, 1, 3].tolist() == [False] * 4
    assert top[0, 1, 0].all() and bottom[0, 1, 3].all()
    assert not bool((top & bottom).any())
    assert keep_mask(scores, 1.0, "top").all() and keep_mask(scores, 0.01, "top").sum(dim=(2, 3)).tolist() == [[1, 1, 1]] * 2


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_k_outside_zero_one_is_one_line(k):
    with pytest.raises(KdlibError, match=rf"k\[0\] = {k} is out of range; valid: a fraction 0 < k <= 1"):
        keep_mask(torch.zeros(1, 1, 2, 2), k, "top")
    with pytest.raises(KdlibError, match="valid: a fraction 0 < k <= 1"):
        DiffRoar(ks=[0.5, k])


def test_removed_coordinates_take_the_fill_value():
    images = torch.ones(1, 1, 2, 2)
    keep = torch.tensor([[[[True, False], [False, True]]]])
    assert masked(images, keep, 0.25).tolist() == [[[[1.0, 0.25], [0.25, 1.0]]]]
    train, _ = toy(50, 0)
    assert DiffRoar().fill_value(train) == pytest.approx(float(train.mean()))
    assert DiffRoar(fill=0.0).fill_value(train) == 0.0


def test_pairs_are_averaged_over_every_top_bottom_combination():
    mean, sd = pair_stats([0.9, 0.8], [0.5, 0.3])  # diffs 0.4, 0.6, 0.3, 0.5
    assert mean == pytest.approx(0.45) and sd == pytest.approx(0.0125 ** 0.5)

    results = iter([0.9, 0.8, 0.5, 0.3])  # top run 0, top run 1, bottom run 0, bottom run 1
    seeds = []

    def scripted(train_x, train_y, test_x, test_y, seed):
        seeds.append(seed)
        return next(results)

    x, y = toy(20, 1)
    scores = DiffRoar(ks=[0.5], runs=2, random_control=False)(
        None, x, y, x, y, scripted, attributions=(oracle(x), oracle(x)))
    assert scores["given/k=0.5"] == {"diffroar": pytest.approx(0.45), "diffroar_sd": pytest.approx(0.0125 ** 0.5),
                                     "top_accuracy": pytest.approx(0.85), "bottom_accuracy": pytest.approx(0.4)}
    assert seeds[:2] == seeds[2:] and seeds[0] != seeds[1], "run r has one seed on both sides"


@pytest.mark.slow
def test_toy_task_top_k_keeps_the_deciding_feature_and_bottom_k_loses_it(tmp_path):
    train, test = toy(400, 2), toy(400, 3)
    metric = DiffRoar(ks=[4 / 64], random_control=True)
    scores = metric(None, *train, *test, logistic, cache_dir=tmp_path, attributions=(oracle(train[0]), oracle(test[0])))
    at_k = scores["given/k=0.0625"]
    assert at_k["top_accuracy"] > 0.95 and abs(at_k["bottom_accuracy"] - 0.5) < 0.1
    assert at_k["diffroar"] > 0.4 and scores["given/mean"]["diffroar"] == at_k["diffroar"]
    assert abs(scores["random/k=0.0625"]["diffroar"]) < 0.1, "a random attribution gives about 0"
    assert metric.direction("diffroar") == "higher"
    assert len(list(tmp_path.glob("keep-*.npy"))) == 8  # (given, random) x (top, bottom) x (train, test)
    again = metric(None, *train, *test, logistic, cache_dir=tmp_path, attributions=(oracle(train[0]), oracle(test[0])))
    assert again == scores, "deterministic, and the cached keep-masks give the same masked data"


def test_attributions_of_another_size_and_nan_are_one_line():
    x, y = toy(10, 4)
    with pytest.raises(KdlibError, match=r"attributions of shape \(10, 3, 4, 4\) do not match images of shape \(10, 3, 8, 8\)"):
        DiffRoar()(None, x, y, x, y, logistic, attributions=(torch.zeros(10, 3, 4, 4), oracle(x)))
    bad = oracle(x)
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(KdlibError, match=r"image 3 has nan at channel 0, pixel \(1, 1\); valid: finite values"):
        DiffRoar()(None, x, y, x, y, logistic, attributions=(oracle(x), bad))


def test_zero_attributions_give_a_defined_curve():
    x, y = toy(30, 5)
    calls = []
    scores = DiffRoar(ks=[0.5], random_control=False)(
        None, x, y, x, y, lambda *a: calls.append(a[0]) or 0.5, attributions=(torch.zeros_like(x), torch.zeros_like(x)))
    assert scores["given/k=0.5"]["diffroar"] == 0.0 and len(calls) == 2
    assert torch.isfinite(calls[0]).all()


# --------------------------------------------------------------------------------------------
# The real retraining (kdlib.train.retrain)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_retrainer_learns_the_toy_task_deterministically_and_caches(tmp_path):
    from kdlib.train.retrain import Retrainer

    (train_x, train_y), (test_x, test_y) = toy(256, 6), toy(128, 7)
    params = RetrainParams(epochs=3, batch_size=64, amp=False)
    retrain = Retrainer("resnet8_w8", 2, params, cache_dir=tmp_path)
    first = retrain(train_x, train_y, test_x, test_y, seed=1)
    assert first > 0.9 and retrain.trained == 1
    assert retrain(train_x, train_y, test_x, test_y, seed=1) == first and retrain.reused == 1
    fresh = Retrainer("resnet8_w8", 2, params)
    assert fresh(train_x, train_y, test_x, test_y, seed=1) == first, "same seed, same data: same accuracy"
    retrain(train_x, train_y, test_x, test_y, seed=2)
    states = [torch.load(p, weights_only=True)["state"] for p in sorted(tmp_path.glob("retrain-*.pt"))]
    assert len(states) == 2 and retrain.trained == 2 and retrain.seconds > 0
    assert not torch.equal(states[0]["conv1.weight"], states[1]["conv1.weight"]), "another seed: other weights"
    removed = Retrainer("resnet8_w8", 2, params)(masked(train_x, ~oracle(train_x).bool(), 0.0), train_y,
                                                 masked(test_x, ~oracle(test_x).bool(), 0.0), test_y, seed=1)
    assert removed < 0.7, "without the deciding patch the task is chance"


def test_retrainer_refuses_mismatched_tensors_and_unknown_models():
    from kdlib.train.retrain import Retrainer

    with pytest.raises(KdlibError, match="unknown model"):
        Retrainer("resnet9", 2)
    with pytest.raises(KdlibError, match="valid: as many labels as images"):
        Retrainer("resnet8_w8", 2)(torch.zeros(4, 3, 8, 8), torch.zeros(3, dtype=torch.long), torch.zeros(2, 3, 8, 8),
                                   torch.zeros(2, dtype=torch.long), 0)


def test_train_images_keeps_a_class_balanced_prefix_for_retraining():
    x, y = toy(40, 8)
    seen = []
    DiffRoar(ks=[0.5], random_control=False, train_images=10)(
        None, x, y, x, y, lambda tx, ty, *rest: seen.append(ty) or 0.5, attributions=(oracle(x), oracle(x)))
    assert [len(t) for t in seen] == [10, 10] and torch.bincount(seen[0]).tolist() == [5, 5]
