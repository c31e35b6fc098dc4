"""The ``dissect`` section: Network Dissection settings, validated once and passed whole to the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kdlib.errors import KdlibError
from kdlib.params.validate import knob


@dataclass(frozen=True)
class DissectParams:
    """Settings of :func:`kdlib.dissect.dissect`; the defaults here are the only ones.

    Sizes are bounded so that a typo fails at once: a batch of 4,096 probe images, 64 examples per unit,
    a 64 GiB feature cache and 1,024 px probe images are beyond anything the engine needs."""

    layers: list[str] = knob(default_factory=lambda: ["layer3", "layer4"], doc="module names to dissect")
    quantile: float = knob(0.005, gt=0.0, lt=1.0, doc="top share of activations kept per unit")
    iou_threshold: float = knob(0.04, gt=0.0, lt=1.0, doc="0.04: Network Dissection; 0.05: Han et al.")
    batch_size: int = knob(64, ge=1, le=4096, doc="probe images per batch")
    examples: int = knob(8, ge=0, le=64, doc="top probe images kept per unit, for unit strips and the unit browser")
    feature_cache_mb: float = knob(
        256.0, ge=0.0, le=65536.0, doc="keep pass 1's activations for pass 2 up to this size; 0: run the model twice"
    )
    image_size: Optional[int] = knob(None, ge=8, le=1024, doc="resize probe images to this size; None: as stored")
    num_workers: int = knob(0, ge=0, le=64, doc="DataLoader worker processes")
    device: str = knob("auto", doc="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    threads: Optional[int] = knob(
        1, ge=1, le=256,
        doc="CPU threads for the run (torch.set_num_threads; restored after); None: leave torch's setting. "
        "1 by default: beside other busy processes a second thread made dissection 5-20x slower (README)",
    )  # fmt: skip

    def __post_init__(self):
        if not self.layers or not all(isinstance(l, str) and l for l in self.layers):
            raise KdlibError(f"layers = {self.layers!r} is not valid; valid: a list of module names such as ['layer4']")
        twice = sorted({l for l in self.layers if self.layers.count(l) > 1})
        if twice:
            raise KdlibError(f"layers: {twice[0]!r} is named twice; valid: distinct layer names")
