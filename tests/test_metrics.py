"""Interpretability measures on hand-made maps with known scores: perfect, inverted, uniform, zero maps;
score directions; invariances; the bad-input lines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlib.errors import KdlibError
from kdlib.metrics import METRICS, build
from kdlib.metrics.class_similarity import ClassSimilarity, entropy
from kdlib.metrics.five_band import FiveBand, bands
from kdlib.metrics.gradient_alignment import GradientAlignment, alignment, cosine
from kdlib.metrics.localisation import mass_inside, roc_auc
from kdlib.metrics.object_centricity import ObjectCentricity, detector_scores, unit_mass, unit_shares
from kdlib.params import parse_study
from kdlib.params.metrics import MEASURES

# one 4x4 image: 12 background pixels, 3 object pixels, 1 part pixel
MASK = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]], dtype=torch.uint8)[None]
TRUTH = torch.tensor([0.0, 0.4, 0.9])[MASK.long()]  # the ground-truth heatmap


def three(heat: torch.Tensor) -> torch.Tensor:
    """[N, H, W] -> [N, 3, H, W]: the same value in each channel (Five-Band sums them)."""
    return heat[:, None].repeat(1, 3, 1, 1).float()


def approx(value, rel=1e-5):
    return pytest.approx(value, rel=rel, abs=1e-5)


# --------------------------------------------------------------------------------------------
# Five-Band
# --------------------------------------------------------------------------------------------


def test_bands_are_lower_exclusive_upper_inclusive():
    values = torch.tensor([-1.0, -0.7, -0.69, -0.3, -0.29, 0.0, 0.3, 0.31, 0.7, 0.71, 1.0], dtype=torch.float64)
    assert bands(values, 0.3, 0.7).tolist() == [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "name, heat, expected",
    [
        # perfect: bands 0/1/2 everywhere right: TP 4, FP 0, TN 12, FN 0
        ("perfect", TRUTH, {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "fpr": 0.0}),
        # inverted: bands 0/-1/-2: TP 0, FP 4 (non-zero, wrong band), TN 12, FN 0
        ("inverted", -TRUTH, {"accuracy": 12 / 16, "precision": 0.0, "recall": 0.0, "fpr": 4 / 16}),
        # uniform: band 2 everywhere: TP 1 (the part), FP 15, TN 0, FN 0
        ("uniform", torch.ones_like(TRUTH), {"accuracy": 1 / 16, "precision": 1 / 16, "recall": 1.0, "fpr": 1.0}),
        # all zero: band 0 everywhere: TP 0, FP 0, TN 12, FN 4 (a defined value: eps in every denominator)
        ("zero", torch.zeros_like(TRUTH), {"accuracy": 12 / 16, "precision": 0.0, "recall": 0.0, "fpr": 0.0}),
    ],
)
def test_five_band_hard_scores_of_hand_made_maps(name, heat, expected):
    scores = FiveBand().score(three(heat), MASK)
    assert {k: scores[f"hard_{k}"] for k in expected} == {k: approx(v) for k, v in expected.items()}


def test_five_band_normalises_by_the_largest_magnitude_whatever_its_sign():
    """Part -1.0, object +0.5: divided by max |h| = 1 the object is 0.5 (band 1, right) and the part band -2
    (wrong); divided by the maximum (0.5) the object would be band 2. TP 3, FP 1, TN 12, FN 0."""
    heat = torch.where(MASK == 2, -1.0, torch.where(MASK == 1, 0.5, 0.0))
    scores = FiveBand().score(three(heat), MASK)
    expected = {"accuracy": 15 / 16, "precision": 3 / 4, "recall": 1.0, "fpr": 1 / 13}
    assert {k: scores[f"hard_{k}"] for k in expected} == {k: approx(v) for k, v in expected.items()}


def test_five_band_soft_steps_move_the_heatmap_thresholds_only():
    """The perfect map's object is 0.4 / 0.9 = 0.444 after normalisation: the upper threshold 0.7 - 0.005 i
    drops below it at steps i = 52..55 (4 of 56), where the object turns band 2 (3 pixels wrong, TP 1, FP 3)."""
    scores = FiveBand().score(three(TRUTH), MASK)
    assert scores["soft_mean_accuracy"] == approx((52 * 1.0 + 4 * 13 / 16) / 56)
    assert scores["soft_mean_precision"] == approx((52 * 1.0 + 4 * 0.25) / 56)
    assert scores["soft_best_accuracy"] == approx(1.0) and scores["soft_best_fpr"] == approx(0.0)
    coarse = FiveBand(soft_step=0.02, soft_steps=11).score(three(TRUTH), MASK)  # 0.7 - 0.2 = 0.5 > 0.444: never
    assert coarse["soft_mean_accuracy"] == approx(1.0)


def _reference_five_band(heat, mask, low=0.3, high=0.7):
    """Per-pixel reference written from the definition (paper-facts.md), one image, hard thresholds."""
    peak = max(abs(v) for v in heat.flatten().tolist())
    truth_values = {0: 0.0, 1: 0.4, 2: 0.9}

    def band(v, lo, hi):
        if v <= -hi:
            return -2
        if v <= -lo:
            return -1
        if v <= lo:
            return 0
        return 1 if v <= hi else 2

    tp = fp = tn = fn = same = 0
    for h, m in zip(heat.flatten().tolist(), mask.flatten().tolist()):
        p, t = band(h / peak if peak else h, low, high), band(truth_values[m], 0.3, 0.7)
        same += p == t
        if p != 0 and t != 0 and p == t:
            tp += 1
        elif p != 0:
            fp += 1
        elif t == 0:
            tn += 1
        else:
            fn += 1
    n = len(mask.flatten())
    return {"accuracy": same / n, "precision": tp / (tp + fp + 1e-6), "recall": tp / (tp + fn + 1e-6), "fpr": fp / (fp + tn + 1e-6)}


def test_five_band_matches_a_per_pixel_reference_on_random_signed_maps():
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (6, 7, 9), generator=gen, dtype=torch.uint8)
    maps = torch.randn(6, 3, 7, 9, generator=gen)
    scores = FiveBand(heatmap_thresholds=[0.3, 0.5]).score(maps, masks)  # the older pipeline's heatmap bands
    refs = [_reference_five_band(maps[i].sum(0), masks[i], 0.3, 0.5) for i in range(6)]
    for kind in ("accuracy", "precision", "recall", "fpr"):
        assert scores[f"hard_{kind}"] == approx(sum(r[kind] for r in refs) / 6)


def test_five_band_is_unchanged_by_a_positive_scale_and_changed_by_a_negative_one():
    gen = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 3, (4, 8, 8), generator=gen, dtype=torch.uint8)
    maps = torch.randn(4, 3, 8, 8, generator=gen)
    base = FiveBand().score(maps, masks)
    assert FiveBand().score(maps * 3.7, masks) == {k: approx(v, 1e-9) for k, v in base.items()}
    assert FiveBand().score(-maps, masks) != base


def test_five_band_directions_rank_perfect_above_inverted_and_uniform():
    metric = FiveBand()
    perfect, worse = metric.score(three(TRUTH), MASK), [metric.score(three(h), MASK) for h in (-TRUTH, torch.ones_like(TRUTH))]
    for key in ("hard_accuracy", "hard_precision", "hard_fpr"):
        sign = 1 if metric.direction(key) == "higher" else -1
        assert all(sign * (perfect[key] - w[key]) > 0 for w in worse), key
    assert metric.direction("hard_fpr") == "lower" and metric.direction("soft_best_recall") == "higher"


# --------------------------------------------------------------------------------------------
# Mass inside, ROC AUC, gradient alignment
# --------------------------------------------------------------------------------------------

REGION = (MASK >= 1).flatten(1)


def test_mass_and_auc_of_perfect_inverted_uniform_and_zero_maps():
    inside = REGION.double()
    assert mass_inside(inside, REGION).tolist() == [1.0] and roc_auc(inside, REGION).tolist() == [1.0]
    assert mass_inside(1 - inside, REGION).tolist() == [0.0] and roc_auc(1 - inside, REGION).tolist() == [0.0]
    assert mass_inside(torch.ones(1, 16), REGION).tolist() == [0.25] and roc_auc(torch.ones(1, 16), REGION).tolist() == [0.5]
    assert mass_inside(torch.zeros(1, 16), REGION).tolist() == [0.25], "an all-zero map says nothing: the uniform value"
    assert roc_auc(torch.zeros(1, 16), REGION).tolist() == [0.5]


def test_auc_counts_ties_one_half():
    # inside: 3 and 2, outside: 1 and 2 -> pairs (3>1), (3>2), (2>1), (2=2: 1/2) -> 3.5 / 4
    weights, region = torch.tensor([[3.0, 1.0, 2.0, 2.0]]), torch.tensor([[True, False, True, False]])
    assert roc_auc(weights, region).tolist() == [0.875]
    assert math.isnan(float(roc_auc(weights, torch.ones_like(region))[0])), "no outside pixel: undefined"


def test_alignment_sums_magnitudes_over_channels_and_is_scale_invariant():
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0][MASK[0] >= 1] = -2.0  # object mass 4 x 2 in channel 0 (sign ignored)
    maps[0, 2, 0, 0] = 8.0  # background mass 8 in channel 2
    scores = alignment(maps, MASK)
    assert scores["mass_in_object"] == approx(0.5) and scores["object_area"] == approx(0.25)
    assert alignment(maps * 5, MASK) == {k: approx(v, 1e-9) for k, v in scores.items()}
    assert cosine(maps, maps) == approx(1.0) and cosine(maps, -maps) == approx(-1.0)


class _Linear(nn.Module):
    """logits = W x (flattened): its input gradients are known in closed form."""

    def __init__(self, classes=3, size=4):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(3 * size * size, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_gradients_of_the_logit_and_of_the_loss_are_the_exact_input_gradients():
    model = _Linear()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2])
    from kdlib.metrics.saliency import attribute, parse_method

    logit = attribute(model, x, y, parse_method({"name": "gradient"}))
    assert torch.allclose(logit, model.fc.weight[y].view(2, 3, 4, 4), atol=1e-6)
    loss = attribute(model, x, y, parse_method({"name": "gradient", "output": "loss"}))
    xg = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)[0]
    assert torch.allclose(loss, expected, atol=1e-6)
    again = attribute(model, x, y, parse_method({"name": "gradient", "output": "loss"}))
    assert torch.equal(loss, again), "deterministic"


def test_gradient_alignment_with_a_reference_gives_cosine_one_for_the_same_network():
    model = _Linear()
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    masks = MASK.repeat(4, 1, 1)
    scores = GradientAlignment()(model, x, torch.tensor([0, 1, 2, 0]), masks, reference=model)
    assert set(scores) == {"gradient[output=loss]", "gradient"}
    assert scores["gradient"]["cosine_to_reference"] == approx(1.0)
    assert 0 <= scores["gradient"]["mass_in_object"] <= 1 and 0 <= scores["gradient"]["auc"] <= 1


# --------------------------------------------------------------------------------------------
# Object-centricity
# --------------------------------------------------------------------------------------------


class _Copy(nn.Module):
    """``layer`` outputs its two input channels unchanged (unit 0: channel 0, unit 1: channel 1)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(x[:, :2]).mean(dim=(2, 3))


