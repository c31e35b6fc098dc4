"""Writing the Broden on-disk format (see :mod:`kdlib.data.broden` for the format itself).

NumPy and Pillow only, so the world generator's worker processes never import torch.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from kdlib.errors import KdlibError

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
INDEX_FILE = "index.csv"


# --------------------------------------------------------------------------------------------
# Segmentation encoding
# --------------------------------------------------------------------------------------------


def encode_segmentation(labels: np.ndarray) -> Image.Image:
    """Label numbers [H, W] -> RGB PNG image with ``R = n % 256``, ``G = n // 256``, ``B = 0``."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= 65536:
        raise KdlibError(f"segmentation label {int(labels.max())} is out of range; valid: 0..65535")
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return Image.fromarray(rgb, mode="RGB")


def decode_segmentation(image: Image.Image) -> np.ndarray:
    """RGB segmentation image -> label numbers [H, W] (int64), ``R + 256 * G``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int64)
    return arr[..., 0] + 256 * arr[..., 1]


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


@dataclass
class WrittenImage:
    """What :func:`write_item` wrote for one image: the index.csv row and its label statistics."""

    row: dict[str, str]
    # (category, label) -> pixels covered in this image (image-level labels: the whole image)
    pixels: dict[tuple[str, int], int] = field(default_factory=dict)
    area: int = 1


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_item(
    root: str | os.PathLike,
    name: str,
    image: np.ndarray,
    pixel: Mapping[str, Sequence[np.ndarray]] | None = None,
    scalar: Mapping[str, Sequence[int]] | None = None,
    split: str = "train",
    categories: Sequence[str] = (),
) -> WrittenImage:
    """Write one image and its segmentations under ``root/images``; returns its row and label counts.

    ``name`` is the image's path relative to ``images/`` without extension (e.g. ``probe/000123``);
    segmentation layer k of category c is written as ``<name>_<c>[_k].png``. Pure: safe to call from
    worker processes, the statistics are merged by :class:`BrodenWriter`.
    """
    root = Path(root)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise KdlibError(f"image {name!r} has shape {image.shape} {image.dtype}; valid: uint8 [H, W, 3]")
    pixel = pixel or {}
    scalar = scalar or {}
    ih, iw = image.shape[:2]
    out = root / "images" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_png_bytes(Image.fromarray(image, mode="RGB")))
    layers = [np.asarray(l) for ls in pixel.values() for l in ls]
    sh, sw = layers[0].shape if layers else (ih, iw)
    row = {"image": f"{name}.png", "split": split, "ih": str(ih), "iw": str(iw), "sh": str(sh), "sw": str(sw)}
    counts: dict[tuple[str, int], int] = {}
    for cat in categories:
        cells: list[str] = []
        for k, layer in enumerate(pixel.get(cat, ())):
            layer = np.asarray(layer)
            if layer.shape != (sh, sw):
                raise KdlibError(f"image {name!r}: {cat} layer {k} is {layer.shape}; valid: {(sh, sw)} like its other layers")
            suffix = f"_{cat}" if k == 0 else f"_{cat}_{k}"
            seg_name = f"{name}{suffix}.png"
            (root / "images" / seg_name).write_bytes(_png_bytes(encode_segmentation(layer)))
            cells.append(seg_name)
            hist = np.bincount(layer.ravel().astype(np.int64))
            for n in np.flatnonzero(hist):
                if n:
                    counts[(cat, int(n))] = counts.get((cat, int(n)), 0) + int(hist[n])
        for n in scalar.get(cat, ()):
            cells.append(str(int(n)))
            counts[(cat, int(n))] = counts.get((cat, int(n)), 0) + sh * sw
        row[cat] = ";".join(cells)
    return WrittenImage(row=row, pixels=counts, area=sh * sw)


class BrodenWriter:
    """Collects written images and writes the Broden tables.

    ``labels`` lists label names; label number ``i + 1`` is ``labels[i]`` (0 is "unlabelled").
    ``categories`` fixes the category order (columns of index.csv, rows of category.csv).
    """

    def __init__(self, root: str | os.PathLike, categories: Sequence[str], labels: Sequence[str]):
        self.root = Path(root)
        self.categories = list(categories)
        self.labels = list(labels)
        self.rows: list[dict[str, str]] = []
        n = len(self.labels) + 1
        self.frequency = {c: np.zeros(n, dtype=np.int64) for c in self.categories}
        self.coverage = {c: np.zeros(n, dtype=np.float64) for c in self.categories}
        self.category_images = {c: 0 for c in self.categories}

    def add(self, name: str, image: np.ndarray, pixel=None, scalar=None, split: str = "train") -> None:
        self.add_written(write_item(self.root, name, image, pixel, scalar, split, self.categories))

    def add_written(self, item: WrittenImage) -> None:
        self.rows.append(item.row)
        seen_cats = set()
        for (cat, n), count in item.pixels.items():
            if not 0 < n <= len(self.labels):
                raise KdlibError(f"image {item.row['image']!r}: {cat} label {n} is not defined; valid: 1..{len(self.labels)}")
            self.frequency[cat][n] += 1
            self.coverage[cat][n] += count / item.area
            seen_cats.add(cat)
        for cat in seen_cats:
            self.category_images[cat] += 1

    def finish(self) -> pd.DataFrame:
        """Write index.csv, category.csv, label.csv and c_*.csv; return the label statistics table."""
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        _write_csv(root / INDEX_FILE, [*META_COLUMNS, *self.categories], self.rows)
        label_rows, cat_rows = [], []
        for cat in self.categories:
            numbers = [n for n in range(1, len(self.labels) + 1) if self.frequency[cat][n] > 0]
            codes = [
                {
                    "code": str(code),
                    "number": str(n),
                    "name": self.labels[n - 1],
                    "frequency": str(int(self.frequency[cat][n])),
                    "coverage": f"{self.coverage[cat][n]:.6f}",
                }
                for code, n in enumerate(numbers, start=1)
            ]
            _write_csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"], codes)
            cat_rows.append(
                {
                    "name": cat,
                    "first": "1" if numbers else "0",
                    "last": str(len(numbers)),
                    "count": str(len(numbers)),
                    "frequency": str(self.category_images[cat]),
                }
            )
        for n, name in enumerate(self.labels, start=1):
            cats = [(c, int(self.frequency[c][n])) for c in self.categories if self.frequency[c][n] > 0]
            label_rows.append(
                {
                    "number": str(n),
                    "name": name,
                    "category": ";".join(f"{c}({k})" for c, k in cats),
                    "frequency": str(sum(k for _, k in cats)),
                    "coverage": f"{sum(self.coverage[c][n] for c, _ in cats):.6f}",
                    "syns": "",
                }
            )
        _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
        _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"], label_rows)
        return label_statistics(self)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def label_statistics(writer: BrodenWriter) -> pd.DataFrame:
    """Per category: how many concepts, and their image frequency and pixel coverage.

    Columns: category, concepts, images (with any label of the category), mean/min/max frequency
    (share of images in which a concept appears), mean/max coverage (share of all probe pixels a
    concept covers), as Broden's ``label.csv`` frequency/coverage columns divided by the image count.
    """
    n_images = max(len(writer.rows), 1)
    out = []
    for cat in writer.categories:
        freq = writer.frequency[cat][1:]
        cov = writer.coverage[cat][1:]
        used = freq > 0
        f = freq[used] / n_images
        c = cov[used] / n_images
        out.append(
            {
                "category": cat,
                "concepts": int(used.sum()),
                "images": int(writer.category_images[cat]),
                "frequency_mean": float(f.mean()) if used.any() else 0.0,
                "frequency_min": float(f.min()) if used.any() else 0.0,
                "frequency_max": float(f.max()) if used.any() else 0.0,
                "coverage_mean": float(c.mean()) if used.any() else 0.0,
                "coverage_max": float(c.max()) if used.any() else 0.0,
            }
        )
    return pd.DataFrame(out)
