"""kdlib.viz.study: each chart draws exactly the rows of its table (read back from the axes), and
kdlib.viz.world's pictures list what they show."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdlib.errors import KdlibError
from kdlib.viz.study import box_chart, ci_bars, line_chart

BARS = pd.DataFrame({
    "run": ["scratch", "scratch", "kd", "kd", "teacher", "teacher"],
    "category": ["object", "total", "object", "total", "object", "total"],
    "mean": [2.0, 5.0, 3.0, 7.0, 6.0, 9.0],
    "low": [1.0, 4.0, 2.5, 6.0, math.nan, math.nan],
    "high": [3.0, 6.5, 3.5, 8.0, math.nan, math.nan],
})


def _error_segments(ax) -> list[tuple[float, float, float]]:
    """(x, bottom, top) of every vertical error bar drawn in ``ax``."""
    out = []
    for collection in ax.collections:
        for seg in collection.get_segments():
            (x0, y0), (x1, y1) = seg
            if math.isclose(x0, x1):
                out.append((x0, min(y0, y1), max(y0, y1)))
    return sorted(out)


def test_ci_bars_draws_each_row_once_with_its_interval():
    fig = ci_bars(BARS, x="category", hue="run")
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == BARS["mean"].tolist()  # hue-major, in row order
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    width = 0.8 / 3
    assert centres == pytest.approx([0 - width, 1 - width, 0, 1, 0 + width, 1 + width])
    expected = sorted((c, lo, hi) for c, lo, hi in zip(centres, BARS["low"], BARS["high"]) if not math.isnan(lo))
    drawn = _error_segments(ax)
    assert len(drawn) == len(expected) == 4, "teacher (one seed) has no error bar"
    assert np.allclose(np.array(drawn), np.array(expected))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["object", "total"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scratch", "kd", "teacher"]


def test_ci_bars_makes_one_panel_per_col_value():
    table = BARS.assign(setting=["a", "b"] * 3)
    fig = ci_bars(table, x="run", hue=None, col="setting")
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert [[p.get_height() for p in ax.patches] for ax in fig.axes] == [[2.0, 3.0, 6.0], [5.0, 7.0, 9.0]]


def test_line_chart_draws_each_group_and_dashes_the_control():
    curve = pd.DataFrame({
        "run": ["kd"] * 4 + ["ls"] * 4,
        "attribution": ["gradient", "gradient", "random", "random"] * 2,
        "k": [0.1, 0.5] * 4,
        "diffroar": [0.1, 0.2, 0.0, -0.05, 0.3, 0.35, 0.01, 0.02],
    })
    fig = line_chart(curve, x="k", y="diffroar", hue="run", dashed="attribution")
    lines = [(line.get_label(), line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].lines]
    assert lines == [("kd", "-", [0.1, 0.5], [0.1, 0.2]), ("kd random", "--", [0.1, 0.5], [0.0, -0.05]),
                     ("ls", "-", [0.1, 0.5], [0.3, 0.35]), ("ls random", "--", [0.1, 0.5], [0.01, 0.02])]


def test_box_chart_draws_the_quartiles_and_extremes_of_each_group():
    rng = np.random.default_rng(0)
    long = pd.DataFrame({"run": ["a"] * 40 + ["b"] * 40, "category": (["x"] * 20 + ["y"] * 20) * 2,
                         "v": rng.random(80)})
    fig = box_chart(long, x="category", y="v", hue="run")
    ax = fig.axes[0]
    for group, (run, category) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]):
        values = long[(long.run == run) & (long.category == category)]["v"]
        box = ax.patches[group].get_path().vertices[:, 1]
        assert (box.min(), box.max()) == pytest.approx((values.quantile(0.25), values.quantile(0.75)))
    medians = [line for line in ax.lines if line.get_gid() == "median"]
    assert [m.get_ydata()[0] for m in medians] == pytest.approx(
        [long[(long.run == r) & (long.category == c)]["v"].median() for r in "ab" for c in "xy"])
    ends = sorted(y for line in ax.lines for y in line.get_ydata() if len(line.get_ydata()) == 2)
    assert max(ends) == pytest.approx(long["v"].max()) and min(ends) == pytest.approx(long["v"].min())


def test_an_empty_table_gives_a_figure_that_says_so():
    fig = ci_bars(BARS.iloc[:0], x="category")
    assert [t.get_text() for t in fig.axes[0].texts] == ["no rows to plot"]


def test_a_missing_column_is_one_line():
    with pytest.raises(KdlibError, match="table has no column 'setting'; valid: one of run, category, mean, low, high"):
        ci_bars(BARS, x="category", col="setting")


def test_world_pictures_list_what_they_show(tiny_world):
    from PIL import Image

    from kdlib.viz.world import probe_grid, world_grid

    fig, shown = world_grid(tiny_world, per_class=2, classes=3)
    assert len(fig.axes) == 3 * 4 and shown["class"].nunique() == 3 and len(shown) == 6
    first = shown.iloc[0]
    mask = np.asarray(Image.open(tiny_world / "masks" / "val" / first["class"] / first["image"]))
    assert first["object_pixels"] == int((mask > 0).sum()) and first["part_pixels"] == int((mask == 2).sum())
    fig, shown = probe_grid(tiny_world, images=2)
    assert len(fig.axes) == 2 * 6 and shown["probe_image"].tolist() == [0, 1]
    with pytest.raises(KdlibError, match="is not a generated world"):
        world_grid(tiny_world / "broden")
