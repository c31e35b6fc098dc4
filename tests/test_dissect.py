"""Network Dissection engine: known answers, agreement with the reference implementations, exact
quantiles, several layers per pass, the cache, layer capture and bad input."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_dissect as ref
from dissect_helpers import ChannelUnits, SmallNet, normalised, random_broden
from kdlib.data.broden import BrodenDataset, BrodenWriter, collate_broden
from kdlib.data.broden_labels import label_cache, vertical_runs
from kdlib.dissect import DissectResult, TopK, capture_layers, dissect
from kdlib.dissect.batches import make_loader
from kdlib.dissect.quantile import topk_size
from kdlib.dissect.tally import IoUTally, label_areas, upsample_bilinear, unit_mask
from kdlib.errors import KdlibError


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return random_broden(tmp_path_factory.mktemp("probe") / "broden", n=30)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concept_world(tmp_path_factory):
    """16x16 images whose red channel paints a "disc" (object) and green channel a "red" patch (color);
    blue is noise everywhere. Each concept covers < 2% of all pixels."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("concepts") / "broden"
    w = BrodenWriter(root, ["object", "color"], ["disc", "square", "red", "blue"])
    for i in range(40):
        image = np.zeros((16, 16, 3), dtype=np.uint8)
        image[..., 2] = rng.integers(128, 256, size=(16, 16))
        obj = np.zeros((16, 16), dtype=np.int64)
        col = np.zeros((16, 16), dtype=np.int64)
        if i % 2 == 0:
            y, x = rng.integers(0, 13, size=2)
            obj[y : y + 3, x : x + 3] = 1  # disc
            image[y : y + 3, x : x + 3, 0] = 255
        y, x = rng.integers(0, 12, size=2)
        obj[y : y + 4, x : x + 2][obj[y : y + 4, x : x + 2] == 0] = 2  # square, never drawn in the image
        if i % 3 != 2:
            y, x = rng.integers(0, 14, size=2)
            col[y : y + 2, x : x + 3] = 3  # red
            image[y : y + 2, x : x + 3, 1] = 255
        col[0, :4][col[0, :4] == 0] = 4  # blue, not drawn
        w.add(f"p/{i:03d}", image, pixel={"object": [obj], "color": [col]}, split="probe")
    w.finish()
    return BrodenDataset(root)


def test_units_that_reproduce_concepts_are_their_detectors(concept_world):
    # unit 0 = red channel (the disc), unit 1 = green channel (the red patch), unit 2 = blue noise
    # everywhere, unit 3 = constant (fires everywhere equally), unit 4 = constant low (never fires).
    model = ChannelUnits(gains=[1.0, 2.0, 1.0, 0.0, 0.0], biases=[0.0, -1.0, 0.0, 5.0, -5.0], channels=[0, 1, 2, 0, 0])
    result = dissect(model, concept_world, layers=["units"], quantile=0.05, batch_size=16, progress=False)
    layer = result["units"]
    names = concept_world.label_names
    disc, red = names.index("disc"), names.index("red")
    assert layer.iou[0, disc] == pytest.approx(1.0, abs=1e-12)
    assert layer.iou[1, red] == pytest.approx(1.0, abs=1e-12)
    det = layer.detectors().set_index("unit")
    assert sorted(det.index) == [1, 2]
    assert det.loc[1, "label"] == "disc" and det.loc[1, "category"] == "object"
    assert det.loc[2, "label"] == "red" and det.loc[2, "category"] == "color"
    assert layer.iou[2].max() < 0.04  # noise: its top 5% pixels match no concept
    assert layer.iou[3].max() == 0 and layer.iou[4].max() == 0
    assert layer.unit_area[3] == 0 and layer.unit_area[4] == 0  # mask = map > T is strict
    counts = layer.detector_counts()
    assert counts.to_dict() == {"object": 1, "color": 1}
    assert layer.unique_concepts().to_dict() == {"object": 1, "color": 1}


