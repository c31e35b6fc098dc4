"""The unit browser (kdlib.viz.unit_browser): its pure logic, the widget moved programmatically, the
static strip, and how it decides between them. The real-browser test is tests/test_browser.py."""

from __future__ import annotations

import importlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from kdlib.data.broden import BrodenDataset
from kdlib.dissect import DissectResult, LayerResult, dissect
from kdlib.errors import KdlibError
from kdlib.models import build
from kdlib.viz import static_strip, unit_browser, unit_masks, widgets_live
from kdlib.viz.dissect import TITLE_HEIGHT
from kdlib.viz.unit_browser import (
    LABEL_CLASS,
    StaticStrip,
    empty_text,
    passing_units,
    unit_caption,
    unit_table,
)

ub = importlib.import_module("kdlib.viz.unit_browser")  # the module (kdlib.viz.unit_browser is the function)
widgets = pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def dissected(tiny_world):
    """A random-weight resnet8 dissected on the tiny world's probe set: two layers, 3 examples per unit."""
    probe = BrodenDataset(tiny_world / "broden")
    torch.manual_seed(0)
    result = dissect(build("resnet8", 6), probe, layers=["layer2", "layer3"], quantile=0.01, examples=3, progress=False)
    return result, probe


def _decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _tally_rows(layer: LayerResult) -> dict[int, dict]:
    return {int(r["unit"]) - 1: r for r in layer.tally.to_dict("records")}


# -- pure logic -------------------------------------------------------------------------------------


def test_passing_units_follow_the_tally(dissected):
    result, _ = dissected
    layer = result["layer2"]
    rows = _tally_rows(layer)
    assert passing_units(layer) == list(range(layer.units))
    for category in layer.categories:
        expected = sorted(u for u, r in rows.items() if r["category"] == category and r["score"] > 0)
        assert passing_units(layer, category) == expected
    detectors = sorted(u for u, r in rows.items() if r["score"] > layer.iou_threshold)
    assert 0 < len(detectors) < layer.units  # the filter really filters on this result
    assert passing_units(layer, detectors_only=True) == detectors
    assert passing_units(layer, detectors_only=True, iou_threshold=0.99) == []
    both = passing_units(layer, "object", detectors_only=True)
    assert both == sorted(set(detectors) & set(passing_units(layer, "object")))


def test_a_unit_without_concept_is_in_no_category(dissected):
    result, _ = dissected
    state = result["layer2"].state()
    state["intersection"] = state["intersection"].clone()
    state["intersection"][3] = 0  # unit 3 overlaps no label: IoU 0 everywhere
    layer = LayerResult.from_state(state)
    row = _tally_rows(layer)[3]
    assert (row["score"], row["label"], row["category"]) == (0, "-", layer.categories[0])  # the tally's placeholder
    assert all(3 not in passing_units(layer, c) for c in layer.categories)
    assert 3 in passing_units(layer) and 3 not in passing_units(layer, detectors_only=True)


def test_caption_names_unit_concept_category_and_iou(dissected):
    result, _ = dissected
    layer = result["layer3"]
    rows = _tally_rows(layer)
    for unit in (0, 7, layer.units - 1):
        row = rows[unit]
        caption = unit_caption(layer, unit)
        assert caption.startswith(f'<div class="{LABEL_CLASS}" data-layer="layer3" data-unit="{unit + 1}">')
        assert f"layer3 unit {unit + 1}: {row['label']} ({row['category']}), IoU {row['score']:.3f}" in caption
        assert ("; detector<" in caption) == (row["score"] > layer.iou_threshold)


def test_unit_table_and_empty_text(dissected):
    result, _ = dissected
    layer = result["layer2"]
    rows = _tally_rows(layer)
    table = unit_table(layer, [4, 1])
    assert table["unit"].tolist() == [5, 2]
    assert table["concept"].tolist() == [rows[4]["label"], rows[1]["label"]]
    assert table["IoU"].tolist() == [round(rows[4]["score"], 3), round(rows[1]["score"], 3)]
    assert table["detector"].tolist() == [rows[4]["score"] > 0.04, rows[1]["score"] > 0.04]
    assert empty_text("layer2", "part", True) == (
        "no unit of layer2 passes the filters (category part, detectors only); "
        "choose another category or layer, or untick detectors only"
    )