class _FakeLayer:
    """The part of :class:`kdlib.dissect.LayerResult` detector_scores reads: unit 1 is an object detector."""

    layer, units, categories = "layer", 2, ["object", "scene"]

    def detectors(self, iou_threshold=None):
        import pandas as pd

        return pd.DataFrame({"unit": [1], "category": ["object"], "score": [0.2]})


def test_object_centricity_of_an_object_unit_and_a_background_unit():
    obj = (MASK >= 1).float()
    images = torch.stack([obj, 1 - obj, torch.ones_like(obj)], dim=1)  # [1, 3, 4, 4]
    inside, total = unit_mass(_Copy(), images, MASK, ["layer"])["layer"]
    assert inside.tolist() == [[4.0, 0.0]] and total.tolist() == [[4.0, 12.0]]
    assert unit_shares(inside, total).tolist() == [1.0, 0.0]
    per_unit = detector_scores(unit_shares(inside, total), _FakeLayer(), None)
    assert per_unit["detectors_object"] == {"unit_in_object": 1.0, "units": 1.0}
    assert per_unit["non_detectors"] == {"unit_in_object": 0.0, "units": 1.0}
    scores = ObjectCentricity().layer_scores(_Copy(), images, MASK, ["layer"])
    assert scores["layer"]["activation_in_object"] == approx(0.25) and scores["layer"]["lift"] == approx(1.0)
    perfect = ObjectCentricity().map_scores(obj[:, None], MASK)
    assert perfect == {"saliency_in_object": 1.0, "lift": approx(4.0)}
    assert ObjectCentricity().map_scores(torch.zeros(1, 1, 4, 4), MASK)["lift"] == approx(1.0), "zero map: uniform"


