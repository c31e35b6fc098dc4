"""The measures of a study's ``metrics:`` section on its networks, cached per network and measure.

What the metrics step of :mod:`kdlib.runs.steps` needs that knows no run folder: which networks each
measure scores (:func:`networks_for`), which teacher a network is compared with (:func:`reference_for`),
the evaluation data (:class:`StudyData`), and :class:`ResultCache`, which keeps every (network, measure)
result as JSON under a key of everything it depends on (the network's and the reference's weights, the
measure's params, the data, the dissection read), so a re-run recomputes nothing. :func:`table_rows`
flattens results into the rows of ``tables/metrics.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from kdlib import atomic
from kdlib.data.masks import MaskedTensors, load_masked
from kdlib.data.ontology import ClassHierarchy, read_hierarchy
from kdlib.digest import json_digest, tensor_digest
from kdlib.errors import KdlibError
from kdlib.metrics.base import Metric, Scores
from kdlib.params import RunInstance, StudyParams

VERSION = 1  # raise when a measure's definition changes: every cached result is recomputed


def select(study: StudyParams, names: Optional[list[str]], where: str) -> list[RunInstance]:
    """Networks named by key (``kd-s0``) or run name (``kd``: every seed); ``[]`` or None: all of them."""
    instances = study.instances()
    if not names:
        return instances
    keys, runs = {i.key for i in instances}, {i.name for i in instances}
    for name in names:
        if name not in keys and name not in runs:
            raise KdlibError(f"{study.source}: {where} names {name!r}; valid: {', '.join(sorted(keys | runs))}")
    return [i for i in instances if i.key in names or i.name in names]


def networks_for(study: StudyParams, measure: str) -> list[RunInstance]:
    """The networks ``measure`` scores: its own ``networks`` (DiffROAR: default the first seed's
    students), else the section's."""
    section = study.metrics.section(measure)
    own = getattr(section, "networks", None)
    if measure == "diffroar" and own is None:
        first = study.student_seeds[0]
        return [i for i in study.instances() if i.role == "student" and i.seed == first]
    if own is not None:
        return select(study, own, f"metrics.{measure}.networks")
    return select(study, study.metrics.networks, "metrics.networks")


def reference_for(study: StudyParams, inst: RunInstance) -> Optional[RunInstance]:
    """The teacher ``inst`` is compared with: the study's first teacher (``first_teacher``) or the
    teacher it distils from, falling back to the first (``own_teacher``); None for that teacher itself."""
    own = study.teacher_instance(inst) if study.metrics.reference == "own_teacher" else None
    first = study.instances()[0] if study.teachers else None
    ref = own or first
    return None if ref is None or ref.key == inst.key else ref


def check_metrics(study: StudyParams) -> None:
    """Everything the ``metrics:`` section and the model names can tell, before any work: each measure
    builds, every attribution method parses, every network named exists, and every layer a measure
    reads (the methods' and object-centricity's) is a layer of each network it scores."""
    from kdlib.metrics import build
    from kdlib.metrics.saliency import METHODS, parse_method
    from kdlib.models import build as build_model
    from kdlib.models.nethook import layer_names

    m = study.metrics
    default_layer = study.dissect.layers[-1] if study.dissect.layers else None
    for name in m.measures:
        metric = build(name, m.section(name))
        section = m.section(name)
        methods = list(getattr(section, "methods", [])) + ([section.method] if name == "diffroar" else [])
        specs = [parse_method(x, f"metrics.{name}.methods[{i}]", default_layer) for i, x in enumerate(methods)]
        layers = [s.layer for s in specs if METHODS[s.name].layer]
        if name == "object_centricity":
            layers += list(section.layers or study.dissect.layers)
        for inst in networks_for(study, name):
            have = layer_names(build_model(inst.run.model, 2, **inst.run.model_kwargs))
            missing = [layer for layer in layers if layer not in have]
            if missing:
                raise KdlibError(f"{study.source}: metrics.{metric.name} reads layer {missing[0]!r}, which {inst.run.model} "
                                 f"({inst.key}) lacks; valid: {', '.join(have)}")


class StudyData:
    """The evaluation split (images, labels, masks), the training split (for DiffROAR) and the class
    hierarchy of a study's world, loaded when first asked for. ``fingerprint`` names them without
    loading anything: the world's content hash (its manifest) and how they are read."""

    def __init__(self, study: StudyParams, world: Path):
        self.study, self.world = study, Path(world)
        m = study.metrics
        self.image_size = study.train.image_size or (study.world.image_size if study.data.imagefolder is None else None)
        manifest = self.world / "manifest.json"
        content = json.loads(manifest.read_text())["content_sha256"] if manifest.is_file() else None
        self.fingerprint = {"world": content, "split": m.split, "max_images": m.max_images, "image_size": self.image_size}
        self._eval: Optional[MaskedTensors] = None
        self._train: Optional[MaskedTensors] = None
        if content is None:  # not a generated world: name the data by its tensors
            self.fingerprint["tensors"] = json_digest([tensor_digest(t) for t in (self.eval.images, self.eval.labels, self.eval.masks)])

    @property
    def eval(self) -> MaskedTensors:
        if self._eval is None:
            m = self.study.metrics
            self._eval = load_masked(self.world, m.split, self.image_size, m.max_images, m.batch_size)
        return self._eval

    @property
    def train(self) -> MaskedTensors:
        if self._train is None:
            self._train = load_masked(self.world, "train", self.image_size, None, self.study.metrics.batch_size)
        return self._train

    @property
    def hierarchy(self) -> Optional[ClassHierarchy]:
        if not (self.world / "classes.json").is_file():
            return None
        return read_hierarchy(self.world, self.eval.classes)


class ResultCache:
    """``<root>/<network>/<measure>.json``: ``{"key", "scores", "seconds", "images"}``, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, network: str, measure: str) -> Path:
        return self.root / network / f"{measure}.json"

    def get(self, network: str, measure: str, key: dict) -> Optional[dict]:
        path = self._path(network, measure)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # an unreadable cache entry is recomputed
        return record if record.get("key") == json.loads(json.dumps(key)) else None

    def put(self, network: str, measure: str, key: dict, scores: Scores, seconds: float, images: int) -> dict:
        record = {"key": key, "scores": scores, "seconds": seconds, "images": images}
        atomic.write_text(self._path(network, measure), json.dumps(record, indent=1) + "\n")  # scores keep their order
        return record


def cache_key(metric: Metric, weights: str, reference: Optional[str], data: StudyData, dissection: Any,
              extra: Optional[dict] = None) -> dict:
    """What a (network, measure) result depends on; ``extra``: e.g. the retraining's params."""
    return {"version": VERSION, "measure": metric.get_params(), "weights": weights, "reference": reference,
            "data": data.fingerprint, "dissection": dissection, **(extra or {})}


def table_rows(inst: RunInstance, metric: Metric, record: dict, cached: bool) -> list[dict]:
    """One row per (setting, score) of one network's result."""
    rows = []
    for setting, scores in record["scores"].items():
        for score, value in scores.items():
            rows.append({"network": inst.key, "run": inst.name, "seed": inst.seed, "role": inst.role, "model": inst.run.model,
                         "measure": metric.name, "setting": setting, "score": score, "value": value,
                         "direction": metric.direction(score), "images": record["images"], "seconds": record["seconds"], "cached": cached})
    return rows