def test_iou_on_hand_made_masks_pins_the_category_term(tmp_path):
    """Two categories, hand-counted. The A term counts mask pixels only in images where the mask meets
    a label of the concept's own category; summing every category (NetDissect-Lite on NumPy >= 1.23)
    or all mask pixels gives other, wrong values."""
    w = BrodenWriter(tmp_path / "b", ["object", "scene"], ["cat", "dog", "kitchen"])
    masks, objects, scenes = [], [], []
    m0 = np.zeros((4, 4), bool); m0[:2, :2] = True; m0[0, 2] = True  # 5 px, meets the cat
    o0 = np.zeros((4, 4), np.int64); o0[:2, :2] = 1; o0[2:, 2:] = 2
    m1 = np.zeros((4, 4), bool); m1[0, :2] = True  # 2 px, meets nothing
    o1 = np.zeros((4, 4), np.int64); o1[3, :] = 1
    m2 = np.zeros((4, 4), bool); m2[1, 1] = True  # 1 px, kitchen only
    for i, (m, o, s) in enumerate([(m0, o0, [3]), (m1, o1, []), (m2, None, [3])]):
        image = np.zeros((4, 4, 3), np.uint8)
        image[..., 0] = np.where(m, 255, 0)
        w.add(f"p/{i}", image, pixel={"object": [o]} if o is not None else {}, scalar={"scene": s} if s else {}, split="probe")
    w.finish()
    ds = BrodenDataset(tmp_path / "b")
    model = ChannelUnits(gains=[1.0], biases=[0.0], channels=[0])
    # 8 of 48 positions are on; the 0.75 quantile falls among the off ones, so the mask is exactly m.
    layer = dissect(model, ds, layers=["units"], quantile=0.25, progress=False)["units"]
    assert layer.thresholds[0] == pytest.approx(normalised(0, 0))
    cat, dog, kitchen = 1, 2, 3
    assert layer.intersection[0].tolist() == [0, 4, 0, 6]
    assert layer.truth.tolist() == [0, 8, 4, 32]
    assert layer.activation_cat[0].tolist() == [5, 6]  # object: image 0 only; scene: images 0 and 2
    assert layer.iou[0, cat].item() == pytest.approx(4 / 9)  # 4 / (5 + 8 - 4)
    assert layer.iou[0, kitchen].item() == pytest.approx(6 / 32)  # 6 / (6 + 32 - 6)
    assert layer.iou[0, dog].item() == 0
    assert layer.iou[0, cat].item() != pytest.approx(4 / 15)  # A summed over both categories (the NumPy bug)
    assert layer.iou[0, cat].item() != pytest.approx(4 / 12)  # A = every mask pixel
    row = layer.tally.iloc[0]
    assert (row["unit"], row["category"], row["label"]) == (1, "object", "cat")
    assert row["object-activation"] == 5 and row["object-truth"] == 8 and row["object-intersect"] == 4
    assert row["scene-label"] == "kitchen" and row["scene-iou"] == pytest.approx(6 / 32)


# --------------------------------------------------------------------------------------------
# The engine agrees with the two reference implementations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,quantile", [("layer1", 0.02), ("layer2", 0.05)])
def test_engine_agrees_with_naive_and_per_image(probe, layer, quantile):
    model = SmallNet(seed=1)
    got = dissect(model, probe, layers=[layer], quantile=quantile, batch_size=7, progress=False)[layer]
    for other in (ref.naive(model, probe, layer, quantile, batch_size=7), ref.per_image(model, probe, layer, quantile, batch_size=7)):
        assert torch.equal(got.thresholds, other.thresholds)
        assert torch.equal(got.intersection, other.intersection)
        assert torch.equal(got.activation_cat, other.activation_cat)
        assert torch.equal(got.truth, other.truth)
        assert torch.allclose(got.iou, other.iou, atol=1e-5, rtol=0)
        for thr in (0.005, 0.01, 0.02):
            assert set(got.detectors(thr)["unit"] - 1) == other.detector_units(thr)
    assert got.iou.max() > 0  # the case is not vacuous
    assert got.meta["pairs_upsampled"] < got.meta["pairs_seen"]  # some pairs were skipped


