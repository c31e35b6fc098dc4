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