# -- the widget, moved programmatically -------------------------------------------------------------


def test_slider_moves_unit_concept_and_image(dissected):
    result, probe = dissected
    browser = unit_browser(result, probe, live=True)
    assert isinstance(browser, widgets.VBox)
    assert (browser.layer, browser.unit) == ("layer2", 0)
    rows = _tally_rows(result["layer2"])
    seen = set()
    for unit in (0, 5, 17):
        browser.slider.value = unit
        assert browser.unit == unit
        assert browser.slider.label == str(unit + 1)
        assert f'data-unit="{unit + 1}"' in browser.caption.value
        assert f": {rows[unit]['label']} ({rows[unit]['category']}), IoU {rows[unit]['score']:.3f}" in browser.caption.value
        assert np.array_equal(_decoded(browser.image.value), np.asarray(unit_masks(result["layer2"], unit, probe)))
        seen.add(browser.image.value)
    assert len(seen) == 3  # three units, three different pictures


def test_filters_set_the_slider_options(dissected):
    result, probe = dissected
    browser = unit_browser(result, probe, live=True)
    layer2 = result["layer2"]
    browser.category_menu.value = "object"
    objects = passing_units(layer2, "object")
    assert list(browser.slider.options) == [(str(u + 1), u) for u in objects]
    for unit in objects:  # every unit the slider offers is one the filter keeps
        browser.slider.value = unit
        assert "(object), IoU" in browser.caption.value
    browser.detectors_box.value = True
    assert browser.units == passing_units(layer2, "object", detectors_only=True)
    browser.layer_menu.value = "layer3"
    assert browser.units == passing_units(result["layer3"], "object", detectors_only=True)
    assert 'data-layer="layer3"' in browser.caption.value
    browser.category_menu.value = "all"
    browser.detectors_box.value = False
    assert browser.units == list(range(64)) and len(browser.slider.options) == 64


def test_a_filter_change_keeps_the_unit_when_it_still_passes(dissected):
    result, probe = dissected
    layer = result["layer2"]
    kept = passing_units(layer, detectors_only=True)[1]
    browser = unit_browser(result, probe, unit=kept, live=True)
    browser.detectors_box.value = True
    assert browser.unit == kept
    dropped = next(u for u in range(layer.units) if u not in passing_units(layer, detectors_only=True))
    browser.detectors_box.value = False
    browser.slider.value = dropped
    browser.detectors_box.value = True
    assert browser.unit == passing_units(layer, detectors_only=True)[0]


def test_an_empty_selection_says_so(dissected):
    result, probe = dissected
    browser = unit_browser(result, probe, iou_threshold=0.99, live=True)
    browser.detectors_box.value = True
    assert browser.units == [] and browser.unit is None
    assert empty_text("layer2", "all", True) in browser.caption.value
    assert browser.slider.disabled and browser.image.layout.display == "none"
    browser.detectors_box.value = False
    assert browser.unit == 0 and not browser.slider.disabled and browser.image.value


def test_show_selects_layer_and_unit(dissected):
    result, probe = dissected
    browser = unit_browser(result, probe, live=True)
    browser.show(9, layer="layer3")
    assert (browser.layer, browser.unit) == ("layer3", 9) and 'data-unit="10"' in browser.caption.value
    browser.category_menu.value = "scene"
    excluded = next(u for u in range(64) if u not in browser.units)
    with pytest.raises(KdlibError, match=f"unit = {excluded} of layer 'layer3' is excluded by the filters"):
        browser.show(excluded)