# --------------------------------------------------------------------------------------------
# Class similarity
# --------------------------------------------------------------------------------------------

SIBLINGS = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)  # {0, 1}, {2, 3}


def test_class_similarity_of_hand_made_outputs():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    s = ClassSimilarity().score(probs, labels, SIBLINGS)
    # sibling shares: 0.3/0.5, 0.2/0.4, 0.4/0.6; image 3 has no non-target mass and is left out
    assert s["sibling_share"] == approx((0.6 + 0.5 + 2 / 3) / 3)
    assert s["sibling_share_chance"] == approx(1 / 3)
    assert s["entropy"] == approx(float(entropy(probs).mean()))
    assert float(entropy(torch.full((1, 4), 0.25))) == approx(math.log(4)) and float(entropy(torch.eye(4)[:1])) == 0.0
    uniform = ClassSimilarity().score(torch.full((4, 4), 0.25, dtype=torch.float64), labels, SIBLINGS, reference=probs)
    assert uniform["sibling_share"] == approx(1 / 3) and uniform["sibling_cousin_ratio"] == approx(1.0)
    assert uniform["entropy"] == approx(math.log(4)) and uniform["class_mean_entropy"] == approx(math.log(4))
    assert uniform["similarity_correlation"] == 0.0, "a structureless matrix shares no structure"


