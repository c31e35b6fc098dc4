"""The mask rule and its sparse exact evaluation: a hand-worked upsampled IoU, the sparse masks against the
dense rule on adversarial maps, vertical runs, and the reference's own upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_dissect as ref
from kdlib.data.broden_labels import vertical_runs
from kdlib.dissect.labels import from_pixel
from kdlib.dissect.tally import IoUTally, upsample_bilinear
from kdlib.dissect.upsample import SparseMasks, candidate_cutoff

# --------------------------------------------------------------------------------------------
# A hand-worked upsampled IoU: a 2x2 map onto 4x4, a label in two segmentation layers
# --------------------------------------------------------------------------------------------

# Bilinear, align_corners=False, 2 -> 4: output i reads source (i + 0.5) / 2 - 0.5, clamped at 0:
#   i = 0: -0.25 -> 0     (source 0 with weight 1)
#   i = 1:  0.25          (source 0: 0.75, source 1: 0.25)
#   i = 2:  0.75          (source 0: 0.25, source 1: 0.75)
#   i = 3:  1.25 -> 1, 1  (source 1 with weight 1)
# The map is 4 at (row 0, column 1) and 0 elsewhere, so U[y, x] = 4 * a[y] * b[x] with the weights of
# source row 0, a = (1, .75, .25, 0), and of source column 1, b = (0, .25, .75, 1) (all exact in float32):
UPSAMPLED = np.array(
    [[0, 1, 3, 4],
     [0, 0.75, 2.25, 3],
     [0, 0.25, 0.75, 1],
     [0, 0, 0, 0]], dtype=np.float32)  # fmt: skip
THRESHOLD = 0.9
MASK = UPSAMPLED > THRESHOLD  # 6 pixels: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)

CAT, DOG, EAR = 1, 2, 3  # cat and dog are objects; ear is a part; cat also appears in the part layer


def _hand_labels():
    """Image 0: object layer (cat on 5 pixels, dog on row 3) and part layer (cat at (0,1), (0,2); ear at
    (2,3), (3,3)); image 1: object layer only (dog at (0,3))."""
    obj0 = np.zeros((4, 4), np.int64)
    obj0[0, 2:] = obj0[1, 2:] = CAT
    obj0[2, 2] = CAT
    obj0[3, :] = DOG
    part0 = np.zeros((4, 4), np.int64)
    part0[0, 1] = part0[0, 2] = CAT
    part0[2, 3] = part0[3, 3] = EAR
    obj1 = np.zeros((4, 4), np.int64)
    obj1[0, 3] = DOG
    pixel = torch.zeros((2, 2, 4, 4), dtype=torch.long)
    pixel[0, 0], pixel[0, 1], pixel[1, 0] = (torch.from_numpy(a) for a in (obj0, part0, obj1))
    return pixel


def test_a_2x2_map_upsampled_onto_4x4_by_hand():
    fmap = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert np.array_equal(upsample_bilinear(fmap[None], (4, 4))[0].numpy(), UPSAMPLED)
    assert np.array_equal(ref.upsample(fmap.numpy(), (4, 4)), UPSAMPLED)
    assert np.array_equal(ref.mask(fmap.numpy(), THRESHOLD, (4, 4)), MASK) and MASK.sum() == 6


def test_hand_worked_upsampled_iou_with_a_label_in_two_layers():
    """Both images have the same map, so the same 6-pixel mask.

    intersection: cat 4 (object layer: (0,2) (0,3) (1,2) (1,3); (2,2) is outside) + 2 (part layer:
    (0,1) (0,2)) = 6, counted per layer; dog 0 + 1 (image 1's (0,3)) = 1; ear 1 ((2,3); (3,3) is outside).
    truth: cat 5 + 2 = 7, dog 4 + 1 = 5, ear 2.
    A: object met in both images (cat, dog) = 6 + 6 = 12; part met in image 0 only (ear) = 6.
    IoU: cat 6 / (12 + 7 - 6) = 6/13, dog 1 / (12 + 5 - 1) = 1/16, ear 1 / (6 + 2 - 1) = 1/7."""
    feats = torch.tensor([[0.0, 4.0], [0.0, 0.0]]).expand(2, 1, 2, 2).contiguous()
    category = torch.tensor([-1, 0, 0, 1])  # label 0 none; cat, dog object (0); ear part (1)
    labels = from_pixel(_hand_labels(), torch.zeros((2, 0), dtype=torch.long), 4)
    tally = IoUTally(torch.tensor([THRESHOLD]), category, num_categories=2)
    tally.add(feats, labels)
    assert tally.unit_area.tolist() == [12]
    assert tally.intersection[0].tolist() == [0, 6, 1, 1]
    assert labels.areas.tolist() == [0, 7, 5, 2]
    assert tally.activation_cat[0].tolist() == [12, 6]
    from kdlib.dissect.tally import iou_from_counts

    iou = iou_from_counts(tally.intersection, tally.activation(), labels.areas)[0]
    assert iou[CAT].item() == pytest.approx(6 / 13, abs=1e-15)
    assert iou[DOG].item() == pytest.approx(1 / 16, abs=1e-15)
    assert iou[EAR].item() == pytest.approx(1 / 7, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Sparse masks are the dense rule, bit for bit
# --------------------------------------------------------------------------------------------


def _adversarial_maps(kind: str, k: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(k, h, w, generator=g)
    if kind == "constant":  # upsampling a constant can round one ulp above it
        return torch.rand(k, 1, 1, generator=g).expand(k, h, w).contiguous()
    if kind == "few values":
        return torch.randint(0, 3, (k, h, w), generator=g).float() * 0.955627977848053
    if kind == "relu":
        return torch.relu(torch.randn(k, h, w, generator=g))
    if kind == "subnormal":
        return torch.randn(k, h, w, generator=g) * 1e-38
    return torch.randn(k, h, w, generator=g) * 1e30


@pytest.mark.parametrize("h,w,sh,sw", [(7, 7, 112, 112), (14, 14, 112, 112), (3, 5, 10, 16), (8, 8, 8, 8), (5, 6, 3, 4),
                                       (1, 1, 6, 6), (2, 2, 4, 4), (7, 7, 113, 97)])
@pytest.mark.parametrize("kind", ["normal", "constant", "few values", "relu", "subnormal", "huge"])
def test_sparse_masks_equal_the_dense_rule(h, w, sh, sw, kind):
    g = torch.Generator().manual_seed(h * 100 + sh + len(kind))
    k = 24
    maps = _adversarial_maps(kind, k, h, w, g)
    # thresholds equal to a map value (the hardest case) or to the maximum (the empty-mask rule's edge)
    pick = torch.randint(0, h * w, (k,), generator=g)
    thr = maps.reshape(k, -1).gather(1, pick[:, None])[:, 0].clone()
    thr[::2] = maps.reshape(k, -1).amax(1)[::2]
    dense = upsample_bilinear(maps, (sh, sw)) > thr.view(-1, 1, 1)
    masks = SparseMasks((h, w), (sh, sw), torch.device("cpu"))
    for chunk in (1 << 21, 50) if sh * sw < 1000 else (1 << 21, 5000):  # one piece, and the y pass in pieces
        pair, flat = masks.pixels(maps, thr, chunk)
        sparse = torch.zeros(k, sh * sw, dtype=torch.bool)
        sparse[pair, flat] = True
        assert pair.numel() == int(dense.sum())  # every pixel once
        assert torch.equal(sparse.view(k, sh, sw), dense)


def test_the_rounding_case_is_exercised():
    """A constant map upsampled rounds one ulp above itself at some pixels: the dense rule puts them in the
    mask (so the sparse masks must find them), unless the maximum itself is the threshold."""
    v = 0.955627977848053
    fmap = torch.full((1, 2, 2), v)
    up = upsample_bilinear(fmap, (8, 8))
    assert (up > v).any()
    masks = SparseMasks((2, 2), (8, 8), torch.device("cpu"))
    just_below = torch.tensor([v]).nextafter(torch.tensor([0.0]))
    pair, flat = masks.pixels(fmap, just_below)
    assert pair.numel() == int((up > just_below).sum()) == 64


def test_candidate_cutoff_is_a_safe_bound():
    """Values made by ``passes`` rounds of w0 * a + w1 * b from values all <= the cutoff never exceed T."""
    g = torch.Generator().manual_seed(0)
    thr = torch.randn(1000, generator=g)
    scale = thr.abs() + torch.rand(1000, generator=g) * 10
    for passes in (1, 2):
        cut = candidate_cutoff(thr, scale, passes)
        assert cut.dtype == torch.float32 and (cut.double() <= thr.double() - 4 * 2.0**-24 * passes * (scale.double() + thr.abs().double())).all()


def test_segments_cover_every_mask_pixel_once():
    g = torch.Generator().manual_seed(5)
    maps = torch.relu(torch.randn(40, 7, 7, generator=g))
    thr = torch.quantile(maps.reshape(40, -1), 0.9, dim=1)
    masks = SparseMasks((7, 7), (112, 112), torch.device("cpu"))
    pair, x, first, last = masks.segments(maps, thr, 1 << 21)
    assert (first <= last).all() and (last - first < 24).all()  # one row cell at most
    dense = upsample_bilinear(maps, (112, 112)) > thr.view(-1, 1, 1)
    covered = torch.zeros_like(dense, dtype=torch.int32)
    for p, xx, a, b in zip(pair.tolist(), x.tolist(), first.tolist(), last.tolist()):
        covered[p, a : b + 1, xx] += 1
    assert torch.equal(covered > 0, dense) and covered.max() == 1


# --------------------------------------------------------------------------------------------
# Vertical runs and the reference's upsampling
# --------------------------------------------------------------------------------------------


def test_vertical_runs_by_hand():
    layer = np.array([[1, 1],
                      [1, 2],
                      [3, 2]])  # fmt: skip
    runs, index = vertical_runs(layer[None])
    # column 0: rows 0-1 label 1, row 2 label 3; column 1: row 0 label 1, rows 1-2 label 2
    assert runs.tolist() == [[0, 1, 1], [2, 2, 3], [0, 0, 1], [1, 2, 2]]
    assert index.tolist() == [[0, 2, 0, 3, 1, 3]]  # pixel (y, x) at y * 2 + x


def test_reference_upsampling_is_bilinear():
    """The reference's upsampling, written from the definition, agrees with F.interpolate to float32
    rounding (and with its own float64 version to the rounding of two passes)."""
    g = np.random.default_rng(0)
    for (h, w, sh, sw) in [(7, 7, 112, 112), (3, 5, 10, 16), (5, 6, 3, 4)]:
        m = g.normal(size=(h, w)).astype(np.float32)
        want = F.interpolate(torch.from_numpy(m)[None, None], size=(sh, sw), mode="bilinear", align_corners=False)[0, 0].numpy()
        scale = float(np.abs(m).max())
        assert np.abs(ref.upsample(m, (sh, sw)) - want).max() <= 8 * 2.0**-24 * scale
        assert np.abs(ref.upsample(m, (sh, sw)) - ref.upsample(m, (sh, sw), exact=True)).max() <= 6.02 * 2.0**-24 * scale


def test_the_reference_imports_nothing_of_kdlib():
    """Anywhere in the file, also inside functions."""
    import ast

    tree = ast.parse(open(ref.__file__, encoding="utf-8").read())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "numpy" in modules and not [m for m in modules if m.split(".")[0] == "kdlib"]
