"""Pictures of a dissection: unit strips, one unit's masks, detectors per category.

Everything here reads a :class:`~kdlib.dissect.result.LayerResult` (and the probe set's images) and
renders it; nothing is recomputed. A unit's masks come from the maps the dissection kept for its top
images (``top_maps``): each map goes through the dissection's own mask rule
(:func:`kdlib.dissect.tally.unit_mask`: bilinear upsampling to the displayed size, ``map > threshold``),
the way NetDissect draws its strips.
Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so they work headless.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from kdlib.atomic import atomic_path
from kdlib.dissect.result import DissectResult, LayerResult
from kdlib.dissect.tally import unit_mask
from kdlib.errors import KdlibError

OUTLINE = (255, 230, 0)


def _check_unit(layer: LayerResult, unit: int) -> int:
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < layer.units:
        raise KdlibError(f"unit = {unit!r} is not in layer {layer.layer!r}; valid: 0..{layer.units - 1} (0-based)")
    if layer.top_maps.numel() == 0:
        raise KdlibError(f"layer {layer.layer!r} kept no example maps; valid: a result of dissect(..., examples >= 1)")
    return int(unit)


def unit_label(layer: LayerResult, unit: int) -> str:
    """``"unit 12: red (color), IoU 0.123"`` from the tally (unit 0-based here, 1-based in the text)."""
    unit = _check_unit(layer, unit)
    row = layer.tally.set_index("unit").loc[unit + 1]
    return f"{layer.layer} unit {unit + 1}: {row['label']} ({row['category']}), IoU {row['score']:.3f}"


def _mask_at(layer: LayerResult, unit: int, j: int, size: tuple[int, int]) -> np.ndarray:
    return unit_mask(layer.top_maps[unit, j].float(), layer.thresholds[unit], size).numpy()


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels that touch a pixel outside the mask (4-neighbourhood, image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def unit_masks(layer: LayerResult, unit: int, dataset, n: int | None = None, size: int = 96, gap: int = 4) -> Image.Image:
    """One unit's top-activating probe images side by side, each shown at ``size`` px with the unit's
    mask outlined and the rest dimmed: the picture the notebook's unit browser shows (a PIL image)."""
    unit = _check_unit(layer, unit)
    count = layer.top_images.shape[1] if n is None else min(n, layer.top_images.shape[1])
    tiles = []
    for j in range(count):
        index = int(layer.top_images[unit, j])
        image = dataset.load_image(index).resize((size, size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        mask = _mask_at(layer, unit, j, (size, size))
        pixels = np.where(mask[..., None], pixels, pixels * 0.35)
        pixels[_outline(mask)] = OUTLINE
        tiles.append(pixels.astype(np.uint8))
    if not tiles:
        raise KdlibError(f"layer {layer.layer!r} kept no example images; valid: n >= 1")
    strip = np.full((size, count * size + (count - 1) * gap, 3), 255, dtype=np.uint8)
    for j, tile in enumerate(tiles):
        strip[:, j * (size + gap) : j * (size + gap) + size] = tile
    return Image.fromarray(strip)


TITLE_HEIGHT = 18


def titled_unit_masks(layer: LayerResult, unit: int, dataset, n: int | None = None, size: int = 96) -> Image.Image:
    """:func:`unit_masks` under a one-line title (:func:`unit_label`): NetDissect's per-unit image file."""
    image = unit_masks(layer, unit, dataset, n=n, size=size)
    full = Image.new("RGB", (image.width, image.height + TITLE_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(full).text((2, 3), unit_label(layer, unit), fill=(0, 0, 0))
    full.paste(image, (0, TITLE_HEIGHT))
    return full


def unit_strip(layer: LayerResult, unit: int, dataset, n: int | None = None, size: int = 96) -> Figure:
    """NetDissect's per-unit strip as a figure: :func:`unit_masks` with the unit's concept and IoU as title."""
    image = unit_masks(layer, unit, dataset, n=n, size=size)
    width, height = image.size
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi + 0.35), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + 35)))
    ax.imshow(image)
    ax.set_axis_off()
    fig.suptitle(unit_label(layer, unit), fontsize=9, y=0.98)
    return fig