def test_similarity_correlation_of_perfect_and_inverted_students():
    gen = torch.Generator().manual_seed(4)
    teacher = torch.softmax(torch.randn(40, 4, generator=gen, dtype=torch.float64) * 2, dim=1)
    labels = torch.arange(40) % 4
    metric = ClassSimilarity()
    assert metric.score(teacher, labels, SIBLINGS, reference=teacher)["similarity_correlation"] == approx(1.0)
    # a student whose off-diagonal similarity is the teacher's reflected around its mean: correlation -1
    from kdlib.metrics.class_similarity import similarity_matrix

    S = similarity_matrix(teacher, labels, 4)
    off = ~torch.eye(4, dtype=torch.bool)
    flipped = S.clone()
    flipped[off] = 2 * S[off].mean() - S[off]
    from kdlib.metrics.class_similarity import pearson

    assert pearson(flipped[off], S[off]) == approx(-1.0)
    assert metric.direction("similarity_correlation") == "higher" and metric.direction("entropy") == "none"


# --------------------------------------------------------------------------------------------
# Registry, params, bad input
# --------------------------------------------------------------------------------------------


def test_every_measure_is_registered_with_its_params_and_directions():
    assert METRICS.names() == sorted(MEASURES)
    study = parse_study({"metrics": {"five_band": {"soft_steps": 11, "soft_step": 0.02}}})
    for name in MEASURES:
        metric = build(name, study.metrics.section(name))
        params = metric.get_params()
        assert params["name"] == name and set(metric.directions.values()) <= {"higher", "lower", "none"}
    assert build("five_band", study.metrics.five_band).get_params()["soft_steps"] == 11


