"""The study's verdict in one paragraph, written from the claims table and nothing else.

``tables/claims.csv`` (:func:`kdlib.runs.comparison.judge`) holds, per claim of the params' ``report``
section, the paired difference ``a - b`` over seeds (mean, interval, p, number of seeds) and its verdict
by the fixed rule: *held* when the interval excludes 0 in the paper's direction, *opposite* when it
excludes 0 the other way, *undecided* otherwise, *no data* when no rows match the claim. :func:`paragraph`
turns that into prose with every claim's numbers, and says what the data cannot decide and why (an
interval that includes 0, a single seed, no rows). No number in it is typed by hand.
"""

from __future__ import annotations

import math

import pandas as pd

from kdlib.errors import KdlibError

REQUIRED = ("claim", "a", "b", "verdict")
ORDER = ("held", "opposite", "undecided", "no data")


def _num(value: float) -> str:
    return f"{value:.3g}"


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + _num(value)


def _n(row) -> int:
    for key in ("diff_n", "n"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return int(value)
    return 0


def evidence(row) -> str:
    """``kd - scratch = +4 [1.52, 6.48], p = 0.0213, 3 seeds`` (or why there is no interval)."""
    n = _n(row)
    if row["verdict"] == "no data" or n == 0:
        return f"no rows of {row['a']} and {row['b']} match the claim's measure"
    mean = row.get("diff_mean", math.nan)
    head = f"{row['a']} - {row['b']} = {_signed(mean)}"
    low, high = row.get("diff_low", math.nan), row.get("diff_high", math.nan)
    if n < 2 or math.isnan(low) or math.isnan(high):
        return f"{head} on one seed"
    p = row.get("p", math.nan)
    p_text = f", p = {_num(p)}" if not math.isnan(p) else ""
    return f"{head} [{_num(low)}, {_num(high)}]{p_text}, {n} seeds"


def _why_undecided(row) -> str:
    if row["verdict"] == "no data" or _n(row) == 0:
        return "no data"
    if _n(row) < 2 or math.isnan(row.get("diff_low", math.nan)):
        return "one seed gives no interval"
    return "the interval includes 0"


def _check(claims: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in claims]
    if missing:
        raise KdlibError(f"claims table lacks column {missing[0]!r}; valid: a table written by kdlib.runs.comparison.judge")
    bad = sorted(set(claims["verdict"]) - set(ORDER))
    if bad:
        raise KdlibError(f"claims table has verdict {bad[0]!r}; valid: {', '.join(ORDER)}")


def paragraph(claims: pd.DataFrame, level: float = 0.95) -> str:
    """One paragraph: how many claims held, went the opposite way or are undecided, each with its numbers,
    then what the data cannot decide and why."""
    if claims is None or claims.empty:
        return ("No claims are judged: the params' report section lists none, so the study states no verdict "
                "(add claims under report.claims, before looking at any result).")
    _check(claims)
    rows = claims.to_dict("records")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ORDER}
    seeds = max((_n(r) for r in rows), default=0)
    on = (f" on up to {seeds} seeds" if seeds > 1 else " on one seed") if seeds else ""
    lead = (f"Of the {len(rows)} claims judged{on} (a claim holds when the {level:.0%} interval of a - b excludes 0 "
            f"in the paper's direction), {counts['held']} held, {counts['opposite']} went the opposite way, "
            f"{counts['undecided']} are undecided" + (f" and {counts['no data']} had no data." if counts["no data"] else "."))
    parts = [lead]
    for verdict, title in (("held", "Held"), ("opposite", "Opposite to the paper")):
        chosen = [r for r in rows if r["verdict"] == verdict]
        if chosen:
            parts.append(f"{title}: " + "; ".join(f"{r['claim']} ({evidence(r)})" for r in chosen) + ".")
    open_rows = [r for r in rows if r["verdict"] in ("undecided", "no data")]
    if open_rows:
        parts.append("The data cannot decide: " + "; ".join(
            f"{r['claim']} ({evidence(r)}; {_why_undecided(r)})" for r in open_rows) + ".")
    else:
        parts.append("Every claim was decided by the data.")
    return " ".join(parts)
