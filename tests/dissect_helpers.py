"""Hand-made Broden probe sets and hand-built models for the dissection tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdlib.data.broden import BrodenDataset, BrodenWriter
from kdlib.data.transforms import MEAN, STD


def random_broden(root: Path, n: int = 24, size: int = 16, seed: int = 0) -> BrodenDataset:
    """A small probe set exercising every rule: object and part masks (several layers for part), a
    colour category, a label ("wood") in two pixel categories whose primary one is material, image-level
    scenes (sometimes two per image), images without any pixel label, and unlabelled pixels."""
    rng = np.random.default_rng(seed)
    labels = ["disc", "square", "wheel", "door", "red", "blue", "wood", "metal", "beach", "kitchen"]
    num = {name: i + 1 for i, name in enumerate(labels)}
    w = BrodenWriter(root, ["object", "part", "material", "color", "scene"], labels)
    for i in range(n):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        pixel: dict[str, list[np.ndarray]] = {}
        if i % 5 != 4:  # every fifth image has no pixel label at all
            obj = np.zeros((size, size), dtype=np.int64)
            for name in ("disc", "square"):
                y, x = rng.integers(0, size - 4, size=2)
                hh, ww = rng.integers(2, 6, size=2)
                obj[y : y + hh, x : x + ww] = num[name]
                image[y : y + hh, x : x + ww, 0] = 230 if name == "disc" else 40
            if i % 3 == 0:
                obj[:2, :3] = num["wood"]  # wood as an object: small
            pixel["object"] = [obj]
            parts = []
            for name in ("wheel", "door")[: 1 + i % 2]:
                part = np.zeros((size, size), dtype=np.int64)
                y, x = rng.integers(0, size - 3, size=2)
                part[y : y + 3, x : x + 3] = num[name]
                parts.append(part)
            pixel["part"] = parts
            mat = np.zeros((size, size), dtype=np.int64)
            mat[size // 2 :, :] = num["wood"] if i % 2 else num["metal"]  # wood as a material: large
            pixel["material"] = [mat]
            col = np.zeros((size, size), dtype=np.int64)
            y, x = rng.integers(0, size - 5, size=2)
            col[y : y + 5, x : x + 5] = num["red"] if i % 2 else num["blue"]
            image[y : y + 5, x : x + 5, 1] = 250
            pixel["color"] = [col]
        scalar = {"scene": [num["beach"]] if i % 3 else [num["beach"], num["kitchen"]]}
        if i % 7 == 6:
            scalar = {}
        w.add(f"probe/{i:04d}", image, pixel=pixel, scalar=scalar, split="probe")
    w.finish()
    return BrodenDataset(root)


class SmallNet(nn.Module):
    """A small random conv net with two 4-D stages (16x16 -> 8x8 -> 4x4) and a classifier head."""

    def __init__(self, seed: int = 0, units: tuple[int, int] = (6, 8)):
        super().__init__()
        torch.manual_seed(seed)
        self.layer1 = nn.Sequential(nn.Conv2d(3, units[0], 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(units[0], units[1], 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(units[1], 3)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.layer1(x))).flatten(1))


class ChannelUnits(nn.Module):
    """``units`` = fixed 1x1 convolution of the (normalised) image: unit k = ``gain_k * channel_k`` +
    ``bias_k``; gain 0 gives a constant unit. Maps are at the image's resolution."""

    def __init__(self, gains, biases, channels):
        super().__init__()
        self.units = nn.Conv2d(3, len(gains), 1)
        with torch.no_grad():
            self.units.weight.zero_()
            for k, (g, c) in enumerate(zip(gains, channels)):
                self.units.weight[k, c] = g
            self.units.bias.copy_(torch.tensor(biases, dtype=torch.float32))

    def forward(self, x):
        return self.units(x).mean(dim=(2, 3))


def normalised(value: float, channel: int) -> float:
    return (value / 255.0 - MEAN[channel]) / STD[channel]


def save_small_checkpoint(path: Path, seed: int = 0, epoch: int = 3) -> SmallNet:
    """A checkpoint in a format of this file's own (not kdlib.train's), for :func:`load_small_checkpoint`."""
    net = SmallNet(seed=seed)
    torch.save({"model": {"name": "smallnet", "seed": seed}, "epoch": epoch, "weights": net.state_dict()}, path)
    return net