@pytest.mark.parametrize(
    "section, message",
    [
        ({"diffroar": {"ks": [0.0]}}, r"metrics.diffroar.ks\[0\] = 0.0 is out of range; valid: a fraction 0 < k <= 1"),
        ({"diffroar": {"ks": [1.5]}}, r"ks\[0\] = 1.5 is out of range"),
        ({"five_band": {"soft_steps": 100}}, r"valid: \(soft_steps - 1\) \* soft_step < 0.3"),
        ({"five_band": {"heatmap_thresholds": [0.7, 0.3]}}, r"valid: \[low, high\] with 0 < low < high < 1"),
        ({"measures": ["roar"]}, r"measures\[0\] = 'roar' is not a measure"),
        ({"five_band": {"methods": []}}, r"at least one attribution method"),
        ({"gradient_alignment": {"bogus": 1}}, r"metrics.gradient_alignment.bogus is an unknown key"),
    ],
)
def test_bad_params_are_one_line(section, message):
    with pytest.raises(KdlibError, match=message) as info:
        parse_study({"metrics": section}, "study.yaml")
    assert "\n" not in str(info.value)


def test_bad_methods_and_layers_are_one_line():
    from kdlib.metrics.saliency import attribute, parse_method

    with pytest.raises(KdlibError, match=r"'smoothgrad' is not an attribution method; valid: saliency, gradient"):
        parse_method("smoothgrad")
    with pytest.raises(KdlibError, match=r"n_step is not an option of integrated_gradients .* valid: .*n_steps"):
        parse_method({"name": "integrated_gradients", "n_step": 4})
    with pytest.raises(KdlibError, match="has no layer"):
        parse_method("layer_gradcam")
    from kdlib.models import build as build_model

    net = build_model("resnet8_w8", 3)
    with pytest.raises(KdlibError, match=r"layer 'layer4' is not in .*; valid: .*layer3"):
        attribute(net, torch.zeros(1, 3, 16, 16), torch.tensor([0]), parse_method("layer_gradcam", default_layer="layer4"))
    with pytest.raises(KdlibError, match="is not a measure|unknown metric"):
        build("roar")


def test_bad_maps_and_masks_are_one_line():
    maps = three(TRUTH)
    with pytest.raises(KdlibError, match=r"masks of shape \(1, 4, 5\) do not match the 1 images of 4x4 px"):
        FiveBand().score(maps, torch.zeros(1, 4, 5, dtype=torch.uint8))
    bad = maps.clone()
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(KdlibError, match=r"image 0 has nan at channel 1, pixel \(2, 3\); valid: finite values"):
        FiveBand().score(bad, MASK)
    with pytest.raises(KdlibError, match="valid: finite values"):
        alignment(bad, MASK)
    with pytest.raises(KdlibError, match="valid: a float tensor"):
        FiveBand().score(maps[0], MASK)


def test_maps_derived_from_the_cached_gradient_equal_captums_own():
    from kdlib.metrics import MapCache
    from kdlib.metrics.saliency import attribute, parse_method
    from kdlib.models import build as build_model

    torch.manual_seed(0)
    net = build_model("resnet8_w8", 3).eval()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 0, 1])
    cache = MapCache(x, y, batch_size=2)
    for method in ("saliency", "input_x_gradient", {"name": "saliency", "output": "loss"}):
        spec = parse_method(method)
        assert torch.allclose(cache.get(net, spec), attribute(net, x, y, spec), atol=1e-7, rtol=1e-6), method
    assert len(cache._maps) == 5  # two gradients (logit, loss) and the three derived maps
    assert torch.allclose(cache.outputs(net), net(x).detach(), atol=1e-6)
