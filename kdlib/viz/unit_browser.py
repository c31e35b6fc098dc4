"""The unit browser: what each unit of a dissected layer detects, one unit at a time.

::

    from kdlib.viz import unit_browser
    unit_browser(result, probe)        # result: a DissectResult (or name -> LayerResult), probe: BrodenDataset

In JupyterLab (a live kernel driven by a frontend that renders widgets) this returns an ipywidgets 8 UI
(:class:`kdlib.viz.unit_widget.UnitBrowser`): a slider over units, a layer dropdown, a category filter
and a "detectors only" toggle; it shows the unit's top probe images with the thresholded mask outlined
(:func:`kdlib.viz.dissect.unit_masks`) and its best concept, category and IoU
(:func:`kdlib.viz.dissect.unit_label`) in an HTML element of class ``kdlib-unit-label``. Nothing is
computed here that the dissection result does not already hold.

Where no such frontend is live (papermill, ``nbconvert --execute``, nbval, a plain script) it returns
:func:`static_strip` instead: a PNG of the first units that pass the filters and a table of their
concepts, which survives in the saved notebook. See :func:`widgets_live` for how that is decided.

Units are 0-based in the API (as in :func:`kdlib.viz.dissect.unit_masks`) and 1-based in every text
(as in the tally), so ``unit=0`` is shown as "unit 1".
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from kdlib.dissect.result import LayerResult
from kdlib.errors import KdlibError
from kdlib.viz.dissect import _as_named, _check_unit, titled_unit_masks, unit_label, unit_masks

ALL = "all"
LABEL_CLASS = "kdlib-unit-label"
EMPTY_CLASS = "kdlib-unit-empty"
BROWSER_CLASS = "kdlib-unit-browser"
MODE_VARIABLE = "KDLIB_WIDGETS"
_MODES = ("live", "static")


# -- inputs ---------------------------------------------------------------------------------------


def browsable_layers(result) -> dict[str, LayerResult]:
    """The result's layers by name; refuses an empty result and layers without example maps."""
    layers = _as_named(result)
    if not layers:
        raise KdlibError("the dissection result holds no layer; valid: a result of dissect(...) with at least one layer")
    for name, layer in layers.items():
        if layer.top_maps.numel() == 0 or layer.top_images.numel() == 0:
            raise KdlibError(f"layer {name!r} kept no example images; valid: a result of dissect(..., examples >= 1)")
    return layers


def pick_layer(layers: dict[str, LayerResult], name: str | None) -> str:
    """``name`` if the result has it (None: the first layer)."""
    if name is None:
        return next(iter(layers))
    if name not in layers:
        raise KdlibError(f"layer = {name!r} is not in the dissection result; valid: {', '.join(layers)}")
    return name


def categories_of(layers: dict[str, LayerResult]) -> list[str]:
    """Every category of the layers, in the result's order."""
    return list(dict.fromkeys(c for layer in layers.values() for c in layer.categories))


# -- which units pass the filters, and their text -------------------------------------------------


def passing_units(
    layer: LayerResult, category: str | None = None, detectors_only: bool = False, iou_threshold: float | None = None
) -> list[int]:
    """The 0-based units the filters keep, in unit order.

    ``category`` (None or ``"all"``: any) keeps the units whose best concept (the tally's ``category``) is
    in that category; a unit whose IoU is 0 everywhere has no concept and belongs to no category.
    ``detectors_only`` keeps the units whose best IoU is above ``iou_threshold`` (default: the one the
    dissection was run with), i.e. the rows of :meth:`LayerResult.detectors`.
    """
    tally = layer.tally
    keep = np.ones(len(tally), dtype=bool)
    if category not in (None, ALL):
        if category not in layer.categories:
            raise KdlibError(f"category = {category!r} is not in layer {layer.layer!r}; valid: {ALL}, {', '.join(layer.categories)}")
        keep &= (tally["category"] == category).to_numpy() & (tally["score"] > 0).to_numpy()
    if detectors_only:
        keep &= tally["unit"].isin(layer.detectors(iou_threshold)["unit"]).to_numpy()
    return sorted(int(u) - 1 for u in tally.loc[keep, "unit"])


