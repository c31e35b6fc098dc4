"""The live unit browser: an ipywidgets 8 UI over a dissection result (see :mod:`kdlib.viz.unit_browser`).

Imported only when a widget is asked for, so that ``kdlib.viz`` works without ipywidgets installed.
Which units the slider offers and every text come from the pure functions of
:mod:`kdlib.viz.unit_browser`; this module only wires widgets to them.
"""

from __future__ import annotations

import contextlib

import ipywidgets as widgets

from kdlib.dissect.result import LayerResult
from kdlib.viz.unit_browser import (
    ALL,
    BROWSER_CLASS,
    categories_of,
    check_shown,
    empty_caption,
    passing_units,
    pick_layer,
    unit_caption,
    unit_png,
)


class UnitBrowser(widgets.VBox):
    """Filters (layer, category, detectors only) above a slider over the units they keep, the unit's
    caption (HTML, class ``kdlib-unit-label``) and its top images with the mask (PNG).

    ``slider`` is a :class:`ipywidgets.SelectionSlider` whose values are 0-based units and whose labels
    are 1-based (as in the tally); a change of filter keeps the shown unit when it still passes and
    otherwise moves to the first one that does. When none passes, the slider and image are hidden and
    the caption says so. :attr:`layer`, :attr:`unit` and :attr:`units` tell what is shown.
    """

    def __init__(self, layers: dict[str, LayerResult], dataset, layer: str | None = None, unit: int | None = None,
                 category: str | None = None, detectors_only: bool = False, n: int | None = None, size: int = 96,
                 iou_threshold: float | None = None):
        self._layers, self._dataset = layers, dataset
        self._n, self._size, self._threshold = n, size, iou_threshold
        self._updating = False
        self.units: list[int] = []
        self.layer_menu = widgets.Dropdown(options=list(layers), value=pick_layer(layers, layer), description="layer")
        self.category_menu = widgets.Dropdown(options=[ALL, *categories_of(layers)], value=ALL, description="category")
        self.detectors_box = widgets.Checkbox(value=bool(detectors_only), description="detectors only", indent=False)
        self.slider = widgets.SelectionSlider(options=[("1", 0)], description="unit", continuous_update=True)
        self.caption = widgets.HTML()
        self.image = widgets.Image(format="png")
        filters = widgets.HBox([self.layer_menu, self.category_menu, self.detectors_box])
        super().__init__([filters, self.slider, self.caption, self.image])
        self.add_class(BROWSER_CLASS)
        if category is not None:
            passing_units(layers[self.layer_menu.value], category)  # one-line error for an unknown category
            self.category_menu.value = category
        self._refilter(keep=unit, strict=unit is not None)
        for control in (self.layer_menu, self.category_menu, self.detectors_box):
            control.observe(self._on_filter, names="value")
        self.slider.observe(self._on_unit, names="value")

    # -- what is shown ------------------------------------------------------------------------------

    @property
    def layer(self) -> str:
        return self.layer_menu.value

    @property
    def unit(self) -> int | None:
        """The 0-based unit shown, None when no unit passes the filters."""
        return self.slider.value if self.units else None

    def show(self, unit: int, layer: str | None = None) -> None:
        """Show ``unit`` (0-based) of ``layer`` (default: the current one); it must pass the filters."""
        name = pick_layer(self._layers, self.layer if layer is None else layer)
        check_shown(self._layers[name], unit, passing_units(self._layers[name], *self._filters()))
        with self._quiet():
            self.layer_menu.value = name
        self._refilter(keep=unit)

    # -- wiring -------------------------------------------------------------------------------------

    def _filters(self) -> tuple[str, bool, float | None]:
        return self.category_menu.value, self.detectors_box.value, self._threshold

    @contextlib.contextmanager
    def _quiet(self):
        """Change widgets without their observers re-rendering (the caller renders once)."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    def _refilter(self, keep: int | None = None, strict: bool = False) -> None:
        layer = self._layers[self.layer]
        self.units = passing_units(layer, *self._filters())
        if strict:
            check_shown(layer, keep, self.units)
        if not self.units:
            self._show_empty()
            return
        target = keep if keep in self.units else self.units[0]
        with self._quiet():
            self.slider.options = [(str(u + 1), u) for u in self.units]
            self.slider.value = target
        self.slider.disabled = False
        self.slider.layout.visibility = "visible"
        self._render(target)

    def _show_empty(self) -> None:
        self.caption.value = empty_caption(self.layer, self.category_menu.value, self.detectors_box.value)
        self.image.value = b""
        self.image.layout.display = "none"
        self.slider.disabled = True
        self.slider.layout.visibility = "hidden"

    def _render(self, unit: int) -> None:
        layer = self._layers[self.layer]
        self.caption.value = unit_caption(layer, unit, self._threshold)
        self.image.value = unit_png(layer, unit, self._dataset, n=self._n, size=self._size)
        self.image.layout.display = None

    def _on_filter(self, change) -> None:
        if not self._updating:
            self._refilter(keep=self.slider.value)

    def _on_unit(self, change) -> None:
        if not self._updating and change.new is not None and self.units:
            self._render(change.new)
