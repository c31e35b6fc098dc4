"""The ``metrics`` section: which interpretability measures a study computes, on which networks, and how.

::

    metrics:
      measures: [five_band, diffroar, gradient_alignment, object_centricity, class_similarity]
      networks: []                   # network keys or run names; [] = every trained network
      split: test
      five_band: {methods: [saliency, layer_gradcam], heatmap_thresholds: [0.3, 0.7], ...}
      diffroar: {ks: [0.1, 0.3, 0.5], runs: 1, retrain: {epochs: 3, ...}, ...}

Attribution methods are written as a name or a mapping ``{name: ..., <option>: ...}``; the names and
their options are those of :mod:`kdlib.metrics.saliency` (Captum's methods), checked there, as loss
options are checked by the loss builder. Each measure's section holds exactly the hyper-parameters of
its class in :mod:`kdlib.metrics` (one dataclass here, used by both). Which value of every ambiguous
detail of a published definition the study uses is said in the field's ``doc`` and in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from kdlib.errors import KdlibError
from kdlib.params.train import OptimizerParams, ScheduleParams
from kdlib.params.validate import knob

Method = Union[str, dict[str, Any]]
MEASURES = ("five_band", "diffroar", "gradient_alignment", "object_centricity", "class_similarity")


def check_fraction(values: list[float], where: str) -> None:
    """Every value in (0, 1] (a fraction of input coordinates kept), else one line."""
    for i, k in enumerate(values):
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < k <= 1.0:
            raise KdlibError(f"{where}[{i}] = {k!r} is out of range; valid: a fraction 0 < k <= 1")


def check_thresholds(pair: list[float], where: str) -> None:
    """A band boundary pair ``[low, high]`` with 0 < low < high < 1."""
    if len(pair) != 2 or not 0.0 < pair[0] < pair[1] < 1.0:
        raise KdlibError(f"{where} = {pair!r} is not valid; valid: [low, high] with 0 < low < high < 1")


def check_methods(methods: list[Method], where: str) -> None:
    """At least one method, each a name or a mapping with a string ``name`` (options checked later)."""
    if not methods:
        raise KdlibError(f"{where} = [] is not valid; valid: at least one attribution method")
    for i, m in enumerate(methods):
        if not isinstance(m, str) and not isinstance(m.get("name"), str):
            raise KdlibError(f"{where}[{i}] = {m!r} is not valid; valid: a method name or a mapping with a string 'name'")


@dataclass(frozen=True)
class FiveBandParams:
    """Five-Band scores (Tjoa & Guan 2020). The study uses the current code's values (``xai_basic``):
    heatmap and truth both banded at +-0.3 / +-0.7, soft steps of 0.005 (56 steps)."""

    methods: list[Method] = knob(default_factory=lambda: ["saliency", "input_x_gradient", "layer_gradcam"])
    heatmap_thresholds: list[float] = knob(default_factory=lambda: [0.3, 0.7], doc="older pipeline: [0.3, 0.5]")
    truth_thresholds: list[float] = knob(default_factory=lambda: [0.3, 0.7])
    truth_values: list[float] = knob(default_factory=lambda: [0.4, 0.9], doc="ground-truth heat of object, of distinguishing part")
    soft_step: float = knob(0.005, gt=0.0, lt=0.3, doc="heatmap thresholds move toward 0 by this per step; class default 0.02")
    soft_steps: int = knob(56, ge=1, le=1000, doc="number of threshold settings, the unshifted one first; class default 11")
    fpr_best: Literal["min", "max"] = knob("min", doc="'best' FPR over the soft steps: min (lower is better) or max (literal max)")
    eps: float = knob(1e-6, gt=0.0, le=1e-2, doc="added to every denominator, as in the authors' code")

    def __post_init__(self) -> None:
        check_methods(self.methods, "methods")
        check_thresholds(self.heatmap_thresholds, "heatmap_thresholds")
        check_thresholds(self.truth_thresholds, "truth_thresholds")
        if len(self.truth_values) != 2 or not 0.0 < self.truth_values[0] < self.truth_values[1] <= 1.0:
            raise KdlibError(f"truth_values = {self.truth_values!r} is not valid; valid: [object, part] with 0 < object < part <= 1")
        lowest = self.heatmap_thresholds[0] - (self.soft_steps - 1) * self.soft_step
        if lowest <= 0:
            raise KdlibError(
                f"soft_steps = {self.soft_steps} with soft_step = {self.soft_step} moves the threshold "
                f"{self.heatmap_thresholds[0]} to {lowest:.4g}; valid: (soft_steps - 1) * soft_step < {self.heatmap_thresholds[0]}"
            )


@dataclass(frozen=True)
class RetrainParams:
    """The short schedule DiffROAR retrains a fresh network with (:mod:`kdlib.train.retrain`): no
    augmentation (masked coordinates must stay where the attribution put them)."""

    epochs: int = knob(4, ge=1, le=1000, doc="4 epochs of 2,400 images: 34% test accuracy unmasked on the default world")
    batch_size: int = knob(128, ge=1, le=65_536)
    optimizer: OptimizerParams = field(default_factory=lambda: OptimizerParams(lr=0.05, weight_decay=5e-4))
    schedule: ScheduleParams = field(default_factory=lambda: ScheduleParams(name="cosine", milestones=[]))
    amp: bool = knob(True, doc="bfloat16 autocast")
    channels_last: bool = True
    threads: Optional[int] = knob(1, ge=1, le=256, doc="torch threads while retraining on the CPU; None: as set")
    device: str = knob("auto", doc="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        late = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
        if self.schedule.name == "multistep" and late:
            raise KdlibError(f"schedule.milestones = {self.schedule.milestones!r}; valid: epochs from 1 to {self.epochs - 1}")


@dataclass(frozen=True)
class DiffRoarParams:
    """DiffROAR (Shah, Jain & Netrapalli 2021): ``accuracy(top-k) - accuracy(bottom-k)`` of networks
    retrained on data keeping only the top / bottom fraction k of input coordinates by |attribution|.
    The study attributes the logit's input gradient (the paper's text; ``{name: gradient, output: loss}``
    is the code's loss-gradient variant)."""

    ks: list[float] = knob(default_factory=lambda: [0.1, 0.3, 0.5], doc="fractions kept; the paper's plots: 0.05, 0.1, 0.2, ... 1.0")
    method: Method = knob(default_factory=lambda: {"name": "gradient", "output": "logit"})
    runs: int = knob(1, ge=1, le=100, doc="retrainings per side; the difference is averaged over all (top, bottom) pairs")
    train_images: Optional[int] = knob(2400, ge=2, doc="the first n training images in a class-balanced order; None: all")
    fill: Optional[float] = knob(None, doc="value of removed coordinates; None: the mean of the (normalised) training data")
    random_control: bool = knob(True, doc="also score a random attribution (expected DiffROAR about 0)")
    seed: int = knob(0, ge=0, doc="seeds retraining run r with derive(seed, 'diffroar', r); the random attribution too")
    networks: Optional[list[str]] = knob(None, doc="None: the first seed's students")
    retrain: RetrainParams = field(default_factory=RetrainParams)

    def __post_init__(self) -> None:
        if not self.ks:
            raise KdlibError("ks = [] is not valid; valid: one or more fractions 0 < k <= 1")
        check_fraction(self.ks, "ks")
        check_methods([self.method], "method")