def check_shown(layer: LayerResult, unit: int, units: Sequence[int]) -> int:
    """``unit`` if it is in the layer and among ``units`` (those the filters keep)."""
    unit = _check_unit(layer, unit)
    if unit not in units:
        shown = ", ".join(map(str, units[:12])) + (", ..." if len(units) > 12 else "")
        raise KdlibError(f"unit = {unit} of layer {layer.layer!r} is excluded by the filters; valid (0-based): {shown or 'none'}")
    return unit


def _is_detector(layer: LayerResult, unit: int, iou_threshold: float | None) -> bool:
    return bool((layer.detectors(iou_threshold)["unit"] == unit + 1).any())


def unit_caption(layer: LayerResult, unit: int, iou_threshold: float | None = None) -> str:
    """The HTML shown under the slider: :func:`unit_label` and whether the unit is a detector, in a
    ``<div class="kdlib-unit-label" data-layer=... data-unit=...>`` (unit 1-based) for browser tests."""
    text = unit_label(layer, unit)
    threshold = layer.iou_threshold if iou_threshold is None else iou_threshold
    status = "detector" if _is_detector(layer, unit, iou_threshold) else f"not a detector (IoU <= {threshold:g})"
    return (
        f'<div class="{LABEL_CLASS}" data-layer="{html.escape(layer.layer)}" data-unit="{unit + 1}">'
        f"{html.escape(text)}; {status}</div>"
    )


def empty_text(layer: str, category: str | None, detectors_only: bool) -> str:
    """What the browser says when no unit passes the filters."""
    filters = [f"category {category}" if category not in (None, ALL) else "any category"]
    if detectors_only:
        filters.append("detectors only")
    return f"no unit of {layer} passes the filters ({', '.join(filters)}); choose another category or layer, or untick detectors only"


def empty_caption(layer: str, category: str | None, detectors_only: bool) -> str:
    return f'<div class="{LABEL_CLASS} {EMPTY_CLASS}">{html.escape(empty_text(layer, category, detectors_only))}</div>'


