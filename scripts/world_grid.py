"""Picture grid of a generated world: example images per class with their object masks and probe labels.

    python scripts/world_grid.py --world data/world-default-s0 --out docs/world_grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kdlib import atomic  # noqa: E402
from kdlib.data.broden import BrodenDataset  # noqa: E402
from kdlib.errors import KdlibError, cli_main  # noqa: E402

MASK_COLOURS = np.array([[0, 0, 0], [90, 140, 255], [255, 200, 0]], dtype=np.uint8)  # bg, object, feature


def _label_image(layer: np.ndarray, seed: int = 0) -> np.ndarray:
    palette = np.random.default_rng(seed).integers(40, 255, size=(int(layer.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[layer]


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--classes", type=int, default=8, help="how many classes to show (first N)")
    args = p.parse_args(argv)
    world = Path(args.world)
    if not (world / "classes.json").is_file():
        raise KdlibError(f"--world {str(world)!r} is not a generated world (no classes.json); valid: a folder made by kdlib.data.world")
    onto = json.loads((world / "classes.json").read_text())
    classes = onto["classes"][: args.classes]
    k = args.per_class
    fig, axes = plt.subplots(len(classes), 2 * k, figsize=(2 * k * 1.1, len(classes) * 1.25))
    for r, c in enumerate(classes):
        files = sorted((world / "imagefolder" / "val" / c["name"]).glob("*.png"))[:k]
        for j, f in enumerate(files):
            axes[r, 2 * j].imshow(Image.open(f))
            mask = np.asarray(Image.open(world / "masks" / "val" / c["name"] / f.name))
            axes[r, 2 * j + 1].imshow(MASK_COLOURS[np.clip(mask, 0, 2)])
        axes[r, 0].set_ylabel(f"{c['name']}\n{c['part']}, {c['texture']}\n{c['material']}, {c['colour']}", fontsize=6, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("val images (left) and object masks (right: object blue, distinguishing part yellow)", fontsize=8)
    fig.tight_layout()

    ds = BrodenDataset(world / "broden", check_files=False)
    cats = ["color", "object", "part", "material", "texture"]
    fig2, axes2 = plt.subplots(4, len(cats) + 1, figsize=((len(cats) + 1) * 1.3, 4 * 1.4))
    for r in range(4):
        item = ds[r]
        axes2[r, 0].imshow(ds.load_image(r))
        scene = [ds.label_names[int(n)] for n in item["scalar"].get("scene", [])]
        axes2[r, 0].set_title(", ".join(scene), fontsize=5)
        for j, cat in enumerate(cats, start=1):
            layer = item["pixel"].get(cat)
            if layer is not None:
                axes2[r, j].imshow(_label_image(layer[0].numpy(), j))
            if r == 0:
                axes2[r, j].set_title(cat, fontsize=7)
    for ax in axes2.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig2.suptitle("probe images and their Broden labels (scene is image-level)", fontsize=8)
    fig2.tight_layout()

    out = Path(args.out)
    for figure, target in ((fig, out), (fig2, out.with_name(out.stem + "_probe" + out.suffix))):
        with atomic.atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
