"""Params: plain YAML validated into dataclasses, with one-line errors naming key, value and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlib.errors import KdlibError
from kdlib.params import StudyParams, load_study, parse_study, to_dict

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS.glob("*.yaml")))
def test_shipped_params_files_validate(name):
    study = load_study(PARAMS / name)
    assert isinstance(study, StudyParams)
    assert study.source.endswith(name)


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS.glob("*.yaml")))
def test_shipped_params_name_real_models_losses_and_layers(name):
    from kdlib.train.check import check_study

    check_study(load_study(PARAMS / name))  # raises on an unknown model, loss option, layer or teacher


def test_tiny_and_default_exist():
    assert (PARAMS / "tiny.yaml").is_file() and (PARAMS / "default.yaml").is_file()
    assert load_study(PARAMS / "tiny.yaml").world.profile == "tiny"
    assert load_study(PARAMS / "default.yaml").world.profile == "default"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sed": 1}, "x.yaml: sed is an unknown key; valid keys: "),
        ({"seed": -1}, "x.yaml: seed = -1 is out of range; valid: >= 0"),
        ({"seed": "one"}, "x.yaml: seed = 'one' has the wrong type; valid: an integer"),
        ({"seed": True}, "x.yaml: seed = True has the wrong type; valid: an integer"),
        ({"train": {"optimizer": {"lr": 0}}}, "x.yaml: train.optimizer.lr = 0.0 is out of range; valid: > 0.0"),
        ({"train": {"epochs": 2.5}}, "x.yaml: train.epochs = 2.5 has the wrong type; valid: an integer"),
        ({"world": {"profile": "huge"}}, "x.yaml: world.profile = 'huge' is not a profile; valid: default, tiny"),
        ({"world": {"context_bias": 1.5}}, "x.yaml: world.context_bias = 1.5 is out of range; valid: >= 0.0 and <= 1.0"),
        ({"world": {"colour": "red"}}, "x.yaml: world.colour is an unknown key; valid keys: "),
        ({"dissect": {"quantile": 1.0}}, "x.yaml: dissect.quantile = 1.0 is out of range; valid: > 0.0 and < 1.0"),
        ({"dissect": {"layers": "layer4"}}, "x.yaml: dissect.layers = 'layer4' has the wrong type; valid: a list of a string"),
        ({"teachers": [{"name": "t"}]}, "x.yaml: teachers[0].model is missing; it is required (a string)"),
        ({"teachers": [{"name": "t", "model": "m", "loss": []}]}, "x.yaml: teachers[0].loss = [] is not valid"),
        (
            {"teachers": [{"name": "t", "model": "m"}], "students": [{"name": "s", "model": "m", "teacher": {"run": "x"}}]},
            "x.yaml: students.s.teacher.run = 'x' names no teacher; valid: t",
        ),
        ([1, 2], "x.yaml: top level = list is not valid; valid: a mapping of sections"),
    ],
)
def test_bad_values_give_one_line(data, message):
    with pytest.raises(KdlibError) as e:
        parse_study(data, "x.yaml")
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_world_profile_then_overrides():
    study = parse_study({"world": {"profile": "tiny", "context_bias": 0.9}}, "x.yaml")
    assert study.world.profile == "tiny" and study.world.context_bias == 0.9
    assert study.world.image_size == 24  # from the tiny profile


def test_run_train_overrides_merge_and_validate():
    study = parse_study({"train": {"epochs": 5, "schedule": {"milestones": [2]}},
                         "teachers": [{"name": "t", "model": "m", "train": {"batch_size": 7}}]}, "x.yaml")
    merged = study.train_for(study.teachers[0])
    assert (merged.epochs, merged.batch_size) == (5, 7)
    bad = parse_study({"teachers": [{"name": "t", "model": "m", "train": {"bach_size": 7}}]}, "x.yaml")
    with pytest.raises(KdlibError, match="t.train.bach_size is an unknown key"):
        bad.train_for(bad.teachers[0])


def test_world_dir_names_profile_seed_and_overrides():
    assert parse_study({"world": {"profile": "tiny"}, "seed": 3}).world_dir().name == "world-tiny-s3"
    assert parse_study({"world": {"profile": "tiny", "seed": 1}, "seed": 3}).world_dir().name == "world-tiny-s1"
    custom = parse_study({"world": {"profile": "tiny", "label_noise": 0.2}}).world_dir().name
    assert custom.startswith("world-tiny-s0-") and len(custom) == len("world-tiny-s0-") + 8


def test_round_trip_through_plain_data():
    study = load_study(PARAMS / "tiny.yaml")
    again = parse_study(to_dict(study) | {"world": to_dict(study.world)}, study.source)
    assert to_dict(again) == to_dict(study)


def test_yaml_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(KdlibError, match="evil.yaml: not valid YAML at line 1"):
        load_study(path)


def test_missing_file(tmp_path):
    with pytest.raises(KdlibError, match="params file .*nope.yaml' does not exist"):
        load_study(tmp_path / "nope.yaml")
