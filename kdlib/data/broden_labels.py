"""Decoded probe labels, cached once per probe set, in the layout the dissection tally reads.

Decoding a Broden probe set's segmentations (several PNGs per image) costs as much as the rest of a
small network's dissection, and it is the same for every network of a study. :func:`label_cache`
decodes them once into a folder and later calls read that folder back. Each
segmentation layer is stored as *vertical runs*, what the tally reads (it counts labels under vertical
segments of the masks, :mod:`kdlib.dissect.tally`):

* ``runs.i32``: per image, the runs of every layer, ``(first row, last row, label)``, ordered by layer,
  column, row (so the runs of one column of one layer are consecutive) (:func:`vertical_runs`);
* ``run_index.i32``: per image, per layer, per pixel (row-major), the number of the run it lies in;
* ``index.npz``: per image its segmentation size, layer count and offsets, its image-level labels, and
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
one call. Size on disk: 4 bytes per pixel and layer plus 12 per run (the default world's 2,400 probe
images of 32 px with 4 pixel layers: about 45 MB; Broden's 63k images of 112 px, about 3 layers each: about 10 GB).
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

FORMAT = 2


def vertical_runs(layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation layers [D, sh, sw] -> (runs int32 [R, 3]: first row, last row, label of each maximal
    vertical run of equal labels, ordered by layer, column, row; run index int32 [D, sh * sw]: the run
    of each pixel, row-major)."""
    layers = np.asarray(layers, dtype=np.int64)
    D, sh, sw = layers.shape
    if D == 0:
        return np.zeros((0, 3), np.int32), np.zeros((0, sh * sw), np.int32)
    if layers.min() < 0 or layers.max() >= 1 << 31:
        raise KdlibError(f"segmentation label {int(layers.max())} is out of range; valid: 0..65535 (R + 256 G)")
    cols = layers.transpose(0, 2, 1)  # [D, sw, sh]: down each column
    start = np.ones(cols.shape, dtype=bool)
    start[..., 1:] = cols[..., 1:] != cols[..., :-1]
    end = np.ones(cols.shape, dtype=bool)
    end[..., :-1] = start[..., 1:]
    rows = np.broadcast_to(np.arange(sh), cols.shape)
    runs = np.stack([rows[start], rows[end], cols[start]], axis=1).astype(np.int32)
    ids = (np.cumsum(start.reshape(-1)) - 1).reshape(cols.shape).transpose(0, 2, 1)
    return runs, np.ascontiguousarray(ids.reshape(D, sh * sw), dtype=np.int32)


@dataclass(frozen=True)
class DecodedImage:
    """One probe image's labels as the cache stores them (see the module docstring)."""

    size: tuple[int, int]
    runs: np.ndarray  # int32 [R, 3]: first row, last row, label
    run_index: np.ndarray  # int32 [D, S]
    scalar: np.ndarray  # int64 [m]
    hist_labels: np.ndarray  # int64 [n]
    hist_counts: np.ndarray  # int64 [n]

    @property
    def depth(self) -> int:
        return int(self.run_index.shape[0])


def decode_image(pixel: Sequence[np.ndarray], scalar: Sequence[int], size: tuple[int, int]) -> DecodedImage:
    """The cache record of one image from its segmentation layers (each [sh, sw]) and image-level labels."""
    sh, sw = size
    layers = np.stack([np.asarray(l, dtype=np.int64).reshape(sh, sw) for l in pixel]) if len(pixel) else np.zeros((0, sh, sw), np.int64)
    scalar = np.asarray([int(s) for s in scalar], dtype=np.int64)
    counts = np.bincount(layers.reshape(-1), minlength=1).astype(np.int64) if layers.size else np.zeros(1, np.int64)
    if scalar.size:
        extra = np.bincount(scalar, minlength=counts.size).astype(np.int64) * (sh * sw)
        counts = np.pad(counts, (0, extra.size - counts.size)) + extra
    counts[0] = 0
    labels = np.flatnonzero(counts)
    runs, run_index = vertical_runs(layers)
    return DecodedImage((sh, sw), runs, run_index, scalar, labels.astype(np.int64), counts[labels])


