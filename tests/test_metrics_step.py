"""Every measure through the metrics step on a tiny trained study (params/tiny.yaml in tmp)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdlib.errors import KdlibError
from kdlib.layout import StudyFolder
from kdlib.params import parse_study
from kdlib.params.metrics import MEASURES
from kdlib.runs import steps

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"diffroar": {"ks": [0.5], "retrain": {"epochs": 1, "batch_size": 32}}}


def _study(tmp: Path, metrics: dict):
    params = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    params.update(seeds=[0], data_root=str(tmp / "data"), output_root=str(tmp / "outputs"), metrics=metrics)
    return parse_study(params, "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_metrics(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics-study")
    study = _study(tmp, METRICS)
    folder = StudyFolder.for_study(study)
    steps.world(study, folder)
    steps.train(study, folder, progress=False)
    steps.dissect(study, folder, progress=False, jobs=2)  # a tiny study would run in one process by default
    return study, folder, steps.metrics(study, folder, progress=False, jobs=2)


@pytest.mark.slow
def test_every_measure_runs_on_every_network_and_is_written(tiny_metrics):
    study, folder, frame = tiny_metrics
    written = pd.read_csv(folder.table("metrics"))
    assert list(written.columns[:6]) == ["network", "run", "seed", "role", "model", "measure"]
    assert {"setting", "score", "value", "direction", "images", "seconds", "cached"} <= set(written.columns)
    keys = [i.key for i in study.instances()]
    for measure in MEASURES:
        networks = set(written.network[written.measure == measure])
        assert networks == ({"scratch-s0", "ls-s0", "kd-s0"} if measure == "diffroar" else set(keys)), measure
    assert set(written.direction) <= {"higher", "lower", "none"}
    assert (written.images == 36).all() and (written.seconds > 0).all() and not written.cached.any()
    main = written[written.score.isin(["hard_accuracy", "auc", "mass_in_object", "activation_in_object", "entropy", "diffroar"])]
    assert main.value.map(math.isfinite).all()
    teacher = written[written.network == "teacher"]
    assert not teacher.score.isin(["cosine_to_reference", "similarity_correlation"]).any(), "no teacher compared with itself"
    kd = written[written.network == "kd-s0"]
    assert kd.score.isin(["cosine_to_reference", "similarity_correlation"]).sum() == 3  # two gradient methods + T=1
    assert kd.setting.str.startswith("layer3/").any(), "per-unit object-centricity read from the dissection"
    assert set(kd.setting[kd.measure == "five_band"]) == {"saliency", "input_x_gradient", "layer_gradcam[layer=layer3]"}
    assert set(kd.setting[kd.measure == "diffroar"]) == {"gradient/k=0.5", "gradient/mean", "random/k=0.5", "random/mean"}


@pytest.mark.slow
def test_rerun_recomputes_nothing_and_a_changed_measure_only_itself(tiny_metrics):
    study, folder, frame = tiny_metrics
    before = folder.table("metrics").read_text()
    retrained = sorted((folder.cache / "retrain").glob("*.pt"))
    assert retrained
    again = steps.metrics(study, folder, progress=False)
    assert again.cached.all()
    assert again.drop(columns="cached").equals(frame.drop(columns="cached"))
    assert sorted((folder.cache / "retrain").glob("*.pt")) == retrained
    changed = dataclasses.replace(study, metrics=parse_study({"metrics": {**METRICS, "five_band": {"soft_steps": 11, "soft_step": 0.02}}}).metrics)
    third = steps.metrics(changed, folder, progress=False)
    recomputed = set(third.measure[~third.cached])
    assert recomputed == {"five_band"}
    assert folder.table("metrics").read_text() != before


@pytest.mark.slow
def test_networks_are_chosen_by_key_or_run_name(tiny_metrics):
    study, folder, _ = tiny_metrics
    chosen = dataclasses.replace(study, metrics=parse_study(
        {"metrics": {"measures": ["class_similarity"], "networks": ["kd", "teacher"]}}).metrics)
    frame = steps.metrics(chosen, folder, progress=False)
    assert set(frame.network) == {"kd-s0", "teacher"} and set(frame.measure) == {"class_similarity"}
    bad = dataclasses.replace(study, metrics=parse_study({"metrics": {"networks": ["kd-s9"]}}).metrics)
    with pytest.raises(KdlibError, match=r"metrics.networks names 'kd-s9'; valid: .*kd-s0"):
        steps.metrics(bad, folder, progress=False)


def test_metrics_before_training_is_one_line(tmp_path):
    study = _study(tmp_path, {})
    with pytest.raises(KdlibError, match="is not trained"):
        steps.metrics(study, StudyFolder.for_study(study), progress=False)


def test_a_layer_a_network_lacks_is_one_line_before_any_work(tmp_path):
    study = _study(tmp_path, {"object_centricity": {"layers": ["layer4"]}})
    with pytest.raises(KdlibError, match=r"metrics.object_centricity reads layer 'layer4', which resnet14_w8 \(teacher\) lacks; valid: .*layer3"):
        steps.metrics(study, StudyFolder.for_study(study), progress=False)
    study = _study(tmp_path, {"five_band": {"methods": [{"name": "layer_gradcam", "layer": "layer9"}]}})
    with pytest.raises(KdlibError, match=r"metrics.five_band reads layer 'layer9'"):
        steps.metrics(study, StudyFolder.for_study(study), progress=False)


@pytest.mark.slow
def test_one_process_gives_what_two_workers_gave(tiny_metrics, tmp_path):
    """The dissections and every score are the same computed here (jobs=1) as in two worker processes."""
    import shutil

    import torch

    study, folder, frame = tiny_metrics
    copy = StudyFolder(tmp_path / "copy")
    shutil.copytree(folder.root, copy.root)
    for computed in ("dissect", "cache/metrics", "cache/retrain", "cache/diffroar"):
        shutil.rmtree(copy.root / computed)
    alone = steps.dissect(study, copy, progress=False, jobs=1)
    for name, result in steps.dissections(study, folder).items():
        for layer in result:
            for field in ("thresholds", "intersection", "activation_cat", "unit_area", "top_images"):
                assert torch.equal(getattr(alone[name][layer], field), getattr(result[layer], field)), (name, layer, field)
    here = steps.metrics(study, copy, progress=False, jobs=1)
    assert not here.cached.any()
    columns = [c for c in frame.columns if c not in ("seconds", "cached")]
    pd.testing.assert_frame_equal(here[columns], frame[columns])
