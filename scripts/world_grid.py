"""Picture grid of a generated world: example images per class with their object masks and probe labels.

    python scripts/world_grid.py --world data/world-default-s0 --out docs/world_grid.png

The pictures are :func:`kdlib.viz.world.world_grid` and :func:`kdlib.viz.world.probe_grid` (what the
00_world notebook shows); this writes them as ``OUT`` and ``OUT`` with ``_probe`` before the suffix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdlib import atomic
from kdlib.errors import cli_main
from kdlib.viz.world import probe_grid, world_grid


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--classes", type=int, default=8, help="how many classes to show (first N)")
    args = p.parse_args(argv)
    grid, _ = world_grid(args.world, per_class=args.per_class, classes=args.classes)
    probe, _ = probe_grid(args.world)
    out = Path(args.out)
    for figure, target in ((grid, out), (probe, out.with_name(out.stem + "_probe" + out.suffix))):
        with atomic.atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