def test_a_subset_of_categories(probe):
    subset = BrodenDataset(probe.root, categories=["scene", "object"])
    model = SmallNet(seed=1)
    got = dissect(model, subset, layers=["layer1"], quantile=0.02, progress=False)["layer1"]
    want = ref.per_image(model, subset, "layer1", 0.02)
    assert torch.equal(got.intersection, want.intersection) and torch.equal(got.activation_cat, want.activation_cat)
    assert torch.allclose(got.iou, want.iou, atol=1e-12)
    assert [c for c in got.tally.columns if c.endswith("-iou")] == ["object-iou", "scene-iou"]
    outside = subset.primary_category < 0
    assert outside[1:].any() and got.iou[:, outside].abs().max() == 0


# --------------------------------------------------------------------------------------------
# Upsampling and the mask rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,sh,sw", [(4, 4, 32, 32), (7, 7, 112, 112), (3, 5, 10, 16), (8, 8, 8, 8), (5, 6, 3, 4), (1, 1, 6, 6)])
def test_upsampling_is_bilinear_and_the_same_bits_alone_or_in_a_batch(h, w, sh, sw):
    g = torch.Generator().manual_seed(h * 1000 + sh)
    maps = torch.randn(40, h, w, generator=g) * 3
    got = upsample_bilinear(maps, (sh, sw))
    want = F.interpolate(maps[:, None], size=(sh, sw), mode="bilinear", align_corners=False)[:, 0]
    assert got.shape == (40, sh, sw)
    assert torch.allclose(got, want, rtol=0, atol=8 * torch.finfo(torch.float32).eps * float(maps.abs().max()))
    if (h, w) == (sh, sw):
        assert torch.equal(got, maps)
    for i in (0, 17, 39):
        assert torch.equal(upsample_bilinear(maps[i : i + 1], (sh, sw))[0], got[i])
    assert torch.equal(upsample_bilinear(maps.flip(0), (sh, sw)).flip(0), got)


def test_a_map_whose_maximum_is_the_threshold_has_an_empty_mask():
    v = 0.955627977848053  # upsampling a constant map of v gives values one float32 ulp above v
    fmap = torch.full((2, 2), v)
    assert (upsample_bilinear(fmap[None], (8, 8)) > fmap.max()).any()
    assert not unit_mask(fmap, fmap.max(), (8, 8)).any()
    tally = IoUTally(fmap.max().view(1), torch.tensor([-1, 0]), num_categories=1)
    tally.add(fmap.view(1, 1, 2, 2), torch.ones((1, 1, 8, 8), dtype=torch.long), torch.zeros((1, 0), dtype=torch.long))
    assert tally.unit_area.tolist() == [0] and tally.intersection.sum() == 0 and tally.pairs_upsampled == 0
    below = fmap.max() - 1e-3  # the same map above its threshold: the whole image
    assert unit_mask(fmap, below, (8, 8)).all()


# --------------------------------------------------------------------------------------------
# Activations kept between the passes, and what each pass reads
# --------------------------------------------------------------------------------------------


def _counts(layer):
    return [getattr(layer, name) for name in ("thresholds", "intersection", "activation_cat", "unit_area", "truth", "top_images", "top_maps")]


def test_kept_activations_skip_the_second_forward_pass_and_change_nothing(probe):
    model = SmallNet(seed=1)
    images_seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: images_seen.append(args[0].shape[0]))
    try:
        run = lambda **kw: dissect(model, probe, layers=["layer1", "layer2"], quantile=0.02, batch_size=8, progress=False, **kw)
        kept = run()
        # one image first (the shapes and the memory estimate: kdlib.dissect.budget), then one forward pass
        assert images_seen[0] == 1 and sum(images_seen[1:]) == len(probe)
        assert kept.meta["feature_cache"]["used"] and kept.meta["feature_cache"]["state"] == "used"
        images_seen.clear()
        off = run(feature_cache_mb=0)
        assert sum(images_seen[1:]) == 2 * len(probe) and off.meta["feature_cache"]["state"] == "off"
        images_seen.clear()
        per_image = (6 * 8 * 8 + 8 * 4 * 4) * 4  # bytes of layer1 + layer2 activations per image
        budget = 10 * per_image / 2**20  # ten images' worth: the first batch of 8 fits, the second crosses it
        over = run(feature_cache_mb=budget)
        assert sum(images_seen[1:]) == 2 * len(probe) and over.meta["feature_cache"]["state"] == "over budget"
        assert 0 < over.meta["feature_cache"]["peak_mb"] <= budget
    finally:
        handle.remove()
    for layer in ("layer1", "layer2"):
        for a, b, c in zip(_counts(kept[layer]), _counts(off[layer]), _counts(over[layer])):
            assert torch.equal(a, b) and torch.equal(a, c)