def _no_examples(result: DissectResult) -> DissectResult:
    layer = result["layer2"]
    state = layer.state()
    state.update(top_images=state["top_images"][:, :0], top_values=state["top_values"][:, :0], top_maps=state["top_maps"][:, :0])
    return DissectResult({"layer2": LayerResult.from_state(state)})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"unit": 32}, r"unit = 32 is not in layer 'layer2'; valid: 0\.\.31"),
        ({"unit": -1}, r"unit = -1 is not in layer 'layer2'"),
        ({"layer": "layer9"}, r"layer = 'layer9' is not in the dissection result; valid: layer2, layer3"),
        ({"category": "smell"}, r"category = 'smell' is not in layer 'layer2'; valid: all, color"),
        ({"unit": 5, "iou_threshold": 0.99, "detectors_only": True}, r"unit = 5 of layer 'layer2' is excluded by the filters; valid \(0-based\): none"),
    ],
)
@pytest.mark.parametrize("live", [True, False])
def test_bad_input_is_one_line(dissected, kwargs, match, live):
    result, probe = dissected
    with pytest.raises(KdlibError, match=match) as info:
        unit_browser(result, probe, live=live, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("live", [True, False])
def test_a_result_without_examples_is_refused(dissected, live):
    result, probe = dissected
    with pytest.raises(KdlibError, match=r"layer 'layer2' kept no example images; valid: a result of dissect\(\.\.\., examples >= 1\)"):
        unit_browser(_no_examples(result), probe, live=live)
    with pytest.raises(KdlibError, match="a LayerResult, a DissectResult or a mapping"):
        unit_browser([result["layer2"]], probe, live=live)


# -- the static strip and when it is used ---------------------------------------------------------


def test_static_strip_shows_the_first_passing_units(dissected):
    result, probe = dissected
    layer = result["layer3"]
    units = passing_units(layer, "object")
    strip = static_strip(result, probe, layer="layer3", category="object", max_units=3, size=32)
    assert strip.table["unit"].tolist() == [u + 1 for u in units[:3]]
    picture = _decoded(strip.png)
    assert picture.shape[0] == 3 * (32 + TITLE_HEIGHT)
    second = np.asarray(unit_masks(layer, units[1], probe, size=32))
    top = 32 + TITLE_HEIGHT + TITLE_HEIGHT
    assert np.array_equal(picture[top : top + 32, : second.shape[1]], second)
    later = static_strip(result, probe, layer="layer3", unit=units[2], category="object", max_units=2)
    assert later.table["unit"].tolist() == [u + 1 for u in units[2:4]]
    empty = static_strip(result, probe, detectors_only=True, iou_threshold=0.99)
    assert empty.png is None and empty.title == empty_text("layer2", None, True) and repr(empty) == empty.title


def test_static_strip_displays_a_png_and_the_table(dissected):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()  # IPython's display machinery without a kernel
    result, probe = dissected
    strip = static_strip(result, probe, max_units=2)
    with capture_output() as captured:
        strip._ipython_display_()
    image, table = captured.outputs
    assert set(image.data) == {"image/png", "text/plain"} and image.data["text/plain"] == strip.title
    assert set(table.data) == {"text/html", "text/plain"} and table.data["text/plain"] == repr(strip.table)
    assert len(strip.table) == 2


def test_without_a_widget_frontend_it_degrades_to_the_static_strip(dissected, monkeypatch):
    result, probe = dissected
    monkeypatch.delenv(ub.MODE_VARIABLE, raising=False)
    assert widgets_live() is False  # pytest: no kernel
    assert isinstance(unit_browser(result, probe), StaticStrip)
    monkeypatch.setenv(ub.MODE_VARIABLE, "live")
    assert isinstance(unit_browser(result, probe), widgets.VBox)
    monkeypatch.setenv(ub.MODE_VARIABLE, "sometimes")
    with pytest.raises(KdlibError, match="KDLIB_WIDGETS = 'sometimes' is not valid; valid: live, static or unset"):
        widgets_live()


class _Kernel:
    def __init__(self, content):
        self.content = content

    def get_parent(self, channel):
        assert channel == "shell"
        return {"header": {"msg_type": "execute_request"}, "content": self.content}


@pytest.mark.parametrize(
    "content,live",
    [({"allow_stdin": True}, True), ({"allow_stdin": False}, False), ({}, False)],
)
def test_live_means_the_running_request_allows_stdin(monkeypatch, content, live):
    monkeypatch.delenv(ub.MODE_VARIABLE, raising=False)
    monkeypatch.setattr(ub, "_kernel", lambda: _Kernel(content))
    assert widgets_live() is live
    monkeypatch.setenv(ub.MODE_VARIABLE, "static")
    assert widgets_live() is False
