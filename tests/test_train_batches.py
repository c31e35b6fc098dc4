"""Where training batches come from: the in-memory path equals torchvision's transforms for the same draws,
visits the DataLoader path's order, and depends only on (seed, epoch); DataLoader workers change nothing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from kdlib.data.splits import IndexedSplit
from kdlib.data.tensors import augment, padding, split_tensor, to_input
from kdlib.data.transforms import MEAN, STD, eval_transform, train_transform
from kdlib.models import checkpoint
from kdlib.train.batches import LoaderBatches, MemoryBatches

from train_helpers import fit_named, study

SCRATCH = [{"name": "scratch", "model": "resnet8_w8"}]


def _torchvision(image: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """What train_transform does to a PIL image for the given crop offsets and flip (torchvision itself)."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    crop = TF.crop(TF.pad(pil, padding(image.shape[-1]), padding_mode="reflect"), dy, dx, image.shape[1], image.shape[2])
    if flip:
        crop = TF.hflip(crop)
    return T.Normalize(MEAN, STD)(T.ToTensor()(crop))


def test_batch_augmentation_is_torchvisions_bit_for_bit():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)  # padding 2: offsets 0..4
    for b, dy, dx, flip in itertools.product(range(3), range(5), range(5), (0, 1)):
        got = to_input(augment(images[b:b + 1], torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip])))[0]
        assert torch.equal(got, _torchvision(images[b], dy, dx, bool(flip))), (b, dy, dx, flip)
    batch = augment(images, torch.tensor([0, 4, 2]), torch.tensor([4, 0, 2]), torch.tensor([1, 0, 1]))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(to_input(batch)[1], _torchvision(images[1], 4, 0, False))


def test_split_tensor_holds_the_decoded_images(tiny_world):
    split = IndexedSplit(tiny_world, "val", eval_transform(24))
    images = split_tensor(split, 24)
    assert images.shape == (len(split), 3, 24, 24) and images.dtype == torch.uint8
    for i in (0, 7, len(split) - 1):
        assert torch.equal(to_input(images[i:i + 1])[0], split[i][0])  # ToTensor + Normalize of the PNG
    small = split_tensor(split, 16)  # another size: resized and centre-cropped as eval_transform(16) does
    assert torch.allclose(to_input(small[:1])[0], IndexedSplit(tiny_world, "val", eval_transform(16))[0][0], atol=1e-6)


def test_the_memory_path_visits_the_loader_paths_order(tiny_world):
    split = IndexedSplit(tiny_world, "train", train_transform(24), cache=True)
    memory = MemoryBatches(split, 24, 10, True, torch.device("cpu"), channels_last=False)
    loader = LoaderBatches(split, 10, 0, torch.device("cpu"), channels_last=False)
    for seed, epoch, prefix in ((0, 1, ()), (0, 2, ()), (3, 1, ()), (0, 1, ("ft-paraphraser",))):
        a = torch.cat([i for _, _, i in memory.epoch(seed, epoch, prefix)])
        b = torch.cat([i for _, _, i in loader.epoch(seed, epoch, prefix)])
        assert torch.equal(a, b)
        assert sorted(a.tolist()) == list(range(len(split)))


def test_an_epochs_plan_depends_on_seed_and_epoch_only(tiny_world):
    split = IndexedSplit(tiny_world, "train", eval_transform(24))
    one = MemoryBatches(split, 24, 16, True, torch.device("cpu"), channels_last=True)
    two = MemoryBatches(split, 24, 50, True, torch.device("cpu"), channels_last=False)  # another batch size
    assert all(torch.equal(a, b) for a, b in zip(one.plan(0, 1), two.plan(0, 1)))
    assert not torch.equal(one.plan(0, 1)[1], one.plan(0, 2)[1]) and not torch.equal(one.plan(0, 1)[1], one.plan(1, 1)[1])
    first = torch.cat([x for x, _, _ in one.epoch(0, 1)])
    again = torch.cat([x for x, _, _ in two.epoch(0, 1)])
    assert torch.equal(first, again)  # the same images whatever the batch size: per-position draws
    # offsets uniform on 0..2*pad (pad 3 at 24 px), flips half the time, over many epochs
    dy = torch.cat([one.plan(0, e)[1] for e in range(1, 60)])
    flips = torch.cat([one.plan(0, e)[3] for e in range(1, 60)]).float()
    share = torch.bincount(dy, minlength=7).float() / dy.numel()
    assert torch.allclose(share, torch.full((7,), 1 / 7), atol=0.01) and abs(flips.mean().item() - 0.5) < 0.02


def _weights(result) -> dict:
    return checkpoint.load(result.checkpoint)["model_state"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_without_augmentation_both_paths_train_the_same_weights(tiny_world, tmp_path):
    runs = {}
    for batches in ("memory", "loader"):
        s = study(tmp_path / batches, tiny_world, SCRATCH, batches=batches, augment=False, epochs=1)
        runs[batches] = fit_named(s, "scratch")
    assert _same(_weights(runs["memory"]), _weights(runs["loader"]))
    assert runs["memory"].val_acc == runs["loader"].val_acc


@pytest.mark.slow
@pytest.mark.parametrize("batches, augment", [("loader", False), ("memory", True)])
def test_dataloader_workers_change_no_weight(tiny_world, tmp_path, batches, augment):
    """0 vs 2 workers. The DataLoader path with augmentation is the exception: torch seeds each worker's
    transforms from the loader's generator, while without workers they draw from the global RNG, so its
    augmentations (not their distribution) depend on the worker count (README, Training)."""
    runs = []
    for workers in (0, 2):
        s = study(tmp_path / str(workers), tiny_world, SCRATCH, batches=batches, augment=augment, num_workers=workers, epochs=1)
        runs.append(fit_named(s, "scratch"))
    assert _same(_weights(runs[0]), _weights(runs[1]))
