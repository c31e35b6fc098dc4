"""Decoded probe labels, cached once per probe set, in the layout the dissection tally reads.

Decoding a Broden probe set's segmentations (several PNGs per image) costs as much as the rest of a
small network's dissection, and it is the same for every network of a study. :func:`label_cache`
decodes them once into a folder and later calls read that folder back (memory-mapped):

* ``words.i64``: per image, per pixel (row-major, ``sh * sw`` of them), every segmentation layer's label,
  four 16-bit labels per int64 word (layer ``d`` in word ``d // 4`` at bit ``16 * (d % 4)``; labels are
  ``R + 256 G``, so below 65,536) (:func:`pack_labels`);
* ``bits.<dtype>``: per pixel, the primary categories of its labels as bits (bit ``c`` set when one of
  its labels has primary category ``c``; label 0 and labels in no loaded category set none)
  (:func:`category_bits`);
* ``index.npz``: per image its segmentation size, word count and offsets, its image-level labels, and
  its label histogram (pixels per label, image-level labels counting ``sh * sw``);
* ``key.json``: what the folder was made from: the probe set's fingerprint
  (:meth:`~kdlib.data.broden.BrodenDataset.fingerprint`: its tables, the categories loaded and every
  listed file's size), the categories, the label count and the format version. A folder is used only
  when its key equals the one asked for; otherwise (the set changed) it is rebuilt.

The folder is named ``labels-<hash of the key>`` inside the cache folder and written atomically (built
in a temporary folder beside it, then renamed), so a killed build leaves nothing that looks complete
and two processes building at once both end with one complete folder. Where the cache lives is the
caller's choice: :func:`kdlib.dissect.dissect` puts it in ``label_cache_dir``, by default
``<cache_dir>/labels`` (the study step passes the study's ``cache/``), else a temporary folder for the
one call. Size on disk: about 9 bytes per segmentation pixel (2400 probe images of 32 px: 9 MB;
Broden's 63k images of 112 px with up to 4 layers: about 7 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kdlib.atomic import atomic_dir
from kdlib.errors import KdlibError

FORMAT = 1
LANES = 4  # 16-bit labels per int64 word
MAX_CATEGORIES = 62  # bits of an int64, with room for the sign


def words_for(depth: int) -> int:
    """int64 words holding ``depth`` 16-bit labels."""
    return (depth + LANES - 1) // LANES


def pack_labels(layers: np.ndarray) -> np.ndarray:
    """Segmentation layers [D, S] (label numbers below 65,536) -> int64 [S, ceil(D / 4)], pixel-major."""
    layers = np.asarray(layers, dtype=np.int64)
    depth, size = layers.shape
    if depth and (layers.min() < 0 or layers.max() >= 1 << 16):
        raise KdlibError(f"segmentation label {int(layers.max())} is out of range; valid: 0..65535 (R + 256 G)")
    out = np.zeros((size, words_for(depth)), dtype=np.int64)
    for d in range(depth):
        out[:, d // LANES] |= layers[d] << (16 * (d % LANES))
    return out


def bits_dtype(num_categories: int) -> np.dtype:
    if num_categories > MAX_CATEGORIES:
        raise KdlibError(f"{num_categories} categories; valid: at most {MAX_CATEGORIES} (category bits are int64)")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_categories <= 8 * np.dtype(dtype).itemsize:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def category_bits(layers: np.ndarray, primary: np.ndarray, num_categories: int) -> np.ndarray:
    """Per pixel, bit ``c`` set when one of its labels (``layers`` [D, S]) has primary category ``c``
    (``primary`` [L]: index or -1; label 0 counts as none)."""
    layers = np.asarray(layers, dtype=np.int64)
    # each label's bit (0 for label 0 and labels in no category)
    label_bit = np.where(primary >= 0, np.left_shift(1, np.maximum(primary, 0), dtype=np.int64), 0).astype(np.int64)
    label_bit[0] = 0
    bits = np.zeros(layers.shape[1], dtype=np.int64)
    for layer in layers:
        bits |= label_bit[layer]
    return bits.astype(bits_dtype(num_categories))


@dataclass(frozen=True)
class DecodedImage:
    """One probe image's labels as the cache stores them (see the module docstring)."""

    size: tuple[int, int]
    words: np.ndarray  # int64 [S, W]
    bits: np.ndarray  # [S]
    scalar: np.ndarray  # int64 [m]
    hist_labels: np.ndarray  # int64 [n]
    hist_counts: np.ndarray  # int64 [n]