def save_unit_strips(
    result: DissectResult | LayerResult,
    dataset,
    folder: str | os.PathLike,
    units: Iterable[int] | None = None,
    n: int | None = None,
    size: int = 96,
    progress: bool = False,
) -> list[Path]:
    """Write ``<layer>-<unit:04d>.jpg`` (unit 1-based, as in the tally) per unit (default: every unit)."""
    layers = [result] if isinstance(result, LayerResult) else list(result.values())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in layers:
        todo = range(layer.units) if units is None else list(units)
        for unit in tqdm(todo, desc=f"strips {layer.layer}", disable=not progress, leave=False):
            full = titled_unit_masks(layer, unit, dataset, n=n, size=size)
            path = folder / f"{layer.layer}-{unit + 1:04d}.jpg"
            with atomic_path(path) as tmp:
                full.save(tmp, format="JPEG", quality=90)
            written.append(path)
    return written


def _as_named(results) -> dict[str, LayerResult]:
    if isinstance(results, LayerResult):
        return {results.layer: results}
    if isinstance(results, DissectResult):
        return dict(results.layers)
    if isinstance(results, Mapping) and all(isinstance(r, LayerResult) for r in results.values()):
        return dict(results)
    raise KdlibError(
        f"results = {type(results).__name__} is not valid; valid: a LayerResult, a DissectResult or a mapping name -> LayerResult"
    )


def detector_table(results, iou_threshold: float | None = None) -> pd.DataFrame:
    """Long table for plots: one row per (result name, category) with ``detectors`` and ``share``."""
    frames = []
    for name, layer in _as_named(results).items():
        counts = layer.detector_counts(iou_threshold)
        frames.append(
            pd.DataFrame(
                {"name": name, "category": counts.index, "detectors": counts.to_numpy(), "share": counts.to_numpy() / layer.units}
            )
        )
    return pd.concat(frames, ignore_index=True)


def detector_bar_chart(results, iou_threshold: float | None = None, share: bool = False, ax=None) -> Figure:
    """Seaborn bar chart of detectors per category; several results (a mapping name -> LayerResult, or a
    DissectResult's layers) are drawn side by side. ``share=True`` plots the share of units instead."""
    import seaborn as sns

    table = detector_table(results, iou_threshold)
    if ax is None:
        fig = Figure(figsize=(1.2 + 0.9 * table["category"].nunique(), 3.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    value = "share" if share else "detectors"
    hue = "name" if table["name"].nunique() > 1 else None
    sns.barplot(data=table, x="category", y=value, hue=hue, ax=ax)
    first = next(iter(_as_named(results).values()))
    thr = first.iou_threshold if iou_threshold is None else iou_threshold
    ax.set_ylabel("share of units" if share else "detectors")
    ax.set_xlabel("")
    if not share:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if hue is not None:
        ax.legend(title=None, fontsize=8)
    ax.set_title(f"detectors per category (IoU > {thr:g})", fontsize=10)
    fig.tight_layout()
    return fig


def best_iou_chart(results, ax=None) -> Figure:
    """Graded measure beside the count: each unit's best IoU per category, as box plots."""
    import seaborn as sns

    frames = []
    for name, layer in _as_named(results).items():
        best = layer.best_iou().melt(var_name="category", value_name="best IoU")
        best["name"] = name
        frames.append(best)
    table = pd.concat(frames, ignore_index=True)
    if ax is None:
        fig = Figure(figsize=(1.2 + 0.9 * table["category"].nunique(), 3.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated boxplot argument
        warnings.simplefilter("ignore", DeprecationWarning)
        hue = "name" if table["name"].nunique() > 1 else None
        sns.boxplot(data=table, x="category", y="best IoU", hue=hue, ax=ax, fliersize=2)
    ax.set_xlabel("")
    ax.set_title("best IoU per unit and category", fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_image(fig: Figure) -> Image.Image:
    """Render a figure to a PIL image (for widgets that show images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
