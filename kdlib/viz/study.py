"""Charts of the study's tables: bars with confidence intervals, lines (training curves, DiffROAR), box plots.

Each function draws one long table (the ones :mod:`kdlib.runs.present` returns) and nothing else, in
its row order: groups along ``x`` in order of first appearance, one colour per ``hue`` value (seaborn's
palette), one panel per ``col`` value. So the numbers a figure shows are exactly the rows of the table
printed under it in the notebook, which is how nbval checks a figure (it compares no image), and how
the tests check these functions (they read the bars, lines and boxes back from the axes).
Figures are made without pyplot (:class:`matplotlib.figure.Figure`), so they work headless.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kdlib.errors import KdlibError

WIDTH = 0.8  # of one x slot, shared by the hue bars


def _levels(table: pd.DataFrame, column: Optional[str]) -> list:
    if column is None:
        return [None]
    return list(dict.fromkeys(table[column].tolist()))


def _check_columns(table: pd.DataFrame, columns: Sequence[Optional[str]]) -> None:
    missing = [c for c in columns if c is not None and c not in table]
    if missing:
        raise KdlibError(f"table has no column {missing[0]!r}; valid: one of {', '.join(map(str, table.columns))}")


def _empty(title: Optional[str]) -> Figure:
    """A figure saying there is nothing to draw (e.g. a measure the params do not compute)."""
    fig, axes = _panels(1, 4.0, 1.6)
    axes[0].text(0.5, 0.5, "no rows to plot", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set_axis_off()
    axes[0].set_title(title or "", fontsize=9)
    return fig


def _panels(count: int, width: float, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * count, height))
    axes = fig.subplots(1, count, squeeze=False)[0]
    return fig, list(axes)


def _palette(count: int) -> list:
    import seaborn as sns

    return sns.color_palette(n_colors=max(count, 1))


def _rows(table: pd.DataFrame, keys: dict) -> pd.DataFrame:
    """Rows where each (column, value) pair matches; a None column (no such grouping) is skipped."""
    for key, value in keys.items():
        if key is not None:
            table = table[table[key] == value]
    return table


def ci_bars(table: pd.DataFrame, x: str, hue: Optional[str] = "run", col: Optional[str] = None, value: str = "mean",
            low: str = "low", high: str = "high", title: Optional[str] = None, ylabel: Optional[str] = None) -> Figure:
    """Bars of ``value`` with error bars from ``low`` to ``high`` (an interval that is NaN, e.g. one seed,
    is drawn without); one bar per (``x``, ``hue``) row, one panel per ``col`` value. An empty table
    gives a figure that says so."""
    _check_columns(table, [x, hue, col, value, low, high])
    if table.empty:
        return _empty(title)
    xs, hues, cols = _levels(table, x), _levels(table, hue), _levels(table, col)
    colours = _palette(len(hues))
    fig, axes = _panels(len(cols), max(3.0, 1.0 + 0.55 * len(xs) * max(1, len(hues)) ** 0.5))
    width = WIDTH / len(hues)
    for ax, c in zip(axes, cols):
        for j, h in enumerate(hues):
            rows = _rows(table, {col: c, hue: h})
            pos = np.array([xs.index(v) for v in rows[x]]) + (j - (len(hues) - 1) / 2) * width
            heights = rows[value].astype(float).to_numpy()
            ax.bar(pos, heights, width=width * 0.95, color=colours[j], label=None if h is None else str(h))
            lo, hi = rows[low].astype(float).to_numpy(), rows[high].astype(float).to_numpy()
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.errorbar(pos[ok], heights[ok], yerr=[heights[ok] - lo[ok], hi[ok] - heights[ok]], fmt="none",
                            ecolor="black", elinewidth=1, capsize=2)
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
        ax.set_title(str(c) if c is not None else (title or ""), fontsize=9)
        ax.set_ylabel(ylabel or value if ax is axes[0] else "")
    if hue is not None:
        axes[-1].legend(fontsize=7, title=None)
    if title and col is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def line_chart(table: pd.DataFrame, x: str, y: str = "mean", hue: Optional[str] = "run", col: Optional[str] = None,
               dashed: Optional[str] = None, title: Optional[str] = None, ylabel: Optional[str] = None) -> Figure:
    """Lines of ``y`` against ``x``, one per ``hue`` value (and per value of ``dashed``: its first value
    solid, the others dashed, e.g. an attribution against its random control), one panel per ``col``."""
    _check_columns(table, [x, y, hue, col, dashed])
    if table.empty:
        return _empty(title)
    hues, cols, styles = _levels(table, hue), _levels(table, col), _levels(table, dashed)
    colours = _palette(len(hues))
    fig, axes = _panels(len(cols), 4.2)
    for ax, c in zip(axes, cols):
        for j, h in enumerate(hues):
            for k, s in enumerate(styles):
                rows = _rows(table, {col: c, hue: h, dashed: s})
                if rows.empty:
                    continue
                label = " ".join(str(v) for v in (h, s if k else None) if v is not None) or None
                ax.plot(rows[x].astype(float), rows[y].astype(float), marker="o", markersize=3, color=colours[j],
                        linestyle="-" if k == 0 else "--", label=label)
        ax.set_xlabel(x)
        ax.set_title(str(c) if c is not None else (title or ""), fontsize=9)
        ax.set_ylabel(ylabel or y if ax is axes[0] else "")
    if hue is not None:
        axes[-1].legend(fontsize=7)
    if title and col is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def box_chart(long: pd.DataFrame, x: str, y: str, hue: Optional[str] = "run", title: Optional[str] = None) -> Figure:
    """Box plots of ``y`` per (``x``, ``hue``) group: quartile box, median line, whiskers to the extremes
    (``whis=(0, 100)``, so the drawn numbers are exactly :func:`kdlib.runs.present.quantiles`)."""
    _check_columns(long, [x, y, hue])
    if long.empty:
        return _empty(title)
    xs, hues = _levels(long, x), _levels(long, hue)
    colours = _palette(len(hues))
    fig, axes = _panels(1, max(3.5, 1.0 + 0.5 * len(xs) * max(1, len(hues)) ** 0.5))
    ax = axes[0]
    width = WIDTH / len(hues)
    for j, h in enumerate(hues):
        rows = _rows(long, {hue: h})
        groups = [(xs.index(v), g[y].astype(float).to_numpy()) for v, g in rows.groupby(x, sort=False)]
        pos = [i + (j - (len(hues) - 1) / 2) * width for i, _ in groups]
        parts = ax.boxplot([g for _, g in groups], positions=pos, widths=width * 0.9, whis=(0, 100), patch_artist=True,
                           showfliers=False, manage_ticks=False)
        for box in parts["boxes"]:
            box.set_facecolor(colours[j])
            box.set_alpha(0.8)
        for median in parts["medians"]:
            median.set_color("black")
            median.set_gid("median")
        ax.plot([], [], color=colours[j], linewidth=6, label=None if h is None else str(h))
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_ylabel(y)
    ax.set_title(title or "", fontsize=10)
    if hue is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