@dataclass(frozen=True)
class GradientAlignmentParams:
    """Input gradients against the object mask (share of |gradient| inside the object, ROC AUC of the
    mask against |gradient|) and against the reference teacher's (cosine)."""

    methods: list[Method] = knob(
        default_factory=lambda: [{"name": "gradient", "output": "loss"}, {"name": "gradient", "output": "logit"}]
    )

    def __post_init__(self) -> None:
        check_methods(self.methods, "methods")


@dataclass(frozen=True)
class ObjectCentricityParams:
    """Share of a layer's (positive) activation, and of a saliency map's |mass|, inside the object mask;
    per detector category when the network's dissection is at hand."""

    layers: Optional[list[str]] = knob(None, doc="None: the study's dissected layers")
    methods: list[Method] = knob(default_factory=lambda: ["saliency", "layer_gradcam"])
    iou_threshold: Optional[float] = knob(None, gt=0.0, lt=1.0, doc="detector threshold; None: the dissection's own")

    def __post_init__(self) -> None:
        check_methods(self.methods, "methods")


@dataclass(frozen=True)
class ClassSimilarityParams:
    """Class-similarity structure of the output distribution: within-class entropy (three readings of
    the paper's, all reported), correlation of the class-similarity matrix with the reference teacher's,
    share of non-target probability on the true class's siblings."""

    temperature: float = knob(1.0, gt=0.0, le=100.0, doc="softmax temperature of every output distribution")


@dataclass(frozen=True)
class MetricsParams:
    measures: list[str] = knob(default_factory=lambda: list(MEASURES))
    networks: list[str] = knob(default_factory=list, doc="network keys (kd-s0) or run names (kd: every seed); []: all trained")
    split: Literal["test", "val"] = "test"
    max_images: Optional[int] = knob(None, ge=1, doc="first n images of the split in a class-balanced order; None: all")
    reference: Literal["first_teacher", "own_teacher"] = knob(
        "first_teacher", doc="teacher a network is compared with (gradient cosine, similarity correlation)"
    )
    batch_size: int = knob(256, ge=1, le=65_536)
    device: str = knob("auto", doc="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    five_band: FiveBandParams = field(default_factory=FiveBandParams)
    diffroar: DiffRoarParams = field(default_factory=DiffRoarParams)
    gradient_alignment: GradientAlignmentParams = field(default_factory=GradientAlignmentParams)
    object_centricity: ObjectCentricityParams = field(default_factory=ObjectCentricityParams)
    class_similarity: ClassSimilarityParams = field(default_factory=ClassSimilarityParams)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.measures):
            if name not in MEASURES:
                raise KdlibError(f"measures[{i}] = {name!r} is not a measure; valid: {', '.join(MEASURES)}")
        if len(set(self.measures)) != len(self.measures):
            raise KdlibError(f"measures = {self.measures!r} names a measure twice; valid: each measure once")

    def section(self, measure: str) -> Any:
        """The hyper-parameters of ``measure``."""
        return getattr(self, measure)
