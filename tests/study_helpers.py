"""params/tiny.yaml written into a test's folder, with its data and outputs there too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(folder: Path, name: str = "tiny", **overrides: Any) -> Path:
    """``folder/<name>.yaml``: params/tiny.yaml with ``data_root`` and ``output_root`` under ``folder``
    and ``overrides`` (top-level sections) applied."""
    params = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    params.update(data_root=str(folder / "data"), output_root=str(folder / "outputs"), **overrides)
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
