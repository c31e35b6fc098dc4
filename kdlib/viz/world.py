"""Pictures of a generated world: example images per class beside their object masks, and probe images
beside their Broden labels. Each function returns the figure and the table of what it shows (which
image of which class, its attributes; which probe image, its labels), the table a notebook prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from kdlib.data.broden import BrodenDataset
from kdlib.errors import KdlibError

MASK_COLOURS = np.array([[0, 0, 0], [90, 140, 255], [255, 200, 0]], dtype=np.uint8)  # background, object, feature
PROBE_CATEGORIES = ("color", "object", "part", "material", "texture")


def _classes(world: Path) -> list[dict]:
    path = Path(world) / "classes.json"
    if not path.is_file():
        raise KdlibError(f"world {str(world)!r} is not a generated world (no classes.json); valid: a folder made by kdlib.data.world")
    return sorted(json.loads(path.read_text(encoding="utf-8"))["classes"], key=lambda c: c["index"])


def _label_image(layer: np.ndarray, seed: int = 0) -> np.ndarray:
    palette = np.random.default_rng(seed).integers(40, 255, size=(int(layer.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[layer]


def _bare(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def world_grid(world: str | Path, per_class: int = 3, classes: int = 8, split: str = "val") -> tuple[Figure, pd.DataFrame]:
    """The first ``per_class`` ``split`` images of the first ``classes`` classes, each beside its object
    mask (object blue, the class's distinguishing part yellow)."""
    world = Path(world)
    chosen = _classes(world)[:classes]
    fig = Figure(figsize=(2 * per_class * 1.1, len(chosen) * 1.25))
    axes = fig.subplots(len(chosen), 2 * per_class, squeeze=False)
    rows = []
    for r, c in enumerate(chosen):
        files = sorted((world / "imagefolder" / split / c["name"]).glob("*.png"))[:per_class]
        for j, f in enumerate(files):
            axes[r, 2 * j].imshow(Image.open(f))
            mask = np.asarray(Image.open(world / "masks" / split / c["name"] / f.name))
            axes[r, 2 * j + 1].imshow(MASK_COLOURS[np.clip(mask, 0, 2)])
            rows.append({"class": c["name"], "image": f.name, "object_pixels": int((mask > 0).sum()),
                         "part_pixels": int((mask == 2).sum())})
        axes[r, 0].set_ylabel(f"{c['name']}\n{c['part']}, {c['texture']}\n{c['material']}, {c['colour']}", fontsize=6,
                              rotation=0, ha="right", va="center")
    _bare(axes)
    fig.suptitle(f"{split} images (left) and object masks (right: object blue, distinguishing part yellow)", fontsize=8)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def probe_grid(world: str | Path, images: int = 4) -> tuple[Figure, pd.DataFrame]:
    """The first ``images`` probe images, each with its pixel labels per category (scene is image-level)."""
    probe = BrodenDataset(Path(world) / "broden", check_files=False)
    fig = Figure(figsize=((len(PROBE_CATEGORIES) + 1) * 1.3, images * 1.4))
    axes = fig.subplots(images, len(PROBE_CATEGORIES) + 1, squeeze=False)
    rows = []
    for r in range(min(images, len(probe))):
        item = probe[r]
        axes[r, 0].imshow(probe.load_image(r))
        scene = [probe.label_names[int(n)] for n in item["scalar"].get("scene", [])]
        axes[r, 0].set_title(", ".join(scene), fontsize=5)
        row = {"probe_image": r, "scene": ", ".join(scene)}
        for j, cat in enumerate(PROBE_CATEGORIES, start=1):
            layer = item["pixel"].get(cat)
            if layer is not None:
                axes[r, j].imshow(_label_image(layer[0].numpy(), j))
            row[f"{cat}_labels"] = 0 if layer is None else int(len(np.setdiff1d(np.unique(layer[0].numpy()), [0])))
            if r == 0:
                axes[r, j].set_title(cat, fontsize=7)
        rows.append(row)
    _bare(axes)
    fig.suptitle("probe images and their Broden labels (scene is image-level)", fontsize=8)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)