def load_small_checkpoint(path) -> tuple[nn.Module, dict]:
    """A checkpoint loader for ``python -m kdlib.dissect --loader dissect_helpers:load_small_checkpoint``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = SmallNet(seed=state["model"]["seed"])
    net.load_state_dict(state["weights"])
    return net, state


# --------------------------------------------------------------------------------------------
# A Broden-like probe set and a synthetic activation source (for the Broden-regime benchmark)
# --------------------------------------------------------------------------------------------

# Broden 1.0's categories and label counts (color, object, part, material: pixel level; scene and
# texture: image level), and the share of images carrying each (ADE20k/Pascal images have objects,
# parts on some, OpenSurfaces materials, DTD textures; every image has colour).
BRODEN_CATEGORIES = {"color": 11, "object": 584, "part": 234, "material": 32, "scene": 468, "texture": 47}
BRODEN_SHARE = {"object": 0.7, "part": 0.3, "material": 0.15, "scene": 0.5, "texture": 0.08}
SHARED_PARTS = 10  # part labels that are also object labels (a label in two categories, as in Broden)


def _zipf(rng, n: int, size, s: float = 1.1) -> np.ndarray:
    """Label indices 0..n-1 with Zipf-like frequencies (a few common concepts, a long tail)."""
    weights = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=weights / weights.sum())


def _ellipses(rng, size: int, count: int, labels: np.ndarray, radius: tuple[float, float], out: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    for label in labels[:count]:
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(*radius, 2) * size
        out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = label
    return out


def broden_like_layers(rng, size: int, first: dict[str, int]) -> tuple[dict[str, list[np.ndarray]], dict[str, list[int]]]:
    """One image's labels with Broden-like statistics: a colour layer always (blocky regions of 11 colour
    names), objects on 70% of images (a large background object and 1-5 ellipses, Zipf-distributed
    labels), parts on 30% (small ellipses; a second part layer on a third of those), materials on 15%,
    an image-level scene on 50%, an image-level texture on 8%."""
    cells = size // 8
    color = np.kron(rng.integers(0, 11, (cells, cells)), np.ones((8, 8), np.int64)) + first["color"]
    pixel: dict[str, list[np.ndarray]] = {"color": [color]}
    scalar: dict[str, list[int]] = {}
    if rng.random() < BRODEN_SHARE["object"]:
        obj = np.zeros((size, size), np.int64)
        obj[int(size * rng.uniform(0.4, 0.7)) :] = first["object"] + _zipf(rng, 5, 1)[0]  # floor, ground, ...
        labels = first["object"] + _zipf(rng, BRODEN_CATEGORIES["object"], 5)
        pixel["object"] = [_ellipses(rng, size, int(rng.integers(1, 6)), labels, (0.08, 0.35), obj)]
        if rng.random() < BRODEN_SHARE["part"] / BRODEN_SHARE["object"]:
            layers = []
            for _ in range(1 + (rng.random() < 1 / 3)):
                part = np.zeros((size, size), np.int64)
                labels = np.where(rng.random(3) < 0.2, first["object"] + rng.integers(0, SHARED_PARTS, 3),
                                  first["part"] + _zipf(rng, BRODEN_CATEGORIES["part"], 3))
                layers.append(_ellipses(rng, size, int(rng.integers(1, 4)), labels, (0.04, 0.12), part))
            pixel["part"] = layers
    if rng.random() < BRODEN_SHARE["material"]:
        mat = np.zeros((size, size), np.int64)
        for label in first["material"] + _zipf(rng, BRODEN_CATEGORIES["material"], int(rng.integers(1, 4))):
            y, x = rng.integers(0, size // 2, 2)
            mat[y : y + int(rng.integers(size // 4, size)), x : x + int(rng.integers(size // 4, size))] = label
        pixel["material"] = [mat]
    if rng.random() < BRODEN_SHARE["scene"]:
        scalar["scene"] = [int(first["scene"] + _zipf(rng, BRODEN_CATEGORIES["scene"], 1)[0])]
    if rng.random() < BRODEN_SHARE["texture"]:
        scalar["texture"] = [int(first["texture"] + _zipf(rng, BRODEN_CATEGORIES["texture"], 1)[0])]
    return pixel, scalar


def broden_like(root: Path, n: int = 2000, size: int = 112, seed: int = 0) -> Path:
    """Write a Broden-format probe set of ``n`` images with ``size`` px segmentations and Broden-like
    label statistics (:func:`broden_like_layers`; 1,376 labels in Broden's six categories). The images
    are 8x8 placeholders: the benchmark's activations come from :class:`SyntheticInputs`."""
    rng = np.random.default_rng(seed)
    names, first = [], {}
    for cat, count in BRODEN_CATEGORIES.items():
        first[cat] = len(names) + 1
        names += [f"{cat}-{k}" for k in range(count)]
    w = BrodenWriter(root, list(BRODEN_CATEGORIES), names)
    placeholder = np.zeros((8, 8, 3), np.uint8)
    for i in range(n):
        pixel, scalar = broden_like_layers(rng, size, first)
        w.add(f"probe/{i:06d}", placeholder, pixel=pixel, scalar=scalar, split="probe")
    w.finish()
    return Path(root)


class SyntheticInputs(BrodenDataset):
    """A Broden-format probe set whose model input for image i is a fixed smooth random map
    [3, hw, hw] seeded by i (so every method and every batch sees the same activations); labels as
    stored."""

    def __init__(self, root, hw: int, **kwargs):
        super().__init__(root, **kwargs)
        self.hw = hw

    def image_tensor(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(i))
        noise = torch.randn((1, 3, self.hw + 2, self.hw + 2), generator=g)
        return torch.nn.functional.avg_pool2d(noise, 3, stride=1)[0] * 3

    def __getitem__(self, i: int):
        return {**super().__getitem__(i), "image": self.image_tensor(i)}


class SyntheticUnits(nn.Module):
    """``layer4``: ``units`` activation maps at the input's resolution, ``relu(W x + b) * pattern``: a
    random 1x1 convolution of the 3 input maps, times a fixed positive spatial pattern per unit (so
    units differ in where they fire). Cheap: the benchmark times dissection, not a network."""

    def __init__(self, units: int = 512, hw: int = 7, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(3, units, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(torch.randn(units, generator=g) * 0.5)
        self.layer4 = nn.Sequential(conv, nn.ReLU(), _Scale(torch.rand((units, hw, hw), generator=g) + 0.5))

    def forward(self, x):
        return self.layer4(x).mean(dim=(2, 3))


class _Scale(nn.Module):
    def __init__(self, pattern: torch.Tensor):
        super().__init__()
        self.register_buffer("pattern", pattern)

    def forward(self, x):
        return x * self.pattern
