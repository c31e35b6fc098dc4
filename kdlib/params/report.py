"""The ``report`` section: the baseline every method is compared with, and the claims the study judges.

A claim names two runs and one measure of the long observation table
(:func:`kdlib.runs.comparison.observations`) and the sign the paper reports for ``a - b``. Claims are
written in the params file before any result exists; the verdict rule (:func:`kdlib.runs.comparison.judge`)
is fixed in code. A key left out (``layer: null``) selects rows where that key does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from kdlib.errors import KdlibError
from kdlib.params.validate import knob


@dataclass(frozen=True)
class Claim:
    claim: str
    a: str
    b: str
    measure: str
    expect: Literal["greater", "less"]
    layer: Optional[str] = None
    category: Optional[str] = None
    iou_threshold: Optional[float] = None
    setting: Optional[str] = None
    score: Optional[str] = None
    source: str = knob("", doc="where the claim comes from (paper section, or 'control: ours')")


@dataclass(frozen=True)
class ReportParams:
    baseline: Optional[str] = knob(None, doc="the student every other run is compared with, seed by seed; None: no comparison")
    level: float = knob(0.95, gt=0.5, lt=1.0, doc="confidence level of every interval")
    claims: list[Claim] = knob(default_factory=list)
    quantiles: list[float] = knob(
        default_factory=list,
        doc="activation quantiles of the sensitivity table: the last dissected layer dissected again at each "
            "(the study's own quantile is always in it); []: no sensitivity table")

    def __post_init__(self) -> None:
        for i, q in enumerate(self.quantiles):
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
                raise KdlibError(f"report.quantiles[{i}] = {q!r} is out of range; valid: 0 < quantile < 1")