def test_each_pass_reads_only_its_part_of_the_probe_set(probe, tmp_path):
    """Pass 1 reads images only; pass 2 reads labels from the label cache: each image's runs are those
    of its decoded segmentations, and a batch's label areas and image-level labels are the items'."""
    cpu = torch.device("cpu")
    labels = label_cache(probe, tmp_path, progress=False)
    images = list(make_loader(probe, 7, cpu, images=True))
    only_labels = list(make_loader(probe, 7, cpu, images=False, labels=labels))
    assert len(images) == len(only_labels) == math.ceil(len(probe) / 7)
    for start, (i, l) in zip(range(0, len(probe), 7), zip(images, only_labels)):
        items = [probe[j] for j in range(start, min(start + 7, len(probe)))]
        whole = collate_broden(items)
        assert torch.equal(i["image"], whole["image"]) and torch.equal(i["index"], whole["index"]) and "labels" not in i
        assert "image" not in l and torch.equal(l["index"], whole["index"])
        assert torch.equal(l["labels"].areas, label_areas(whole["pixel"], whole["scalar"], probe.num_labels))
        assert torch.equal(l["labels"].scalar[:, : whole["scalar"].shape[1]], whole["scalar"])
    for j in (0, 4, len(probe) - 1):
        layers = [layer.numpy() for segs in probe[j]["pixel"].values() for layer in segs]
        want = vertical_runs(np.stack(layers)) if layers else (np.zeros((0, 3)), np.zeros((0, 256)))
        got = labels.image(j)
        assert np.array_equal(got.runs, want[0]) and np.array_equal(got.run_index, want[1])


class _PlainDataset(torch.utils.data.Dataset):
    """A probe set seen only through ``__getitem__`` (no ``image_tensor``, no ``load_segmentation``)."""

    def __init__(self, ds: BrodenDataset):
        self.ds = ds
        for name in ("root", "rows", "categories", "num_labels", "label_names", "primary_category"):
            setattr(self, name, getattr(ds, name))

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]

    def fingerprint(self):
        return self.ds.fingerprint()


def test_a_dataset_with_only_getitem_gives_the_same_answer(probe):
    model = SmallNet(seed=2)
    plain = _PlainDataset(probe)
    assert not hasattr(plain, "image_tensor")
    for mb in (256, 0):
        got = dissect(model, plain, layers=["layer2"], quantile=0.03, progress=False, feature_cache_mb=mb)["layer2"]
        want = dissect(model, probe, layers=["layer2"], quantile=0.03, progress=False, feature_cache_mb=mb)["layer2"]
        for a, b in zip(_counts(got), _counts(want)):
            assert torch.equal(a, b)


class ElementwiseUnits(nn.Module):
    """Units made by elementwise ops only (``relu(gain * channel + bias)``): the same bits for an image
    alone or in any batch, on any device, unlike convolution kernels."""

    def __init__(self):
        super().__init__()
        self.units = nn.ReLU()
        self.register_buffer("gain", torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1))
        self.register_buffer("bias", torch.tensor([0.0, 0.5, -0.2, 0.1]).view(1, 4, 1, 1))

    def forward(self, x):
        return self.units(x[:, [0, 1, 2, 0]] * self.gain + self.bias).mean(dim=(2, 3))


def test_batch_size_does_not_change_the_answer(probe):
    """Exact: the engine itself is batch-invariant (given the same activations, every count is equal)."""
    model = ElementwiseUnits()
    runs = [dissect(model, probe, layers=["units"], quantile=0.03, batch_size=b, examples=3, progress=False)["units"]
            for b in (1, 4, 30)]
    for other in runs[1:]:
        for name in ("thresholds", "intersection", "activation_cat", "unit_area", "truth", "top_values"):
            assert torch.equal(getattr(runs[0], name), getattr(other, name)), name
        # the top images are the same up to ties: among equal maxima torch.topk's order is its own
        for u in range(4):
            above = lambda r: {(float(v), int(i)) for v, i in zip(r.top_values[u], r.top_images[u]) if v > r.top_values[u, -1]}  # noqa: E731
            assert above(runs[0]) == above(other)
    assert runs[0].intersection.sum() > 0


