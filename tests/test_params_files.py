"""The shipped study files beyond default.yaml and tiny.yaml: valid, and in step with default.yaml."""

from dataclasses import replace
from pathlib import Path

import pytest

from kdlib.params import load_study
from kdlib.runs import steps

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = load_study(ROOT / "params" / "default.yaml")
CONTEXT = sorted((ROOT / "params" / "full_context").glob("*.yaml"))


def test_full_study_is_the_default_and_more_at_five_seeds():
    full = load_study(ROOT / "params" / "full.yaml")
    steps.check(full)
    assert full.train == DEFAULT.train and full.dissect == DEFAULT.dissect and full.world == DEFAULT.world
    assert full.student_seeds == [0, 1, 2, 3, 4]
    names = {r.name for r in full.students}
    assert {r.name for r in DEFAULT.students} <= names
    for method in ("at", "ft", "crd", "sskd", "fitnet"):
        assert {method, f"{method}_kd"} <= names, method
        alone, with_kd = full.run(method), full.run(f"{method}_kd")
        assert "kd" not in [t["name"] for t in alone.loss] and "kd" in [t["name"] for t in with_kd.loss]
    temperatures = sorted(t["temperature"] for r in full.students if r.teacher and r.teacher.run == "ls_teacher"
                          for t in r.loss if t["name"] == "kd")
    assert temperatures == [1.0, 2.0, 4.0, 8.0]
    assert len(full.teachers) == 3 and {c.claim for c in DEFAULT.report.claims} <= {c.claim for c in full.report.claims}


@pytest.mark.parametrize("path", CONTEXT, ids=lambda p: p.stem)
def test_context_sweep_is_the_default_study_on_another_world(path):
    study = load_study(path)
    value = float(path.stem.removeprefix("context_bias_"))
    assert study.world.context_bias == value != DEFAULT.world.context_bias
    assert replace(study.world, context_bias=DEFAULT.world.context_bias) == DEFAULT.world
    assert study.student_seeds == [0, 1, 2, 3, 4]
    assert (study.train, study.dissect, study.report, study.metrics) == (DEFAULT.train, DEFAULT.dissect, DEFAULT.report, DEFAULT.metrics)
    assert study.teachers == DEFAULT.teachers and study.students == DEFAULT.students


def test_the_sweep_covers_three_values_besides_the_default():
    assert [float(p.stem.removeprefix("context_bias_")) for p in CONTEXT] == [0.1, 0.7, 0.9]
