"""Shared fixtures: generated worlds are made once per test session, in a temporary folder."""

from __future__ import annotations

import os

import pytest

from kdlib.params import PROFILES
from kdlib.data.world import generate

# Tests run on 2 cores next to each other; keep torch to one thread per process unless asked.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny profile's world (seed 0): 6 classes, 24 px, 48 probe images. Read-only for tests."""
    return generate(PROFILES["tiny"], tmp_path_factory.mktemp("worlds") / "tiny", seed=0, workers=1)


@pytest.fixture(scope="session")
def default_probe_world(tmp_path_factory):
    """The default profile's concept world with the full probe set and the full test split, but one image
    per class in train and val: what label statistics, the attribute ceiling and single cues are computed
    from, in seconds instead of the whole world. Its probe set and test split are bit for bit the default
    world's (each image draws from its own ``(seed, split, index)`` generator)."""
    from dataclasses import replace

    params = replace(PROFILES["default"], train_per_class=1, val_per_class=1)
    return generate(params, tmp_path_factory.mktemp("worlds") / "default-probe", seed=0)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_world):
    """A 4-stage teacher (resnet18_w8) trained 2 epochs on the tiny world, once per test session: its
    checkpoint path. Read-only for tests."""
    from train_helpers import trained_teacher

    return trained_teacher(tmp_path_factory.getbasetemp() / "shared-teacher", tiny_world)


@pytest.fixture(scope="session")
def tiny_dissected(tmp_path_factory):
    """params/tiny.yaml at one seed, trained and dissected in a temporary folder (what the unit browser
    notebook reads): ``(params file, run folder)``."""
    from kdlib.layout import StudyFolder
    from kdlib.params import load_study
    from kdlib.runs import steps

    from study_helpers import tiny_params

    path = tiny_params(tmp_path_factory.mktemp("tiny-dissected"), seeds=[0])
    study = load_study(path)
    folder = StudyFolder.for_study(study)
    steps.world(study, folder)
    steps.train(study, folder, progress=False)
    steps.dissect(study, folder, progress=False)
    return path, folder.root