def test_batch_size_changes_a_convolutional_net_only_within_the_derived_bound(probe):
    """Convolution kernels round differently per batch size, so the activations differ by up to delta. A
    pixel can then change sides of the threshold only if its upsampled value is within delta (and the
    thresholds' difference, and float32 rounding) of the threshold, and each such pixel changes the
    intersection by at most its number of labels: the bound is counted with the reference (float64)."""
    model = SmallNet(seed=2)
    a = dissect(model, probe, layers=["layer2"], quantile=0.03, batch_size=4, progress=False)["layer2"]
    b = dissect(model, probe, layers=["layer2"], quantile=0.03, batch_size=30, progress=False)["layer2"]
    acts_a = ref.dump_activations(model, probe, "layer2", batch_size=4)
    acts_b = ref.dump_activations(model, probe, "layer2", batch_size=30)
    delta = float((acts_a - acts_b).abs().max())
    labels = ref.all_labels(probe.root, probe.categories)
    bound = 0
    for i, (layers, scalars) in enumerate(labels):
        per_pixel = layers.shape[0] + len(scalars)  # labels a pixel of this image carries
        for u in range(acts_a.shape[1]):
            fmap = acts_a[i, u].numpy()
            up = ref.upsample(fmap, layers.shape[1:], exact=True)
            lo, hi = sorted((float(a.thresholds[u]), float(b.thresholds[u])))
            margin = delta + 8 * 2.0**-24 * (abs(hi) + float(np.abs(fmap).max()) + delta)
            bound += per_pixel * int(((up > lo - margin) & (up <= hi + margin)).sum())
    changed = int((a.intersection - b.intersection).abs().sum())
    assert changed <= bound
    assert bound < 0.01 * int(a.intersection.sum())  # the bound is tight enough to mean something


def test_tiny_chunks_give_the_same_counts(probe, monkeypatch):
    import kdlib.dissect.tally as tally

    model = SmallNet(seed=1)
    want = dissect(model, probe, layers=["layer1"], quantile=0.02, batch_size=10, progress=False)["layer1"]
    original = tally.IoUTally.__init__
    monkeypatch.setattr(tally.IoUTally, "__init__", lambda self, *a, **k: original(self, *a[:3], chunk_elements=1))
    got = dissect(model, probe, layers=["layer1"], quantile=0.02, batch_size=10, progress=False)["layer1"]
    assert torch.equal(got.intersection, want.intersection) and torch.equal(got.activation_cat, want.activation_cat)


def test_several_layers_in_one_pass_equal_separate_passes(probe):
    model = SmallNet(seed=3)
    both = dissect(model, probe, layers=["layer2", "layer1"], quantile=0.02, batch_size=8, progress=False)
    assert list(both) == ["layer2", "layer1"]
    for layer in ("layer1", "layer2"):
        alone = dissect(model, probe, layers=[layer], quantile=0.02, batch_size=8, progress=False)[layer]
        for name in ("thresholds", "intersection", "activation_cat", "unit_area", "truth", "top_images", "top_maps"):
            assert torch.equal(getattr(both[layer], name), getattr(alone, name)), name
        pd.testing.assert_frame_equal(both[layer].tally, alone.tally)


