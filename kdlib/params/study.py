"""The study file: every section together, the teacher graph checked, read from YAML.

Layout of a study file (every section optional)::

    seed: 0                      # the world, the teachers, and the default student seed
    seeds: [0, 1, 2]             # each student is trained once per seed (default: [seed])
    world: {profile: tiny, ...}  # WorldParams: a named profile plus any field overridden
    data: {imagefolder: null, broden: null}   # real data instead of the generated world
    train: {...}                 # TrainParams shared by every run
    teachers: [{...}, ...]       # RunParams, trained once (seed ``seed``): what students distil from
    students: [{...}, ...]       # RunParams, trained per seed; may override `train` and name a `teacher`
    dissect: {...}               # DissectParams
    report: {baseline: scratch, claims: [...]}   # ReportParams: what the study compares and judges
    metrics: {...}               # MetricsParams: interpretability measures (kdlib.metrics)

One teacher for all seeds, as in Han et al.: the seeds measure the spread of the students, the only
networks whose method differs. A teacher may itself distil from another teacher (never from itself,
never in a cycle); a student distils from a teacher of this file or from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from kdlib.errors import KdlibError
from kdlib.params.dissect import DissectParams
from kdlib.params.report import ReportParams
from kdlib.params.metrics import MetricsParams
from kdlib.params.train import RunParams, TrainParams
from kdlib.params.validate import from_dict, knob, replace_from_dict
from kdlib.params.world import WorldParams, world_dir_name, world_params_from


@dataclass(frozen=True)
class DataParams:
    """Real data instead of the generated world; ``None`` means "the world's own output"."""

    imagefolder: Optional[str] = None
    broden: Optional[str] = None


@dataclass(frozen=True)
class RunInstance:
    """One network a study trains: a run and the seed it is trained with. ``key`` names its folder:
    the run's name for a teacher, ``<name>-s<seed>`` for a student."""

    run: RunParams
    seed: int
    role: Literal["teacher", "student"]

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def key(self) -> str:
        return self.run.name if self.role == "teacher" else f"{self.run.name}-s{self.seed}"