def decode_image(pixel: Sequence[np.ndarray], scalar: Sequence[int], size: tuple[int, int], primary: np.ndarray,
                 num_categories: int) -> DecodedImage:
    """The cache record of one image from its segmentation layers (each [sh, sw]) and image-level labels."""
    sh, sw = size
    layers = np.stack([np.asarray(l, dtype=np.int64).reshape(-1) for l in pixel]) if len(pixel) else np.zeros((0, sh * sw), np.int64)
    scalar = np.asarray([int(s) for s in scalar], dtype=np.int64)
    counts = np.bincount(layers.reshape(-1), minlength=1) if layers.size else np.zeros(1, np.int64)
    counts = counts.astype(np.int64)
    if scalar.size:
        extra = np.bincount(scalar, minlength=counts.size).astype(np.int64) * (sh * sw)
        counts = np.pad(counts, (0, max(0, extra.size - counts.size))) + np.pad(extra, (0, max(0, counts.size - extra.size)))
    counts[0] = 0
    labels = np.flatnonzero(counts)
    return DecodedImage((sh, sw), pack_labels(layers), category_bits(layers, primary, num_categories), scalar,
                        labels.astype(np.int64), counts[labels])


class DecodedLabels:
    """A label cache folder, memory-mapped: ``image(i)`` gives image i's :class:`DecodedImage`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = np.load(self.folder / "index.npz")
        self._index = {name: index[name] for name in index.files}
        self.key = json.loads((self.folder / "key.json").read_text(encoding="utf-8"))
        self._words: np.ndarray | None = None
        self._bits: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._index["sh"].size)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._words is None:  # opened on first use (also in each DataLoader worker)
            self._words = _memmap(self.folder / "words.i64", np.dtype("<i8"))
            self._bits = _memmap(self.folder / f"bits.{self.key['bits_dtype']}", np.dtype(self.key["bits_dtype"]))
        return self._words, self._bits

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker reopens the maps itself
        return {**self.__dict__, "_words": None, "_bits": None}

    def image(self, i: int) -> DecodedImage:
        ix = self._index
        words, bits = self._arrays()
        sh, sw, w = int(ix["sh"][i]), int(ix["sw"][i]), int(ix["words"][i])
        p0, p1 = int(ix["pixel_offset"][i]), int(ix["pixel_offset"][i + 1])
        w0 = int(ix["word_offset"][i])
        s0, s1 = int(ix["scalar_offset"][i]), int(ix["scalar_offset"][i + 1])
        h0, h1 = int(ix["hist_offset"][i]), int(ix["hist_offset"][i + 1])
        return DecodedImage(
            size=(sh, sw),
            words=np.asarray(words[w0 : w0 + (p1 - p0) * w]).reshape(p1 - p0, w),
            bits=np.asarray(bits[p0:p1]),
            scalar=ix["scalar"][s0:s1],
            hist_labels=ix["hist_labels"][h0:h1],
            hist_counts=ix["hist_counts"][h0:h1],
        )


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def cache_key(dataset) -> dict[str, Any]:
    """What a label cache is made from (see the module docstring)."""
    return {
        "format": FORMAT,
        "fingerprint": dataset.fingerprint(),
        "categories": list(dataset.categories),
        "num_labels": int(dataset.num_labels),
    }


def label_cache(dataset, folder: str | os.PathLike, progress: bool = True, num_workers: int = 0) -> DecodedLabels:
    """The decoded labels of ``dataset`` (a :class:`~kdlib.data.broden.BrodenDataset`, or any dataset with
    ``fingerprint()``, ``categories``, ``num_labels``, ``primary_category`` whose items hold ``pixel``
    and ``scalar``) from the cache in ``folder``, built first when absent or made from other data."""
    key = cache_key(dataset)
    key["bits_dtype"] = bits_dtype(len(key["categories"])).str.lstrip("<>|=")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(folder) / f"labels-{digest}"
    found = _open_if_current(target, key)
    if found is not None:
        return found
    try:
        with atomic_dir(target, replace=True) as tmp:
            _build(dataset, tmp, key, progress, num_workers)
    except OSError:
        found = _open_if_current(target, key)  # another process finished the same folder first
        if found is None:
            raise
        return found
    return DecodedLabels(target)


def _open_if_current(target: Path, key: dict[str, Any]) -> DecodedLabels | None:
    try:
        labels = DecodedLabels(target)
    except (OSError, ValueError, KeyError):
        return None
    return labels if labels.key == key else None


class _Decode(torch.utils.data.Dataset):
    """Decodes one image's labels (in a DataLoader worker when there are some)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.primary = np.asarray(dataset.primary_category, dtype=np.int64)
        self.categories = len(dataset.categories)
        self.rows = getattr(dataset, "rows", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> DecodedImage:
        if self.rows is not None and hasattr(self.dataset, "load_segmentation"):
            row = self.rows[i]
            pixel = [layer.numpy() for cat in row.pixel for layer in self.dataset.load_segmentation(i, cat)]
            scalar = [n for nums in row.scalar.values() for n in nums]
            return decode_image(pixel, scalar, (row.sh, row.sw), self.primary, self.categories)
        item = self.dataset[i]
        pixel = [layer.numpy() for layers in item["pixel"].values() for layer in layers]
        scalar = [int(n) for nums in item["scalar"].values() for n in nums]
        size = tuple(pixel[0].shape) if pixel else tuple(item["image"].shape[-2:])
        if self.rows is not None:
            size = (self.rows[i].sh, self.rows[i].sw)
        return decode_image(pixel, scalar, size, self.primary, self.categories)


def _decoded(dataset, progress: bool, num_workers: int) -> Iterator[DecodedImage]:
    loader = torch.utils.data.DataLoader(_Decode(dataset), batch_size=16, num_workers=num_workers,
                                         collate_fn=list)
    for batch in tqdm(loader, desc="decoding probe labels (once per probe set)", disable=not progress, leave=False):
        yield from batch


def _build(dataset, folder: Path, key: dict[str, Any], progress: bool, num_workers: int) -> None:
    """Decode every image into ``folder``, streaming: memory holds one batch of images at a time."""
    index: dict[str, list] = {name: [] for name in ("sh", "sw", "words", "scalar", "hist_labels", "hist_counts")}
    pixel_offset, word_offset, scalar_offset, hist_offset = [0], [], [0], [0]
    words_at = 0
    with open(folder / "words.i64", "wb") as words, open(folder / f"bits.{key['bits_dtype']}", "wb") as bits:
        for image in _decoded(dataset, progress, num_workers):
            index["sh"].append(image.size[0])
            index["sw"].append(image.size[1])
            index["words"].append(image.words.shape[1])
            word_offset.append(words_at)
            words_at += image.words.size
            words.write(np.ascontiguousarray(image.words, dtype="<i8").tobytes())
            bits.write(np.ascontiguousarray(image.bits).tobytes())
            pixel_offset.append(pixel_offset[-1] + image.bits.size)
            index["scalar"].append(image.scalar)
            scalar_offset.append(scalar_offset[-1] + image.scalar.size)
            index["hist_labels"].append(image.hist_labels)
            index["hist_counts"].append(image.hist_counts)
            hist_offset.append(hist_offset[-1] + image.hist_labels.size)
    np.savez(
        folder / "index.npz",
        sh=np.asarray(index["sh"], np.int64), sw=np.asarray(index["sw"], np.int64),
        words=np.asarray(index["words"], np.int64), pixel_offset=np.asarray(pixel_offset, np.int64),
        word_offset=np.asarray(word_offset, np.int64),
        scalar=_concat(index["scalar"]), scalar_offset=np.asarray(scalar_offset, np.int64),
        hist_labels=_concat(index["hist_labels"]), hist_counts=_concat(index["hist_counts"]),
        hist_offset=np.asarray(hist_offset, np.int64),
    )  # fmt: skip
    (folder / "key.json").write_text(json.dumps(key, sort_keys=True) + "\n", encoding="utf-8")


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