def unit_png(layer: LayerResult, unit: int, dataset, n: int | None = None, size: int = 96) -> bytes:
    """:func:`unit_masks` as PNG bytes (what the browser's image shows)."""
    buffer = io.BytesIO()
    unit_masks(layer, unit, dataset, n=n, size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def unit_table(layer: LayerResult, units: Sequence[int], iou_threshold: float | None = None) -> pd.DataFrame:
    """One row per unit (1-based), from the tally: concept, category, IoU (3 decimals) and detector."""
    tally = layer.tally.set_index("unit")
    detectors = set(layer.detectors(iou_threshold)["unit"])
    rows = [
        {
            "layer": layer.layer,
            "unit": u + 1,
            "concept": tally.at[u + 1, "label"],
            "category": tally.at[u + 1, "category"],
            "IoU": round(float(tally.at[u + 1, "score"]), 3),
            "detector": u + 1 in detectors,
        }
        for u in units
    ]
    return pd.DataFrame(rows, columns=["layer", "unit", "concept", "category", "IoU", "detector"])


# -- is a widget frontend live? -------------------------------------------------------------------


def _kernel():
    """The running ipykernel, or None (no IPython, or IPython without a kernel, e.g. a terminal)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def _request_allows_stdin(kernel) -> bool:
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is not None:  # ipykernel >= 6: the execute_request being run
        return bool(get_parent("shell").get("content", {}).get("allow_stdin", False))
    return bool(getattr(kernel, "_allow_stdin", False))


def widgets_live() -> bool:
    """Whether a frontend that renders widgets is driving this kernel right now.

    ``KDLIB_WIDGETS=live`` or ``static`` decides outright. Otherwise: no ipykernel (a script, a terminal
    IPython) -> False. In a kernel, the execute request of the running cell says whether its client
    takes ``input()`` (``allow_stdin``): JupyterLab, Notebook 7 and VS Code send True; the headless
    executors send False (nbclient sets ``allow_stdin = False`` for papermill and ``nbconvert --execute``,
    nbval asks with ``allow_stdin=False``), and they render no widget. This is a signal the protocol
    carries with each request, not a guess from environment variables or process names.
    """
    forced = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if forced:
        if forced not in _MODES:
            raise KdlibError(f"{MODE_VARIABLE} = {forced!r} is not valid; valid: live, static or unset (detect)")
        return forced == "live"
    kernel = _kernel()
    return kernel is not None and _request_allows_stdin(kernel)


# -- the static strip -----------------------------------------------------------------------------


@dataclass
class StaticStrip:
    """What the unit browser degrades to: ``png`` (the units' titled strips stacked; None when no unit
    passes the filters) and ``table`` (:func:`unit_table`). Displays as two outputs, a PNG and the table,
    so that a saved notebook keeps both and nbval compares the table's numbers."""

    title: str
    png: bytes | None
    table: pd.DataFrame

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.png is not None:
            data = {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": self.title}
            display(data, raw=True)
        else:
            display({"text/plain": self.title}, raw=True)
        if len(self.table):
            display(self.table)

    def __repr__(self) -> str:
        return self.title if not len(self.table) else f"{self.title}\n{self.table.to_string(index=False)}"


def _stack(images: list[Image.Image]) -> bytes:
    canvas = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), (255, 255, 255))
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def static_strip(
    result,
    dataset,
    layer: str | None = None,
    unit: int | None = None,
    category: str | None = None,
    detectors_only: bool = False,
    max_units: int = 4,
    n: int | None = None,
    size: int = 64,
    iou_threshold: float | None = None,
) -> StaticStrip:
    """The first ``max_units`` units of ``layer`` that pass the filters (see :func:`passing_units`),
    from ``unit`` on (0-based) when given: each unit's top images with its mask
    (:func:`titled_unit_masks`, ``size`` px per image), stacked into one PNG, and their table
    (:func:`unit_table`). Callable on its own, e.g. for a report."""
    if isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 1:
        raise KdlibError(f"max_units = {max_units!r} is not valid; valid: an integer >= 1")
    layers = browsable_layers(result)
    chosen = layers[pick_layer(layers, layer)]
    units = passing_units(chosen, category, detectors_only, iou_threshold)
    start = 0 if unit is None else units.index(check_shown(chosen, unit, units))
    if not units:
        return StaticStrip(empty_text(chosen.layer, category, detectors_only), None, unit_table(chosen, []))
    shown = units[start : start + max_units]
    png = _stack([titled_unit_masks(chosen, u, dataset, n=n, size=size) for u in shown])
    title = f"{chosen.layer}: units {', '.join(str(u + 1) for u in shown)} of the {len(units)} that pass the filters"
    return StaticStrip(title, png, unit_table(chosen, shown, iou_threshold))


# -- the entry point ------------------------------------------------------------------------------


def unit_browser(
    result,
    dataset,
    layer: str | None = None,
    unit: int | None = None,
    category: str | None = None,
    detectors_only: bool = False,
    n: int | None = None,
    size: int = 96,
    iou_threshold: float | None = None,
    live: bool | None = None,
):
    """Browse the units of a dissection ``result`` over its probe set ``dataset``.

    ``layer`` (default: the first), ``unit`` (0-based, default: the first that passes the filters),
    ``category`` and ``detectors_only`` set the starting view; ``n`` images per unit at ``size`` px;
    ``iou_threshold`` decides detectors (default: the dissection's). ``live``: True returns the widget,
    False the :func:`static_strip`, None decides with :func:`widgets_live`.
    """
    options = dict(layer=layer, unit=unit, category=category, detectors_only=detectors_only, n=n, iou_threshold=iou_threshold)
    if not (widgets_live() if live is None else live):
        return static_strip(result, dataset, **options)
    from kdlib.viz.unit_widget import UnitBrowser

    return UnitBrowser(browsable_layers(result), dataset, size=size, **options)