@dataclass(frozen=True)
class StudyParams:
    seed: int = knob(0, ge=0)
    seeds: list[int] = knob(default_factory=list, doc="student seeds; [] means [seed]")
    world: WorldParams = field(default_factory=WorldParams)
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    teachers: list[RunParams] = knob(default_factory=list)
    students: list[RunParams] = knob(default_factory=list)
    dissect: DissectParams = field(default_factory=DissectParams)
    report: ReportParams = field(default_factory=ReportParams)
    metrics: MetricsParams = field(default_factory=MetricsParams)
    data_root: str = knob("data", doc="where generated worlds are written")
    output_root: str = knob("outputs", doc="where run folders are written")
    source: str = field(default="<dict>", compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        bad = [s for s in self.seeds if isinstance(s, bool) or s < 0]
        if bad or len(set(self.seeds)) != len(self.seeds):
            raise KdlibError(f"seeds = {self.seeds!r} is not valid; valid: distinct integers >= 0")
        names = [r.name for r in self.runs()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise KdlibError(f"run name {dup[0]!r} is used twice; valid: distinct names per run")
        _check_teacher_graph(self.teachers, self.students)
        _check_report(self.report, [r.name for r in self.students], names)

    # -- runs ------------------------------------------------------------------------------------

    def runs(self) -> list[RunParams]:
        """Every run, teachers first, in file order."""
        return list(self.teachers) + list(self.students)

    def run(self, name: str) -> RunParams:
        for r in self.runs():
            if r.name == name:
                return r
        raise KdlibError(f"run {name!r} is not in {self.source}; valid: {', '.join(r.name for r in self.runs())}")

    def is_teacher(self, name: str) -> bool:
        return any(r.name == name for r in self.teachers)

    @property
    def student_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]

    def instances(self, names: Optional[list[str]] = None) -> list[RunInstance]:
        """The networks to train, in training order: teachers (teacher of a teacher first), then every
        student for every seed (seed-major, so the first seed's students finish first)."""
        chosen = set(names) if names is not None else None
        out = [RunInstance(r, self.seed, "teacher") for r in _teacher_order(self.teachers)]
        out += [RunInstance(r, s, "student") for s in self.student_seeds for r in self.students]
        return [i for i in out if chosen is None or i.name in chosen]

    def instance(self, key: str) -> RunInstance:
        for inst in self.instances():
            if inst.key == key:
                return inst
        raise KdlibError(f"network {key!r} is not in {self.source}; valid: {', '.join(i.key for i in self.instances())}")

    def teacher_instance(self, inst: RunInstance) -> Optional[RunInstance]:
        """The teacher network ``inst`` distils from when it is a run of this file, else None."""
        ref = inst.run.teacher
        if ref is None or ref.run is None:
            return None
        return RunInstance(self.run(ref.run), self.seed, "teacher")

    # -- data --------------------------------------------------------------------------------------

    @property
    def world_seed(self) -> int:
        return self.seed if self.world.seed is None else self.world.seed

    def world_dir(self) -> Path:
        """Folder of the generated world these params describe (``data_root/world-<profile>-s<seed>``).

        Non-default overrides get a short hash suffix, so two different worlds never share a folder."""
        return Path(self.data_root) / world_dir_name(self.world, self.world_seed)

    def train_for(self, run: RunParams) -> TrainParams:
        """The study's ``train`` section with the run's own overrides applied."""
        return replace_from_dict(self.train, run.train, f"{self.source}: {run.name}.train")


def _check_teacher_graph(teachers: list[RunParams], students: list[RunParams]) -> None:
    """Students distil from teachers; teachers from other teachers, without self-reference or cycles."""
    teacher_names = [t.name for t in teachers]
    for run, role in [(t, "teachers") for t in teachers] + [(s, "students") for s in students]:
        ref = run.teacher.run if run.teacher is not None else None
        if ref is None:
            continue
        if ref == run.name:
            raise KdlibError(f"{role}.{run.name}.teacher.run = {ref!r} is the run itself; valid: another teacher's name")
        if ref not in teacher_names:
            student = any(s.name == ref for s in students)
            what = "names a student (students are trained per seed and teach no one)" if student else "names no teacher"
            raise KdlibError(
                f"{role}.{run.name}.teacher.run = {ref!r} {what}; valid: {', '.join(teacher_names) or 'a teachers section'}"
            )
    _teacher_order(teachers)  # raises on a cycle


def _check_report(report: ReportParams, students: list[str], names: list[str]) -> None:
    """The baseline (when given) is a student; every claim compares runs of this file (or an untrained null)."""
    if report.baseline is not None and report.baseline not in students:
        raise KdlibError(f"report.baseline = {report.baseline!r} is not a student; valid: {', '.join(students)}")
    for i, claim in enumerate(report.claims):
        for side in ("a", "b"):
            run = getattr(claim, side)
            if run not in names and not run.startswith("random-"):
                raise KdlibError(f"report.claims[{i}].{side} = {run!r} names no run; valid: {', '.join(names)} or random-<model>")


def _teacher_order(teachers: list[RunParams]) -> list[RunParams]:
    """Teachers in an order where each comes after the teacher it distils from; a cycle is one line."""
    by_name = {t.name: t for t in teachers}
    done: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        if name in done:
            return
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise KdlibError(f"teachers form a cycle ({cycle}); valid: each teacher distils from an earlier one or none")
        ref = by_name[name].teacher
        if ref is not None and ref.run is not None and ref.run in by_name:
            visit(ref.run, path + [name])
        done.append(name)

    for t in teachers:
        visit(t.name, [])
    return [by_name[n] for n in done]


SECTIONS = {f.name for f in dataclasses.fields(StudyParams) if f.init and not f.metadata.get("internal")}


def parse_study(data: Any, source: str = "<dict>") -> StudyParams:
    """Validate a study mapping (as loaded from YAML) into :class:`StudyParams`."""
    if data is None:
        raise KdlibError(f"{source}: the file is empty; valid: a mapping of sections such as seed, world, students")
    if not isinstance(data, Mapping):
        raise KdlibError(f"{source}: top level = {type(data).__name__} is not valid; valid: a mapping of sections")
    data = dict(data)
    try:
        world = world_params_from(data.pop("world", None), f"{source}: world")
        study = from_dict(StudyParams, data, f"{source}:")
    except KdlibError as exc:
        msg = str(exc)
        if not msg.startswith(source):
            msg = f"{source}: {msg}"
        raise KdlibError(msg) from None
    return dataclasses.replace(study, world=world, source=source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise KdlibError(
                    f"key {key!r} is written twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "valid: each key once per section"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Plain YAML data from ``path``: no tags, no duplicate keys; one line for any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KdlibError(f"{path}: not UTF-8 text; valid: a YAML text file") from None
    except OSError as exc:
        raise KdlibError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); valid: a readable YAML file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except KdlibError as exc:
        raise KdlibError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KdlibError(f"{path}: not valid YAML{at}; valid: plain YAML data (no tags)") from None


def load_study(path: str | os.PathLike) -> StudyParams:
    """Read and validate a study params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise KdlibError(f"params file {str(path)!r} does not exist; valid: a YAML file such as params/tiny.yaml")
    return parse_study(read_yaml(path), str(path))
