"""Validated run parameters: the only reader of ``params/*.yaml``.

A params file is plain data (``yaml.safe_load``: no tags, no code) validated into frozen dataclasses.
Every problem is reported as one line naming the file, the key, the bad value and what is valid::

    params/tiny.yaml: train.optimizer.lr = -0.1 is out of range; valid: > 0

Layout of a study file (every section optional except where noted)::

    seed: 0                      # drives the world, initialisation and data order
    world: {profile: tiny, ...}  # WorldParams: a named profile plus any field overridden
    data: {imagefolder: null, broden: null}   # real data instead of the generated world
    train: {...}                 # TrainParams shared by every run
    teacher: {...}               # RunParams
    students: [{...}, ...]       # RunParams, each may override `train` and name a `teacher`
    dissect: {...}               # DissectParams

Each dataclass field may carry bounds through :func:`knob`; nested dataclasses, ``list[...]``,
``dict[str, ...]``, ``Optional[...]`` and ``Literal[...]`` are checked recursively.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, TypeVar, Union

import yaml

from kdlib.errors import KdlibError

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Field helper and the generic validator
# --------------------------------------------------------------------------------------------


def knob(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with optional numeric bounds, checked by :func:`from_dict`."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]}")
    return " and ".join(parts)


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ok = True
    if meta.get("ge") is not None and not value >= meta["ge"]:
        ok = False
    if meta.get("gt") is not None and not value > meta["gt"]:
        ok = False
    if meta.get("le") is not None and not value <= meta["le"]:
        ok = False
    if meta.get("lt") is not None and not value < meta["lt"]:
        ok = False
    if value != value:  # NaN
        ok = False
    if not ok:
        raise KdlibError(f"{where} = {value!r} is out of range; valid: {_bounds_text(meta)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (converted where lossless)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise KdlibError(f"{where} = {value!r} is not valid; valid: {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except KdlibError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise KdlibError(f"{where} = {value!r} has the wrong type; valid: {_type_name(tp)}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: {_type_name(tp)}")
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a mapping")
        return {
            _convert(k, key_tp, f"{where} key"): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise KdlibError(f"{where} = {value!r} has the wrong type; valid: a string")
        return value
    raise TypeError(f"params: unsupported annotation {tp!r} at {where}")  # a bug in kdlib, not in input


def from_dict(cls: type[T], data: Any, where: str = "params") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys, missing keys, wrong types and ranges."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise KdlibError(f"{where} = {data!r} has the wrong type; valid: a mapping ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        raise KdlibError(f"{_join(where, key)} is an unknown key; valid keys: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        key_where = _join(where, name)
        if name in data:
            value = _convert(data[name], hints[name], key_where)
            _check_bounds(value, f.metadata, key_where)
            values[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KdlibError(f"{key_where} is missing; it is required ({_type_name(hints[name])})")
    try:
        obj = cls(**values)
    except KdlibError as exc:
        raise KdlibError(_join(where, str(exc))) from None
    return obj


def _join(where: str, key: str) -> str:
    """``where`` + ``key``: ``file.yaml:`` + ``seed`` -> ``file.yaml: seed``; ``a`` + ``b`` -> ``a.b``."""
    if not where:
        return key
    if where.endswith(":"):
        return f"{where} {key}"
    if key.startswith("= "):
        return f"{where} {key}"
    return f"{where}.{key}"


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a params dataclass: what a manifest records."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def replace_from_dict(base: T, overrides: Mapping[str, Any], where: str) -> T:
    """``base`` with the keys of ``overrides`` replaced, validated as :func:`from_dict` would."""
    merged = to_dict(base)
    if not isinstance(overrides, Mapping):
        raise KdlibError(f"{where} = {overrides!r} has the wrong type; valid: a mapping")
    fields = {f.name for f in dataclasses.fields(base)}
    for key in overrides:
        if key not in fields:
            raise KdlibError(f"{_join(where, key)} is an unknown key; valid keys: {', '.join(sorted(fields))}")
    merged.update(overrides)
    return from_dict(type(base), merged, where)


# --------------------------------------------------------------------------------------------
# The concept world
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldParams:
    """Knobs of the generated concept world (``kdlib.data.world``). Profiles give the base values."""

    profile: str = "default"
    seed: Optional[int] = knob(None, ge=0, doc="None: the study's top-level seed")
    superclasses: int = knob(6, ge=2, le=8, doc="object shape families; siblings share one")
    subclasses: int = knob(4, ge=2, le=6, doc="classes per superclass")
    image_size: int = knob(32, ge=16, le=128, doc="square images, pixels")
    train_per_class: int = knob(320, ge=1)
    val_per_class: int = knob(40, ge=1)
    test_per_class: int = knob(80, ge=1)
    probe_images: int = knob(2400, ge=8, doc="images in the Broden-format dissection probe set")
    scenes: int = knob(36, ge=2, le=48, doc="scene types; each is a layout of background stuff")
    context_bias: float = knob(0.4, ge=0.0, le=1.0, doc="P(scene is the class's home scene)")
    attribute_fidelity: float = knob(
        0.7, ge=0.0, le=1.0, doc="P(a part/texture/material is the class's own, else a sibling's)"
    )
    colour_fidelity: float = knob(0.4, ge=0.0, le=1.0, doc="P(body colour is the class's own)")
    label_noise: float = knob(0.05, ge=0.0, lt=1.0, doc="P(train label replaced by a random class)")
    max_distractors: int = knob(2, ge=0, le=6, doc="small unrelated objects per image")
    object_scale: list[float] = knob(default_factory=lambda: [0.5, 0.8], doc="object size / image, range")

    def __post_init__(self) -> None:
        lo, hi = (self.object_scale + [None, None])[:2] if len(self.object_scale) == 2 else (None, None)
        if lo is None or not (0.1 <= lo <= hi <= 1.0):
            raise KdlibError(
                f"object_scale = {self.object_scale!r} is not valid; valid: [low, high] with 0.1 <= low <= high <= 1"
            )

    @property
    def num_classes(self) -> int:
        return self.superclasses * self.subclasses


# --------------------------------------------------------------------------------------------
# Training (kdlib.train) — owned with the training code; keep names stable for YAML users
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerParams:
    """``name``: sgd | adam | adamw (kdlib.train.optim). Han et al.: SGD 0.1, momentum 0.9, wd 1e-4 (ImageNet)."""

    name: str = "sgd"
    lr: float = knob(0.1, gt=0.0)
    momentum: float = knob(0.9, ge=0.0, lt=1.0, doc="sgd only")
    weight_decay: float = knob(5e-4, ge=0.0)
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleParams:
    """Per-epoch learning-rate factor. ``name``: multistep (x ``gamma`` at each milestone) | cosine | constant;
    a linear warm-up over ``warmup_epochs`` multiplies any of them."""

    name: str = "multistep"
    milestones: list[int] = knob(default_factory=lambda: [30, 60, 90])
    gamma: float = knob(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = knob(0, ge=0)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = knob(30, ge=1)
    batch_size: int = knob(128, ge=1)
    optimizer: OptimizerParams = field(default_factory=OptimizerParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    augment: bool = knob(True, doc="random crop (reflect padding) and horizontal flip")
    image_size: Optional[int] = knob(None, ge=8, doc="None: the world's image size (required for real data)")
    amp: bool = knob(False, doc="student in mixed precision: bfloat16 on CPU, float16 + loss scaling on CUDA")
    channels_last: bool = knob(False, doc="student in channels_last memory format")
    teacher_amp: bool = knob(False, doc="teacher forward in bfloat16 (CPU) / float16 (CUDA): soft targets change by rounding")
    deterministic: bool = knob(True, doc="torch.use_deterministic_algorithms (warn only) and no cudnn autotuning")
    cache_images: bool = knob(True, doc="decode the training images once and keep them in memory")
    num_workers: int = knob(0, ge=0)
    device: str = knob("auto", doc="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TeacherRef:
    """Where a distillation run gets its teacher: another run of this file, or any checkpoint."""

    run: Optional[str] = None
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.checkpoint is None):
            raise KdlibError(
                f"= {{run: {self.run!r}, checkpoint: {self.checkpoint!r}}} is not valid; "
                "valid: exactly one of run (a run name in this file) or checkpoint (a path)"
            )


@dataclass(frozen=True)
class RunParams:
    """One network to train. ``loss`` is a list of weighted terms, e.g. ``{name: kd, weight: 0.9, temperature: 4}``;
    keys other than ``name`` and ``weight`` are passed to the loss builder, which validates them."""

    name: str
    model: str
    loss: list[dict[str, Any]] = knob(default_factory=lambda: [{"name": "ce", "weight": 1.0}])
    model_kwargs: dict[str, Any] = knob(default_factory=dict)
    teacher: Optional[TeacherRef] = None
    train: dict[str, Any] = knob(default_factory=dict, doc="overrides of the study's train section")

    def __post_init__(self) -> None:
        if not self.loss:
            raise KdlibError("loss = [] is not valid; valid: a list of at least one term")
        for i, term in enumerate(self.loss):
            if "name" not in term or not isinstance(term["name"], str):
                raise KdlibError(f"loss[{i}] = {term!r} is not valid; valid: a mapping with a string 'name'")
            weight = term.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise KdlibError(f"loss[{i}].weight = {weight!r} is not valid; valid: a number >= 0")


# --------------------------------------------------------------------------------------------
# Dissection (kdlib.dissect)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DissectParams:
    layers: list[str] = knob(default_factory=lambda: ["layer3", "layer4"])
    quantile: float = knob(0.005, gt=0.0, lt=1.0, doc="top share of activations kept per unit")
    iou_threshold: float = knob(0.04, gt=0.0, lt=1.0, doc="0.04: Network Dissection; 0.05: Han et al.")
    batch_size: int = knob(64, ge=1)
    examples: int = knob(8, ge=1, doc="top probe images kept per unit, for unit strips and the unit browser")
    feature_cache_mb: float = knob(256.0, ge=0.0, doc="keep pass 1's activations for pass 2 up to this size; 0: run the model twice")


# --------------------------------------------------------------------------------------------
# The study file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataParams:
    """Real data instead of the generated world; ``None`` means "the world's own output"."""

    imagefolder: Optional[str] = None
    broden: Optional[str] = None


@dataclass(frozen=True)
class StudyParams:
    seed: int = knob(0, ge=0)
    world: WorldParams = field(default_factory=WorldParams)
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    teacher: Optional[RunParams] = None
    students: list[RunParams] = knob(default_factory=list)
    dissect: DissectParams = field(default_factory=DissectParams)
    data_root: str = knob("data", doc="where generated worlds are written")
    output_root: str = knob("outputs", doc="where run folders are written")
    source: str = field(default="<dict>", compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        names = [r.name for r in self.runs()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise KdlibError(f"run name {dup[0]!r} is used twice; valid: distinct names per run")
        for run in self.students:
            if run.teacher is not None and run.teacher.run is not None and run.teacher.run not in names:
                raise KdlibError(
                    f"students.{run.name}.teacher.run = {run.teacher.run!r} names no run; valid: {', '.join(names)}"
                )

    def runs(self) -> list[RunParams]:
        return ([self.teacher] if self.teacher is not None else []) + list(self.students)

    def run(self, name: str) -> RunParams:
        for r in self.runs():
            if r.name == name:
                return r
        raise KdlibError(f"run {name!r} is not in {self.source}; valid: {', '.join(r.name for r in self.runs())}")

    @property
    def world_seed(self) -> int:
        return self.seed if self.world.seed is None else self.world.seed

    def world_dir(self) -> Path:
        """Folder of the generated world these params describe (``data_root/world-<profile>-s<seed>``).

        Non-default overrides get a short hash suffix, so two different worlds never share a folder."""
        from kdlib.data.world import world_dir_name  # local: data depends on params, not the reverse

        return Path(self.data_root) / world_dir_name(self.world, self.world_seed)

    def train_for(self, run: RunParams) -> TrainParams:
        """The study's ``train`` section with the run's own overrides applied."""
        return replace_from_dict(self.train, run.train, f"{self.source}: {run.name}.train")


_SECTION_FIXUPS = ("world",)


def parse_study(data: Any, source: str = "<dict>") -> StudyParams:
    """Validate a study mapping (as loaded from YAML) into :class:`StudyParams`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise KdlibError(f"{source}: top level = {type(data).__name__} is not valid; valid: a mapping of sections")
    data = dict(data)
    world = data.pop("world", None) or {}
    try:
        world_params = world_params_from(world, f"{source}: world")
        study = from_dict(StudyParams, data, f"{source}:")
    except KdlibError as exc:
        msg = str(exc)
        if not msg.startswith(source):
            msg = f"{source}: {msg}"
        raise KdlibError(msg) from None
    return dataclasses.replace(study, world=world_params, source=source)


def world_params_from(section: Mapping[str, Any], where: str = "world") -> WorldParams:
    """A world section: ``profile`` picks the base values, every other key overrides one of them."""
    from kdlib.data.profiles import PROFILES  # local: profiles are data, defined beside the generator

    if not isinstance(section, Mapping):
        raise KdlibError(f"{where} = {section!r} has the wrong type; valid: a mapping")
    profile = section.get("profile", "default")
    if profile not in PROFILES:
        raise KdlibError(f"{where}.profile = {profile!r} is not a profile; valid: {', '.join(sorted(PROFILES))}")
    return replace_from_dict(PROFILES[profile], section, where)


def load_study(path: str | os.PathLike) -> StudyParams:
    """Read and validate a study params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise KdlibError(f"params file {str(path)!r} does not exist; valid: a YAML file such as params/tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KdlibError(f"{path}: not valid YAML{at}; valid: plain YAML data (no tags)") from None
    return parse_study(data, str(path))
