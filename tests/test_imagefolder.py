"""ImageFolder splits: torchvision's own class, with one-line errors for bad folders and files."""

from __future__ import annotations

import shutil

import pytest

from kdlib.data.imagefolder import load_split
from kdlib.errors import KdlibError


@pytest.fixture
def world_copy(tiny_world, tmp_path):
    shutil.copytree(tiny_world / "imagefolder", tmp_path / "imagefolder")
    return tmp_path


def test_world_root_or_split_root_both_work(tiny_world):
    assert len(load_split(tiny_world, "val")) == len(load_split(tiny_world / "imagefolder", "val"))


def test_empty_class_folder(world_copy):
    folder = world_copy / "imagefolder" / "val" / "99_empty"
    folder.mkdir()
    with pytest.raises(KdlibError) as e:
        load_split(world_copy, "val")
    assert "99_empty" in str(e.value) and "holds no images" in str(e.value) and "\n" not in str(e.value)


def test_class_folder_holding_only_other_files(world_copy):
    folder = world_copy / "imagefolder" / "val" / "99_notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    with pytest.raises(KdlibError, match=r"class folder '.*/99_notes' holds no images; valid: at least one \.jpg"):
        load_split(world_copy, "val")


def test_split_folder_with_no_classes(world_copy):
    (world_copy / "imagefolder" / "holdout").mkdir()
    (world_copy / "imagefolder" / "holdout" / "stray.png").write_bytes(b"")
    with pytest.raises(KdlibError) as e:
        load_split(world_copy, "holdout")
    assert str(e.value) == f"split folder '{world_copy / 'imagefolder' / 'holdout'}' has no class folders; valid: {world_copy / 'imagefolder' / 'holdout'}/<class>/<image>"


def test_missing_split(world_copy):
    with pytest.raises(KdlibError, match="split folder '.*/holdout' does not exist; valid: test, train, val"):
        load_split(world_copy, "holdout")


def test_missing_root(tmp_path):
    with pytest.raises(KdlibError, match="split folder '.*/nowhere/train' does not exist; valid: a folder holding <split>/<class>/ images"):
        load_split(tmp_path / "nowhere", "train")


def test_corrupt_image(world_copy):
    ds = load_split(world_copy, "test")
    path, _ = ds.samples[3]
    with open(path, "wb") as f:
        f.write(b"\x89PNG truncated")
    with pytest.raises(KdlibError) as e:
        ds[3]
    assert "corrupt image" in str(e.value) and path in str(e.value)
