"""The Broden on-disk format (Bau et al. 2017): reader for any Broden-format dataset, and a writer.

A Broden dataset is a folder with
- ``index.csv``: one row per image; columns ``image, split, ih, iw, sh, sw`` and one column per category.
  A category cell holds segmentation file names (pixel-level labels) or label numbers (image-level labels,
  e.g. scene), several joined by ``;``; an empty cell means "no label of this category".
- ``category.csv``: ``name, first, last, count, frequency`` (one row per category).
- ``label.csv``: ``number, name, category, frequency, coverage, syns``; ``category`` lists every category
  the label appears in with its image count, e.g. ``object(120);part(3)``. Label 0 means "unlabelled".
- ``c_<category>.csv``: ``code, number, name, frequency, coverage``: the category's dense codes.
- ``images/``: the images and segmentation PNGs named in ``index.csv``; a segmentation pixel's label
  number is ``R + 256 * G``.
``frequency`` counts images where a label appears; ``coverage`` sums, over images, the share of the
image it covers (so it is in units of whole images; an image-level label covers its whole image).

:class:`BrodenDataset` reads the real ``broden1_224`` / ``broden1_227`` as well as the generated probe set.
Images come back as RGB float tensors at their stored size (resized only when ``image_size`` is given),
normalised with :mod:`kdlib.data.transforms` (ImageNet mean and std), which is what every kdlib model is
trained on.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from kdlib.data import transforms
from kdlib.data.broden_format import (  # noqa: F401  (writer re-exported: one import for the format)
    INDEX_FILE,
    META_COLUMNS,
    BrodenWriter,
    decode_segmentation,
    encode_segmentation,
    write_item,
)
from kdlib.errors import KdlibError
from kdlib.params import check_plain_name

# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file (UTF-8), one line naming the file for a missing file or column, text that
    is not UTF-8, or a malformed line."""
    if not path.is_file():
        raise KdlibError(f"missing {path}; valid: a Broden dataset folder holding {path.name}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise KdlibError(f"{path} lacks column {missing[0]!r}; valid: columns {', '.join(required)}")
            return list(reader)
    except UnicodeDecodeError as exc:
        raise KdlibError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); valid: a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise KdlibError(f"{path} line {reader.line_num}: {exc}; valid: a CSV file") from None


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KdlibError(f"{where} = {value!r} is not valid; valid: an integer") from None


def _label_numbers(path: Path, rows: Sequence[Mapping[str, str]]) -> list[int]:
    """``label.csv``'s numbers: unique positive integers (0 is "unlabelled" and is not listed)."""
    numbers, seen = [], {}
    for r, row in enumerate(rows, start=2):
        value = row["number"]
        number = int(value) if value is not None and value.strip().isdigit() else None
        if number is None or number < 1:
            raise KdlibError(f"{path} row {r}: number = {value!r} is not valid; valid: a positive integer (0 means unlabelled)")
        if number in seen:
            raise KdlibError(f"{path} row {r}: number = {value!r} is listed twice (also row {seen[number]}); valid: unique label numbers")
        seen[number] = r
        numbers.append(number)
    return numbers


def _positive(row: Mapping[str, str], column: str, where: str) -> int:
    value = _int(row[column], f"{where}: {column}")
    if value < 1:
        raise KdlibError(f"{where}: {column} = {row[column]!r} is not valid; valid: a positive integer")
    return value


@dataclass(frozen=True)
class IndexRow:
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pixel: dict[str, tuple[str, ...]]  # category -> segmentation files
    scalar: dict[str, tuple[int, ...]]  # category -> image-level label numbers