def test_model_state_is_restored(probe):
    model = SmallNet(seed=0).train()
    dissect(model, probe, layers=["layer1"], progress=False)
    assert model.training and _no_hooks(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")
def test_cuda_gives_the_cpu_answer(probe, concept_world):
    """Elementwise units give the same activations on both devices, so the same counts; a convolutional
    net the same detectors and IoU to 1e-6 (fp32 convolutions, TF32 off during dissection)."""
    for model, data, layers, q in ((ElementwiseUnits(), probe, ["units"], 0.03),
                                   (ChannelUnits(gains=[1.0, 2.0, 1.0], biases=[0.0, -1.0, 0.0], channels=[0, 1, 2]), concept_world, ["units"], 0.05)):
        cpu = dissect(model, data, layers=layers, quantile=q, device="cpu", progress=False)["units"]
        gpu = dissect(model, data, layers=layers, quantile=q, device="cuda", progress=False)["units"]
        for name in ("thresholds", "intersection", "activation_cat", "truth"):
            assert torch.equal(getattr(cpu, name), getattr(gpu, name)), name
    model = SmallNet(seed=1)
    cpu = dissect(model, probe, layers=["layer1", "layer2"], quantile=0.02, device="cpu", progress=False)
    gpu = dissect(model, probe, layers=["layer1", "layer2"], quantile=0.02, device="cuda", progress=False)
    for layer in ("layer1", "layer2"):
        assert torch.allclose(cpu[layer].thresholds, gpu[layer].thresholds, rtol=1e-5, atol=1e-6)
        assert torch.allclose(cpu[layer].iou, gpu[layer].iou, atol=1e-6, rtol=0)
        for thr in (0.005, 0.01, 0.04):
            assert list(cpu[layer].detectors(thr)["unit"]) == list(gpu[layer].detectors(thr)["unit"])
    assert next(model.parameters()).device.type == "cpu"


# --------------------------------------------------------------------------------------------
# Exact quantiles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.005, 0.01, 0.1, 1 / 3, 0.5, 0.9, 0.999])
def test_streamed_quantile_equals_torch_quantile(q):
    g = torch.Generator().manual_seed(int(q * 1000))
    for shape, step in (((23, 3, 4, 5), 4), ((7, 2, 3, 3), 1), ((50, 4, 2, 2), 50), ((9, 1, 1, 1), 2)):
        x = torch.randn(shape, generator=g)
        x[::3] = x[::3].round()  # ties
        n = shape[0] * shape[2] * shape[3]
        top = TopK(shape[1], n, q)
        for start in range(0, shape[0], step):
            top.add(x[start : start + step])
        want = torch.quantile(x.transpose(0, 1).reshape(shape[1], -1), 1 - q, dim=1)
        assert torch.equal(top.threshold(), want)
        assert top.values.shape[1] == min(n, topk_size(n, q)) <= math.ceil(q * n) + 1


def test_topk_refuses_wrong_use():
    top = TopK(2, 8, 0.25)
    top.add(torch.zeros(1, 2, 2, 2))
    with pytest.raises(KdlibError, match="4 of 8 positions"):
        top.threshold()
    with pytest.raises(KdlibError, match=r"\[batch, 2"):
        top.add(torch.zeros(1, 3, 2, 2))


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_cache_reuses_only_identical_arguments(probe, tmp_path):
    model = SmallNet(seed=4)
    cache = tmp_path / "cache"
    first = dissect(model, probe, layers=["layer1"], quantile=0.02, cache_dir=cache, progress=False)
    assert not first["layer1"].from_cache and len(list(cache.glob("*.pt"))) == 1
    again = dissect(model, probe, layers=["layer1"], quantile=0.02, iou_threshold=0.05, cache_dir=cache, progress=False)
    assert again["layer1"].from_cache and again["layer1"].iou_threshold == 0.05
    assert torch.equal(again["layer1"].intersection, first["layer1"].intersection)

    # only the layer changes: never the other layer's numbers (NetDissect-Lite's "same results" bug)
    other = dissect(model, probe, layers=["layer2"], quantile=0.02, cache_dir=cache, progress=False)["layer2"]
    fresh = dissect(model, probe, layers=["layer2"], quantile=0.02, progress=False)["layer2"]
    assert not other.from_cache and torch.equal(other.intersection, fresh.intersection)
    assert other.units != first["layer1"].units

    # the quantile or the weights change: rebuilt
    assert not dissect(model, probe, layers=["layer1"], quantile=0.03, cache_dir=cache, progress=False)["layer1"].from_cache
    with torch.no_grad():
        model.layer1[0].bias.add_(0.5)
    changed = dissect(model, probe, layers=["layer1"], quantile=0.02, cache_dir=cache, progress=False)["layer1"]
    assert not changed.from_cache
    assert not torch.equal(changed.thresholds, first["layer1"].thresholds)


def test_cache_entry_made_with_other_arguments_is_rebuilt(probe, tmp_path):
    import kdlib.dissect.cache as cache_mod

    model = SmallNet(seed=5)
    cache = tmp_path / "cache"
    dissect(model, probe, layers=["layer1"], quantile=0.02, cache_dir=cache, progress=False)
    (entry,) = cache.glob("*.pt")
    stored = torch.load(entry, weights_only=True)
    stored["key"]["quantile"] = 0.5  # an entry whose arguments differ from its name
    torch.save(stored, entry)
    assert not dissect(model, probe, layers=["layer1"], quantile=0.02, cache_dir=cache, progress=False)["layer1"].from_cache
    entry.write_bytes(b"truncated")
    assert not dissect(model, probe, layers=["layer1"], quantile=0.02, cache_dir=cache, progress=False)["layer1"].from_cache
    assert cache_mod.load(cache, {"layer": "layer1"}) is None


def test_result_save_and_load_round_trip(probe, tmp_path):
    model = SmallNet(seed=6)
    result = dissect(model, probe, layers=["layer1", "layer2"], quantile=0.02, progress=False)
    result.save(tmp_path / "out")
    tally = pd.read_csv(tmp_path / "out" / "tally_layer2.csv")
    cats = probe.categories
    assert list(tally.columns[:4]) == ["unit", "category", "label", "score"]
    assert list(tally.columns[4:9]) == [f"{cats[0]}-{k}" for k in ("label", "truth", "activation", "intersect", "iou")]
    assert tally["score"].is_monotonic_decreasing and sorted(tally["unit"]) == list(range(1, 9))
    assert np.load(tmp_path / "out" / "iou_layer1.npy").shape == (6, probe.num_labels)
    back = DissectResult.load(tmp_path / "out")
    assert list(back) == ["layer1", "layer2"]
    pd.testing.assert_frame_equal(back["layer2"].tally, result["layer2"].tally)
    assert torch.equal(back["layer1"].iou, result["layer1"].iou)
    summary = result.summary(0.01)
    assert set(summary["category"]) == set(cats) | {"total"}
    assert (summary["share"] <= 1).all()


def test_graded_measures_equal_an_independent_computation(probe):
    """best_iou() (each unit's best IoU per category) against the reference's own counts, IoU and
    category rule; the tally's score column is each unit's best over categories."""
    model = SmallNet(seed=1)
    layer = dissect(model, probe, layers=["layer2"], quantile=0.05, progress=False)["layer2"]
    want = ref.per_image(model, probe, "layer2", 0.05).best_per_category()
    best = layer.best_iou()
    assert best.shape == (8, len(probe.categories)) and want.max() > 0
    assert np.allclose(best.to_numpy(), want.numpy(), atol=1e-12, rtol=0)
    tally = layer.tally.set_index("unit").loc[best.index]
    assert np.allclose(tally["score"].to_numpy(), want.max(dim=1).values.numpy(), atol=1e-12, rtol=0)
    summary = layer.summary(0.01).set_index("category")
    for ci, cat in enumerate(probe.categories):
        assert summary.loc[cat, "mean_best_iou"] == pytest.approx(float(want[:, ci].mean()), abs=1e-12)
        assert summary.loc[cat, "median_best_iou"] == pytest.approx(float(np.median(want[:, ci].numpy())), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Layer capture
# --------------------------------------------------------------------------------------------


class InPlaceAfter(nn.Module):
    """``block``'s output is changed in place by the parent after the hook saw it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        out = self.block(x)
        out.mul_(-1.0).relu_()  # corrupts a tensor captured without a copy
        return out.mean(dim=(2, 3))


class ReusedModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(self.act(x))).mean(dim=(2, 3))


def test_capture_refuses_in_place_corruption_and_clone_captures_safely(probe):
    model = InPlaceAfter()
    x = torch.randn(2, 3, 8, 8)
    with capture_layers(model, ["block"]) as captured:
        model(x)
        with pytest.raises(KdlibError, match="changed in place"):
            captured["block"]
    want = model.block(x).detach()
    with capture_layers(model, ["block"], clone=True) as captured:
        model(x)
        assert torch.equal(captured["block"], want)
    assert _no_hooks(model)
    # dissect captures safely: the same answer as a model without the in-place op
    clean = nn.Sequential()
    clean.block = model.block
    a = dissect(model, probe, layers=["block"], quantile=0.05, progress=False)["block"]
    b = dissect(clean, probe, layers=["block"], quantile=0.05, progress=False)["block"]
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.intersection, b.intersection)


def test_module_called_twice_is_refused(probe):
    model = ReusedModule()
    with pytest.raises(KdlibError, match="ran twice"):
        dissect(model, probe, layers=["act"], progress=False)
    assert _no_hooks(model)


def test_hooks_are_removed_after_an_error():
    model = SmallNet()
    with pytest.raises(RuntimeError):
        with capture_layers(model, ["layer1", "layer2"]):
            assert not _no_hooks(model)
            model(torch.randn(1, 5, 8, 8))  # wrong channel count: the forward fails
    assert _no_hooks(model)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_unknown_layer_lists_the_models_layers(probe):
    model = SmallNet()
    with pytest.raises(KdlibError) as info:
        dissect(model, probe, layers=["layer9"], progress=False)
    message = str(info.value)
    assert "'layer9'" in message and "layer1, layer1.0, layer1.1, layer2" in message and "\n" not in message
    assert _no_hooks(model)


def test_layer_with_non_4d_output_is_refused(probe):
    model = SmallNet()
    with pytest.raises(KdlibError, match="'fc' output has shape"):
        dissect(model, probe, layers=["fc"], progress=False)
    assert _no_hooks(model)


@pytest.mark.parametrize("q", [0, 1, -0.1, 1.5, float("nan"), True, "0.005"])
def test_quantile_outside_zero_one_is_refused(probe, q):
    with pytest.raises(KdlibError, match="quantile"):
        dissect(SmallNet(), probe, layers=["layer1"], quantile=q, progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"batch_size": 0}, "batch_size"),
        ({"layers": []}, "layers"),
        ({"device": "tpu"}, "device"),
        ({"feature_cache_mb": -1}, "feature_cache_mb"),
        ({"feature_cache_mb": True}, "feature_cache_mb"),
        ({"feature_cache_mb": float("inf")}, "feature_cache_mb"),
    ],
)
def test_other_bad_arguments(probe, kwargs, match):
    args = {"layers": ["layer1"], "progress": False, **kwargs}
    with pytest.raises(KdlibError, match=match):
        dissect(SmallNet(), probe, **args)


def test_empty_dataset_is_refused(tmp_path):
    w = BrodenWriter(tmp_path / "empty", ["object"], ["disc"])
    w.add("p/0", np.zeros((4, 4, 3), np.uint8), pixel={"object": [np.ones((4, 4), np.int64)]}, split="probe")
    w.finish()
    index = tmp_path / "empty" / "index.csv"
    index.write_text(index.read_text().splitlines()[0] + "\n")  # the header, no image
    ds = BrodenDataset(tmp_path / "empty")
    assert len(ds) == 0
    with pytest.raises(KdlibError, match="no images"):
        dissect(SmallNet(), ds, layers=["layer1"], progress=False)


def test_dataset_missing_a_categorys_files(probe, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(probe.root, root)
    (root / "c_color.csv").unlink()
    with pytest.raises(KdlibError, match="c_color.csv"):
        BrodenDataset(root)
    shutil.copy(probe.root / "c_color.csv", root / "c_color.csv")
    seg = next((root / "images" / "probe").glob("*_color.png"))
    seg.unlink()
    with pytest.raises(KdlibError, match="missing file"):
        BrodenDataset(root)
    unchecked = BrodenDataset(root, check_files=False)  # missing file found before the first batch: one clear line
    model = SmallNet()
    with pytest.raises(KdlibError, match="color"):
        dissect(model, unchecked, layers=["layer1"], progress=False)
    assert _no_hooks(model)


def test_nan_activations_are_refused(probe):
    class NaNNet(SmallNet):
        def forward(self, x):
            return super().forward(x * float("nan"))

    with pytest.raises(KdlibError, match="NaN"):
        dissect(NaNNet(), probe, layers=["layer1"], progress=False)
