"""The concept world generator: determinism, refusals, atomicity, label statistics, hierarchy."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdlib import atomic
from kdlib.data import world as world_mod
from kdlib.data.concepts import CATEGORIES, build_ontology
from kdlib.data.imagefolder import load_split
from kdlib.params import PROFILES
from kdlib.data.world import content_hash, generate, read_manifest
from kdlib.errors import KdlibError

TINY = PROFILES["tiny"]


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path, tiny_world):
    again = generate(TINY, tmp_path / "again", seed=0, workers=2)
    assert content_hash(again) == content_hash(tiny_world) == read_manifest(tiny_world)["content_sha256"]
    assert (again / "manifest.json").read_bytes() == (tiny_world / "manifest.json").read_bytes()


def test_other_seed_gives_other_images(tmp_path, tiny_world):
    other = generate(TINY, tmp_path / "other", seed=1, workers=1)
    assert content_hash(other) != content_hash(tiny_world)


def test_second_run_with_same_params_is_a_no_op(tmp_path):
    out = generate(TINY, tmp_path / "w", seed=0, workers=1)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    generate(TINY, out, seed=0, workers=1)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_other_params_refuse_to_overwrite_unless_forced(tmp_path):
    out = generate(TINY, tmp_path / "w", seed=0, workers=1)
    before = content_hash(out)
    with pytest.raises(KdlibError, match="holds another world.*--force"):
        generate(replace(TINY, context_bias=0.9), out, seed=0, workers=1)
    with pytest.raises(KdlibError, match="holds another world"):
        generate(TINY, out, seed=3, workers=1)
    assert content_hash(out) == before
    generate(TINY, out, seed=3, workers=1, force=True)
    assert read_manifest(out)["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if atomic.is_temporary(p) or p.name.endswith(".old")], "no temporary folder left behind"


def test_folder_holding_other_data_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    with pytest.raises(KdlibError, match="holds other data"):
        generate(TINY, tmp_path / "w", seed=0, workers=1)
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = world_mod.run_job
    calls = {"n": 0}

    def dying(job, **kw):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real(job, **kw)

    monkeypatch.setattr(world_mod, "run_job", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(TINY, tmp_path / "w", seed=0, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == [".w.lock"], "only the (released) lock file: no partial world"


def test_cli_bad_profile_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kdlib.data.world", "--profile", "huge", "--out", str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --profile 'huge' is not a profile; valid: default, tiny"]
    assert not (tmp_path / "w").exists()


def test_cli_writes_then_reports_up_to_date(tmp_path):
    cmd = [sys.executable, "-m", "kdlib.data.world", "--profile", "tiny", "--out", str(tmp_path / "w"), "--workers", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "wrote world" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "up to date" in second.stdout


def test_imagefolder_splits_load_with_torchvision(tiny_world):
    classes = json.loads((tiny_world / "classes.json").read_text())["classes"]
    manifest = read_manifest(tiny_world)
    for split in ("train", "val", "test"):
        ds = load_split(tiny_world, split)
        assert ds.classes == [c["name"] for c in classes]
        assert ds.class_to_idx == {c["name"]: c["index"] for c in classes}
        assert len(ds) == manifest["counts"][split]
        image, label = ds[0]
        assert image.size == (TINY.image_size, TINY.image_size)


def test_every_image_has_an_object_mask_at_the_same_path(tiny_world):
    from PIL import Image

    for split in ("train", "val", "test"):
        ds = load_split(tiny_world, split)
        seen = set()
        for path, _ in ds.samples:
            rel = Path(path).relative_to(tiny_world / "imagefolder")
            mask = np.asarray(Image.open(tiny_world / "masks" / rel))
            assert mask.shape == (TINY.image_size, TINY.image_size)
            assert set(np.unique(mask)) <= {0, 1, 2}
            seen |= set(np.unique(mask).tolist())
        assert {0, 1, 2} <= seen, "background, object and distinguishing part all occur"


def test_label_noise_only_in_train_and_at_its_rate(tiny_world):
    rec = {s: pd.read_csv(tiny_world / "records" / f"{s}.csv") for s in ("train", "val", "test")}
    assert (rec["val"].label == rec["val"].true_class).all()
    assert (rec["test"].label == rec["test"].true_class).all()
    big = replace(TINY, label_noise=0.3, probe_images=8)
    onto = build_ontology(big, 0)
    jobs = world_mod.jobs_for(onto, big, 0)["train"]
    flips = 0
    for job in jobs:
        if job.index % big.train_per_class == 0:
            continue
        r = np.random.default_rng([0, 0, job.index, 1])
        flips += r.random() < big.label_noise
    assert 0.15 < flips / len(jobs) < 0.45


def test_ontology_siblings_share_shape_and_differ_in_every_own_attribute():
    params = PROFILES["default"]
    onto = build_ontology(params, 0)
    assert len(onto.classes) == params.superclasses * params.subclasses >= 20
    assert len(onto.labels) >= 40
    assert set(onto.label_category) == set(CATEGORIES)
    for c in onto.classes:
        sibs = [onto.classes[s] for s in onto.siblings(c.index)]
        assert len(sibs) == params.subclasses - 1
        for s in sibs:
            assert s.shape == c.shape
            for attr in ("part", "texture", "material", "colour"):
                assert getattr(s, attr) != getattr(c, attr)
    shapes = {c.superclass: c.shape for c in onto.classes}
    assert len(set(shapes.values())) == params.superclasses


# Bounds stated in the README ("The concept world: label statistics"); chosen from Broden's design
# and the IoU arithmetic (a unit's mask covers q = 0.5% of probe pixels, so a concept covering more
# than q / 0.04 = 12.5% can never reach IoU 0.04), not from any training result.
def test_label_statistics_are_broden_like(default_probe_world):
    stats = pd.read_csv(default_probe_world / "label_stats.csv").set_index("category")
    assert list(stats.index) == list(CATEGORIES)
    assert stats.concepts.sum() >= 40
    assert (stats.concepts >= 5).all()
    assert stats.loc["scene", "concepts"] >= 24
    assert stats.loc["scene", "frequency_max"] <= 0.06, "every scene is rare"
    pixel_cats = ["object", "part", "material", "texture"]
    assert (stats.loc[pixel_cats, "coverage_max"] <= 0.125).all(), "every concept can reach IoU 0.04"
    assert (stats.loc[pixel_cats, "coverage_mean"] <= 0.05).all()
    assert stats.loc["part", "coverage_mean"] <= 0.01
    assert stats.loc["color", "coverage_mean"] <= 0.1 and stats.loc["color", "coverage_max"] <= 0.25
    assert (stats.frequency_min >= 0.005).all(), "every concept has examples"


def test_label_stats_match_label_csv(default_probe_world):
    labels = pd.read_csv(default_probe_world / "broden" / "label.csv")
    stats = pd.read_csv(default_probe_world / "label_stats.csv").set_index("category")
    n = read_manifest(default_probe_world)["counts"]["probe"]
    labels["cat"] = labels.category.str.extract(r"^([a-z]+)\(")[0]
    for cat, group in labels[labels.frequency > 0].groupby("cat"):
        assert stats.loc[cat, "concepts"] == len(group)
        assert stats.loc[cat, "coverage_mean"] == pytest.approx((group.coverage / n).mean(), abs=1e-5)


def test_no_single_cheap_cue_gives_the_class(default_probe_world):
    rec = pd.read_csv(default_probe_world / "records" / "probe.csv")
    params = PROFILES["default"]

    def single_cue_accuracy(col):
        table = pd.crosstab(rec[col], rec.true_class)
        return table.max(axis=1).sum() / len(rec)

    assert single_cue_accuracy("colour") < 0.3
    assert single_cue_accuracy("material") < 0.3
    assert single_cue_accuracy("texture") < 0.4
    assert single_cue_accuracy("part") < 0.4
    assert single_cue_accuracy("scene") < params.context_bias + 0.15


class _SmallCNN(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(24, 48, 3, padding=1), torch.nn.BatchNorm2d(48), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(48, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.f(x)


@pytest.mark.slow
def test_hierarchy_is_real_a_classifier_confuses_siblings_more_than_cousins(tmp_path):
    """Train a small CNN on pixels; its errors must fall mostly between siblings (same shape).

    If the world's classes were equally similar, errors would spread evenly over the 8 other
    classes (sibling and cousin rates per pair equal); the test asks for at least twice as many."""
    params = replace(
        PROFILES["default"], superclasses=3, subclasses=3, train_per_class=300, val_per_class=1,
        test_per_class=60, probe_images=8, label_noise=0.0,
    )  # fmt: skip
    world = generate(params, tmp_path / "w", seed=0)
    from kdlib.data.transforms import eval_transform

    torch.manual_seed(0)
    train = load_split(world, "train", eval_transform())
    test = load_split(world, "test", eval_transform())
    xs = torch.stack([train[i][0] for i in range(len(train))])
    ys = torch.tensor(train.targets)
    model = _SmallCNN(9)
    epochs, batch = 8, 64
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * ((len(xs) + batch - 1) // batch))
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.stack([test[i][0] for i in range(len(test))])).argmax(1)
    truth = torch.tensor(test.targets)
    sup = truth // 3
    wrong = pred != truth
    sibling_errors = (wrong & (pred // 3 == sup)).sum().item()
    cousin_errors = (wrong & (pred // 3 != sup)).sum().item()
    # per ordered pair: each class has 2 siblings and 6 cousins
    sibling_rate = sibling_errors / (len(truth) * 2)
    cousin_rate = cousin_errors / (len(truth) * 6)
    accuracy = (~wrong).float().mean().item()
    assert accuracy > 0.5, f"the classifier learned something ({accuracy:.2f})"
    assert sibling_rate > 2 * cousin_rate, (sibling_rate, cousin_rate)


def test_attribute_ceiling_bounds_the_task(tmp_path, default_probe_world):
    from kdlib.data.ceiling import attribute_ceiling

    base = replace(TINY, train_per_class=1, val_per_class=1, test_per_class=150, probe_images=8, scenes=24)
    exact = generate(replace(base, attribute_fidelity=1.0, colour_fidelity=1.0), tmp_path / "exact", seed=0)
    assert attribute_ceiling(exact) == 1.0, "own attributes always shown: the class is certain"
    # own attribute with probability 1/n, each sibling's with (1 - 1/n)/(n - 1) = 1/n: attributes say
    # nothing, colour and scene are uniform; only the shape informs: 1 / subclasses, up to sampling noise
    uninformative = dict(attribute_fidelity=1 / TINY.subclasses, colour_fidelity=0.0, context_bias=0.0)
    blind = generate(replace(base, **uninformative), tmp_path / "blind", seed=0)
    assert abs(attribute_ceiling(blind) - 1 / TINY.subclasses) < 0.1
    assert 0.75 < attribute_ceiling(default_probe_world, "probe") < 0.97, "the default task does not saturate"