class BrodenDataset(torch.utils.data.Dataset):
    """A Broden-format dataset.

    ``dataset[i]`` is a dict with
    - ``image``: float tensor [3, ih, iw] (or [3, image_size, image_size] when ``image_size`` is given),
      normalised for kdlib models;
    - ``pixel``: {category: int64 tensor [n, sh, sw]} of label numbers, ``n`` segmentation layers
      (0 means unlabelled);
    - ``scalar``: {category: int64 tensor [m]} image-level label numbers (e.g. scenes);
    - ``index``: ``i``.
    Only the ``categories`` asked for (default: all, in ``category.csv`` order) are loaded.

    Tables: :attr:`labels` (``label.csv`` as a DataFrame indexed by number), :attr:`category_table`,
    :attr:`category_codes` ({category: DataFrame of ``c_<category>.csv``}); :attr:`label_names` is a
    list indexed by label number; :attr:`primary_category` maps each label number to the index (in
    :attr:`categories`) of the category where it covers the most pixels, or -1 for labels that appear
    in none of the loaded categories (ties go to the later category, as in NetDissect-Lite).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        categories: Sequence[str] | None = None,
        image_size: int | None = None,
        normalize: bool = True,
        check_files: bool = True,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KdlibError(f"Broden folder {str(self.root)!r} does not exist; valid: a folder holding {INDEX_FILE}")
        self.image_size = image_size
        self.normalize = normalize
        cat_rows = _read_csv(self.root / "category.csv", ["name"])
        # category names become file names (c_<name>.csv) and index.csv columns
        all_categories = [check_plain_name(r["name"], f"{self.root / 'category.csv'} row {i}: name") for i, r in enumerate(cat_rows, start=2)]
        if categories is None:
            categories = all_categories
        unknown = [c for c in categories if c not in all_categories]
        if unknown:
            raise KdlibError(f"category {unknown[0]!r} is not in {self.root / 'category.csv'}; valid: {', '.join(all_categories)}")
        self.categories: list[str] = [c for c in all_categories if c in set(categories)]
        self.category_table = pd.DataFrame(cat_rows).set_index("name").loc[self.categories]

        label_rows = _read_csv(self.root / "label.csv", ["number", "name"])
        numbers = _label_numbers(self.root / "label.csv", label_rows)
        self.num_labels = max(numbers, default=0) + 1
        self.labels = pd.DataFrame(label_rows).assign(number=numbers).set_index("number")
        names = ["-"] * self.num_labels
        for n, r in zip(numbers, label_rows):
            names[n] = r["name"]
        self.label_names: list[str] = names
        self.known_label = np.zeros(self.num_labels, dtype=bool)
        self.known_label[numbers] = True
        self.known_label[0] = True  # unlabelled

        self.category_codes: dict[str, pd.DataFrame] = {cat: self._read_codes(cat) for cat in self.categories}
        self.primary_category = torch.as_tensor(self._primary(), dtype=torch.long)

        index_rows = _read_csv(self.root / INDEX_FILE, list(META_COLUMNS))
        self.image_level = self._image_level(index_rows)
        self.rows: list[IndexRow] = [self._decode_row(i, r) for i, r in enumerate(index_rows)]
        if check_files:
            self._check_files()

    # -- tables --------------------------------------------------------------------------------

    def _read_codes(self, cat: str) -> pd.DataFrame:
        """``c_<cat>.csv``: codes and numbers integers, every number a label of ``label.csv``."""
        path = self.root / f"c_{cat}.csv"
        rows = _read_csv(path, ["code", "number", "name"])
        frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["code", "number", "name", "frequency", "coverage"])
        for col in ("code", "number"):
            frame[col] = [_int(v, f"{path} row {r}: {col}") for r, v in enumerate(frame[col], start=2)]
        for r, n in enumerate(frame["number"], start=2):
            if not (0 < n < self.num_labels and self.known_label[n]):
                raise KdlibError(f"{path} row {r}: number = {n} is not in label.csv; valid: numbers listed in label.csv")
        frame["coverage"] = pd.to_numeric(frame.get("coverage", 0.0), errors="coerce").fillna(0.0)
        return frame

    def _primary(self) -> np.ndarray:
        """Each label's primary category: where its coverage is largest, ties to the later category."""
        coverage = np.zeros((len(self.categories), self.num_labels))
        for ci, cat in enumerate(self.categories):
            frame = self.category_codes[cat]
            coverage[ci, frame["number"].to_numpy(dtype=np.int64)] = np.maximum(frame["coverage"].to_numpy(), 1e-12)  # present
        # argmax over categories with ties going to the later one: flip, argmax, unflip.
        primary = len(self.categories) - 1 - np.argmax(coverage[::-1], axis=0)
        primary[~(coverage > 0).any(axis=0)] = -1
        return primary

    def _image_level(self, index_rows: Sequence[Mapping[str, str]]) -> dict[str, bool]:
        """Per category, whether its ``index.csv`` cells hold label numbers (image-level labels such as
        scenes) rather than segmentation files: decided by the first non-empty cell of its column."""
        kinds = {}
        for cat in self.categories:
            first = next((item for row in index_rows for item in (row.get(cat) or "").split(";") if item), None)
            kinds[cat] = first is not None and first.lstrip("+-").isdigit()
        return kinds

    # -- index decoding ------------------------------------------------------------------------

    def _decode_row(self, i: int, row: Mapping[str, str]) -> IndexRow:
        where = f"{self.root / INDEX_FILE} row {i + 2}"
        pixel: dict[str, tuple[str, ...]] = {}
        scalar: dict[str, tuple[int, ...]] = {}
        for cat in self.categories:
            items = [s for s in (row.get(cat) or "").split(";") if s]
            if not items:
                continue
            if self.image_level[cat]:
                scalar[cat] = tuple(self._label_number(cat, item, where) for item in items)
                continue
            numbers = [item for item in items if item.lstrip("+-").isdigit()]
            if numbers:
                raise KdlibError(
                    f"{where}: {cat} = {numbers[0]!r} is a label number in a column of segmentation files; "
                    "valid: file names (image-level labels belong in a column of label numbers, such as scene)"
                )
            pixel[cat] = tuple(items)
        sizes = {col: _positive(row, col, where) for col in ("ih", "iw", "sh", "sw")}
        return IndexRow(image=row["image"], split=row["split"], pixel=pixel, scalar=scalar, **sizes)

    def _label_number(self, cat: str, item: str, where: str) -> int:
        """One image-level cell item: a label number listed in label.csv."""
        if not item.isdigit() or int(item) == 0:
            raise KdlibError(f"{where}: {cat} = {item!r} is not a label number; valid: positive label numbers listed in label.csv")
        n = int(item)
        if n >= self.num_labels or not self.known_label[n]:
            raise KdlibError(f"{where}: {cat} label {n} is not in label.csv; valid: numbers listed in label.csv")
        return n

    def _check_files(self) -> None:
        images = self.root / "images"
        for row in self.rows:
            for name in (row.image, *(f for files in row.pixel.values() for f in files)):
                if not (images / name).is_file():
                    raise KdlibError(f"missing file {images / name} (named in {self.root / INDEX_FILE}); valid: an existing image")

    # -- items ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.rows[i].image

    def load_image(self, i: int) -> Image.Image:
        """The i-th image as stored (PIL, RGB), for pictures."""
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise KdlibError(f"corrupt image {path}: {exc.__class__.__name__}; valid: a readable JPEG or PNG") from None

    def load_segmentation(self, i: int, category: str) -> torch.Tensor:
        """Pixel labels of one category for image i: int64 [n, sh, sw] (n = 0 if none)."""
        row = self.rows[i]
        layers = []
        for name in row.pixel.get(category, ()):
            path = self.root / "images" / name
            try:
                with Image.open(path) as im:
                    seg = decode_segmentation(im)
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise KdlibError(f"corrupt segmentation {path}: {exc.__class__.__name__}; valid: an RGB PNG") from None
            if seg.shape != (row.sh, row.sw):
                raise KdlibError(f"segmentation {path} is {seg.shape[0]}x{seg.shape[1]}; valid: {row.sh}x{row.sw} (sh x sw in index.csv)")
            bad = seg >= self.num_labels
            if not bad.any():
                bad = ~self.known_label[seg]
            if bad.any():
                raise KdlibError(f"segmentation {path} holds label {int(seg[bad][0])}, which is not in label.csv; valid: numbers listed in label.csv")
            layers.append(torch.from_numpy(seg))
        if not layers:
            return torch.zeros((0, row.sh, row.sw), dtype=torch.long)
        return torch.stack(layers)

    def image_tensor(self, i: int) -> torch.Tensor:
        """The i-th image as the model sees it: float [3, H, W], resized if asked, normalised if asked."""
        image = self.load_image(i)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return transforms.normalize(tensor) if self.normalize else tensor

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        return {
            "image": self.image_tensor(i),
            "pixel": {cat: self.load_segmentation(i, cat) for cat in row.pixel},
            "scalar": {cat: torch.tensor(nums, dtype=torch.long) for cat, nums in row.scalar.items()},
            "index": i,
        }

    # -- identity ------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A content hash of the tables, the categories loaded, the image size and each listed file's size.

        Changes when the data changes; unchanged when the folder is moved or copied."""
        h = hashlib.sha256()
        h.update(repr((self.categories, self.image_size, self.normalize)).encode())
        for name in [INDEX_FILE, "category.csv", "label.csv", *[f"c_{c}.csv" for c in self.categories]]:
            h.update(name.encode())
            h.update((self.root / name).read_bytes())
        images = self.root / "images"
        for row in self.rows:
            for name in (row.image, *(f for files in row.pixel.values() for f in files)):
                try:
                    size = (images / name).stat().st_size
                except OSError:
                    raise KdlibError(f"missing file {images / name} (named in {self.root / INDEX_FILE}); valid: an existing image") from None
                h.update(f"{name}:{size};".encode())
        return h.hexdigest()[:16]

    def category_of(self, label: int) -> str | None:
        ci = int(self.primary_category[label])
        return None if ci < 0 else self.categories[ci]


def collate_broden(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch Broden items for dissection.

    Returns ``image`` [B, 3, H, W]; ``pixel`` int64 [B, L, sh, sw], every pixel category's layers
    concatenated and zero-padded to the largest L in the batch; ``scalar`` int64 [B, M] image-level
    labels, zero-padded; ``index`` [B]. All items must share image and segmentation sizes.
    """
    if not items:
        raise KdlibError("empty batch; valid: at least one Broden item")
    images = [it["image"] for it in items]
    if len({tuple(im.shape) for im in images}) > 1:
        raise KdlibError(
            f"images of different sizes in one batch ({sorted({tuple(im.shape[1:]) for im in images})}); "
            "valid: one size (pass image_size= to BrodenDataset)"
        )
    pix = [torch.cat(list(it["pixel"].values())) if it["pixel"] else None for it in items]
    sizes = {tuple(p.shape[1:]) for p in pix if p is not None}
    if len(sizes) > 1:
        raise KdlibError(f"segmentations of different sizes in one batch ({sorted(sizes)}); valid: one size per batch")
    sh, sw = sizes.pop() if sizes else (images[0].shape[1], images[0].shape[2])
    depth = max((p.shape[0] for p in pix if p is not None), default=0)
    pixel = torch.zeros((len(items), depth, sh, sw), dtype=torch.long)
    for b, p in enumerate(pix):
        if p is not None:
            pixel[b, : p.shape[0]] = p
    scal = [torch.cat(list(it["scalar"].values())) if it["scalar"] else torch.zeros(0, dtype=torch.long) for it in items]
    width = max((s.numel() for s in scal), default=0)
    scalar = torch.zeros((len(items), width), dtype=torch.long)
    for b, s in enumerate(scal):
        scalar[b, : s.numel()] = s
    return {
        "image": torch.stack(images),
        "pixel": pixel,
        "scalar": scalar,
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