class DecodedLabels:
    """A label cache folder: ``image(i)`` gives image i's :class:`DecodedImage`, read from the files with
    ``pread`` (nothing is memory-mapped, so the process holds only the images it asked for)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = np.load(self.folder / "index.npz")
        self._index = {name: index[name] for name in index.files}
        self.key = json.loads((self.folder / "key.json").read_text(encoding="utf-8"))
        self._files: dict[str, int] = {}

    def __len__(self) -> int:
        return int(self._index["sh"].size)

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker opens the files itself
        return {**self.__dict__, "_files": {}}

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def _read(self, name: str, start: int, count: int) -> np.ndarray:
        """``count`` int32 values from element ``start`` of ``name``."""
        if name not in self._files:
            self._files[name] = os.open(self.folder / name, os.O_RDONLY)
        data = os.pread(self._files[name], 4 * count, 4 * start)
        return np.frombuffer(data, dtype="<i4", count=count)

    def image(self, i: int) -> DecodedImage:
        ix = self._index
        sh, sw, depth = int(ix["sh"][i]), int(ix["sw"][i]), int(ix["depth"][i])
        r0, r1 = int(ix["run_offset"][i]), int(ix["run_offset"][i + 1])
        p0 = int(ix["pixel_offset"][i])
        s0, s1 = int(ix["scalar_offset"][i]), int(ix["scalar_offset"][i + 1])
        h0, h1 = int(ix["hist_offset"][i]), int(ix["hist_offset"][i + 1])
        return DecodedImage(
            size=(sh, sw),
            runs=self._read("runs.i32", 3 * r0, 3 * (r1 - r0)).reshape(r1 - r0, 3),
            run_index=self._read("run_index.i32", p0, depth * sh * sw).reshape(depth, sh * sw),
            scalar=ix["scalar"][s0:s1],
            hist_labels=ix["hist_labels"][h0:h1],
            hist_counts=ix["hist_counts"][h0:h1],
        )


def cache_key(dataset, fingerprint: str | None = None) -> dict[str, Any]:
    """What a label cache is made from (see the module docstring); ``fingerprint``: the dataset's, when
    already computed."""
    return {
        "format": FORMAT,
        "fingerprint": dataset.fingerprint() if fingerprint is None else fingerprint,
        "categories": list(dataset.categories),
        "num_labels": int(dataset.num_labels),
    }


def label_cache(dataset, folder: str | os.PathLike, progress: bool = True, num_workers: int = 0,
                fingerprint: str | None = None) -> DecodedLabels:
    """The decoded labels of ``dataset`` (a :class:`~kdlib.data.broden.BrodenDataset`, or any dataset with
    ``fingerprint()``, ``categories``, ``num_labels``, ``primary_category`` whose items hold ``pixel``
    and ``scalar``) from the cache in ``folder``, built first when absent or made from other data."""
    key = cache_key(dataset, fingerprint)
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
        self.rows = getattr(dataset, "rows", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> DecodedImage:
        if self.rows is not None and hasattr(self.dataset, "load_segmentation"):
            row = self.rows[i]
            pixel = [layer.numpy() for cat in row.pixel for layer in self.dataset.load_segmentation(i, cat)]
            scalar = [n for nums in row.scalar.values() for n in nums]
            return decode_image(pixel, scalar, (row.sh, row.sw))
        item = self.dataset[i]
        pixel = [layer.numpy() for layers in item["pixel"].values() for layer in layers]
        scalar = [int(n) for nums in item["scalar"].values() for n in nums]
        size = tuple(pixel[0].shape) if pixel else tuple(item["image"].shape[-2:])
        if self.rows is not None:
            size = (self.rows[i].sh, self.rows[i].sw)
        return decode_image(pixel, scalar, size)


def _decoded(dataset, progress: bool, num_workers: int) -> Iterator[DecodedImage]:
    loader = torch.utils.data.DataLoader(_Decode(dataset), batch_size=16, num_workers=num_workers,
                                         collate_fn=list)
    for batch in tqdm(loader, desc="decoding probe labels (once per probe set)", disable=not progress, leave=False):
        yield from batch


def _build(dataset, folder: Path, key: dict[str, Any], progress: bool, num_workers: int) -> None:
    """Decode every image into ``folder``, streaming: memory holds one batch of images at a time."""
    index: dict[str, list] = {name: [] for name in ("sh", "sw", "depth", "scalar", "hist_labels", "hist_counts")}
    offsets: dict[str, list[int]] = {name: [0] for name in ("run_offset", "pixel_offset", "scalar_offset", "hist_offset")}
    with open(folder / "runs.i32", "wb") as runs, open(folder / "run_index.i32", "wb") as run_index:
        for image in _decoded(dataset, progress, num_workers):
            for name, value in (("sh", image.size[0]), ("sw", image.size[1]), ("depth", image.depth),
                                ("scalar", image.scalar), ("hist_labels", image.hist_labels), ("hist_counts", image.hist_counts)):
                index[name].append(value)
            runs.write(np.ascontiguousarray(image.runs, dtype="<i4").tobytes())
            run_index.write(np.ascontiguousarray(image.run_index, dtype="<i4").tobytes())
            for name, size in (("run_offset", len(image.runs)), ("pixel_offset", image.run_index.size),
                               ("scalar_offset", image.scalar.size), ("hist_offset", image.hist_labels.size)):
                offsets[name].append(offsets[name][-1] + size)
    np.savez(
        folder / "index.npz",
        **{name: np.asarray(index[name], np.int64) for name in ("sh", "sw", "depth")},
        **{name: np.asarray(values, np.int64) for name, values in offsets.items()},
        **{name: _concat(index[name]) for name in ("scalar", "hist_labels", "hist_counts")},
    )
    (folder / "key.json").write_text(json.dumps(key, sort_keys=True) + "\n", encoding="utf-8")


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
