"""World generation time against its budgets (tiny <= 10 s, default <= 2 min on 2 cores).

Prints wall time per profile (median of --repeats runs into fresh folders), the ratio to the budget,
and, in the same run, the speed-up of 2 worker processes over 1 (the baseline) on the tiny profile.

    python benchmarks/world_generation.py [--repeats 3] [--skip-default]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kdlib.params import PROFILES
from kdlib.data.world import generate

BUDGET_S = {"tiny": 10.0, "default": 120.0}


def _time(profile: str, workers: int | None, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(PROFILES[profile], Path(tmp) / "w", seed=0, workers=workers)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-default", action="store_true", help="only the tiny profile (a few seconds)")
    args = p.parse_args()
    one = _time("tiny", 1, args.repeats)
    two = _time("tiny", 2, args.repeats)
    print(f"tiny    1 worker  {one:6.2f} s (baseline)")
    print(f"tiny    2 workers {two:6.2f} s   speed-up x{one / two:.2f}   budget ratio {two / BUDGET_S['tiny']:.2f} (<= 1 meets it)")
    if not args.skip_default:
        d = _time("default", None, 1)
        print(f"default 2 workers {d:6.2f} s   budget ratio {d / BUDGET_S['default']:.2f} (<= 1 meets it)")


if __name__ == "__main__":
    main()
