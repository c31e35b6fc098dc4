"""LayerResult.summary, the rows of tables/detectors.csv, on counts worked out by hand.

Three units; labels a (10 pixels) and b (20) in category ``object``, c (10) in ``part``; label 0 is
unlabelled. IoU = I / (A + T - I), A the unit's mask area over images where the category is labelled:

- unit 1: A object 10, A part 10, I(a) 5: IoU a = 5 / 15 = 1/3; best object 1/3 (a), part 0;
- unit 2: A object 20, A part 5, I(b) 10, I(c) 5: IoU b = 10 / 30 = 1/3, c = 5 / 10 = 1/2;
  best object 1/3 (b), part 1/2 (c), so its category is part;
- unit 3: nothing: 0 and 0.

At IoU 0.04 unit 1 detects a (object) and unit 2 detects c (part); at 0.4 only unit 2. Mean best IoU:
object (1/3 + 1/3 + 0) / 3 = 2/9, part 1/6, best over categories (1/3, 1/2, 0): 5/18; medians 1/3, 0, 1/3.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from kdlib.dissect import LayerResult


@pytest.fixture
def layer() -> LayerResult:
    units = 3
    return LayerResult(
        layer="layer4",
        thresholds=torch.zeros(units),
        intersection=torch.tensor([[0, 5, 0, 0], [0, 0, 10, 5], [0, 0, 0, 0]]),
        activation_cat=torch.tensor([[10, 10], [20, 5], [4, 4]]),
        unit_area=torch.tensor([10, 20, 4]),
        truth=torch.tensor([0, 10, 20, 10]),
        label_category=torch.tensor([-1, 0, 0, 1]),
        label_names=["-", "a", "b", "c"],
        categories=["object", "part"],
        quantile=0.005,
        iou_threshold=0.04,
        top_images=torch.zeros((units, 0), dtype=torch.long),
        top_values=torch.zeros((units, 0)),
        top_maps=torch.zeros((units, 0, 1, 1)),
    )


def test_best_iou_per_category_by_hand(layer):
    expected = pd.DataFrame({"object": [1 / 3, 1 / 3, 0.0], "part": [0.0, 0.5, 0.0]}, index=pd.RangeIndex(1, 4, name="unit"))
    pd.testing.assert_frame_equal(layer.best_iou(), expected)


def test_summary_rows_by_hand(layer):
    got = layer.summary().set_index("category")
    assert list(got.index) == ["object", "part", "total"]
    assert (got.layer == "layer4").all() and (got.iou_threshold == 0.04).all()
    assert got.detectors.tolist() == [1, 1, 2] and got.unique_concepts.tolist() == [1, 1, 2]
    assert got.share.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert got.mean_best_iou.tolist() == pytest.approx([2 / 9, 1 / 6, 5 / 18])
    assert got.median_best_iou.tolist() == pytest.approx([1 / 3, 0.0, 1 / 3])
    strict = layer.summary(0.4).set_index("category")
    assert strict.detectors.tolist() == [0, 1, 1] and (strict.iou_threshold == 0.4).all()
    assert strict.mean_best_iou.tolist() == got.mean_best_iou.tolist(), "graded measures do not depend on the threshold"
