"""Object masks aligned with the classification images, and the class hierarchy read from classes.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kdlib.data.masks import MaskedSplit, balanced_order, load_masked, masks_root
from kdlib.data.ontology import read_hierarchy
from kdlib.data.splits import IndexedSplit
from kdlib.data.transforms import eval_transform
from kdlib.errors import KdlibError


def test_items_are_the_indexed_split_items_plus_the_mask_of_the_same_file(tiny_world):
    masked = MaskedSplit(tiny_world, "test")
    plain = IndexedSplit(tiny_world / "imagefolder", "test", eval_transform(None))
    assert len(masked) == len(plain) == 36
    for index in (0, 7, 35):
        image, label, idx, mask = masked[index]
        ref_image, ref_label, ref_idx = plain[index]
        assert idx == ref_idx == index and label == ref_label
        assert torch.equal(image, ref_image)
        image_path = plain.folder.samples[index][0]
        mask_path = image_path.replace("/imagefolder/", "/masks/")
        assert torch.equal(mask, torch.from_numpy(np.array(Image.open(mask_path))))
        assert mask.dtype == torch.uint8 and tuple(mask.shape) == tuple(image.shape[-2:]) == (24, 24)
        assert set(mask.unique().tolist()) <= {0, 1, 2} and bool((mask == 1).any())


def _contrast(images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over images of |mean colour on the mask's object - mean colour off it| (summed over channels)."""
    obj = (masks >= 1)[:, None].expand_as(images).double()
    x = images.double()
    inside = (x * obj).sum((2, 3)) / obj.sum((2, 3)).clamp(min=1)
    outside = (x * (1 - obj)).sum((2, 3)) / (1 - obj).sum((2, 3)).clamp(min=1)
    return float((inside - outside).abs().sum(1).mean())


def test_masks_mark_the_object_drawn_in_their_own_image(tiny_world):
    """An object differs in colour from its background: the mask of the image itself separates its
    colours far better than the mask of another image would, so a misaligned reader fails."""
    data = load_masked(tiny_world, "test")
    assert data.masks.shape == (36, 24, 24) and data.labels.tolist() == sorted(data.labels.tolist())
    assert _contrast(data.images, data.masks) > 1.5 * _contrast(data.images, torch.roll(data.masks, 1, dims=0))


def test_resizing_follows_the_image_transform_with_nearest_neighbours(tiny_world):
    masked = MaskedSplit(tiny_world, "test", image_size=36)  # 1.5x: any interpolating resize would differ
    for index in range(len(masked)):
        image, _, _, mask = masked[index]
        assert image.shape == (3, 36, 36) and mask.shape == (36, 36)
        nearest = np.array(Image.open(masked.mask_path(index)).resize((36, 36), Image.NEAREST))
        assert torch.equal(mask, torch.from_numpy(nearest)), index


def test_balanced_order_takes_each_class_in_turn():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    assert balanced_order(labels).tolist() == [0, 3, 5, 1, 4, 2]


def test_max_images_keeps_a_balanced_prefix_in_dataset_order(tiny_world):
    data = load_masked(tiny_world, "test", max_images=12)
    assert torch.bincount(data.labels).tolist() == [2] * 6
    assert data.indices.tolist() == sorted(data.indices.tolist())


def test_a_mask_of_another_size_is_one_line(tiny_world, tmp_path):
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    masked = MaskedSplit(world, "test")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(masked.mask_path(2))
    with pytest.raises(KdlibError, match=r"is 24x20 px but its image is 24x24; valid: a mask of the image's size"):
        masked[2]
    masked.mask_path(4).unlink()
    with pytest.raises(KdlibError, match="is missing"):
        masked[4]


def test_no_masks_folder_is_one_line(tmp_path):
    with pytest.raises(KdlibError, match="no object masks"):
        masks_root(tmp_path)


def test_hierarchy_reads_superclasses_and_siblings(tiny_world):
    classes = json.loads((tiny_world / "classes.json").read_text())["classes"]
    h = read_hierarchy(tiny_world, [c["name"] for c in classes])
    assert h.num_classes == 6 and list(h.superclass) == [c["superclass"] for c in classes] == [0, 0, 1, 1, 2, 2]
    assert h.siblings(0) == [1] and h.siblings(5) == [4]
    m = h.sibling_matrix()
    assert torch.equal(m, m.T) and not bool(m.diagonal().any()) and int(m.sum()) == 6
    with pytest.raises(KdlibError, match="valid: the classes of classes.json"):
        read_hierarchy(tiny_world, ["a", "b"])
    with pytest.raises(KdlibError, match="no classes.json"):
        read_hierarchy(tiny_world / "records")
