"""What dissection is given: settings in one DissectParams, bounds on sizes, the memory estimate, the
decoded-label cache, the thread policy, DataLoader workers, and documented error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dissect_helpers import SmallNet, random_broden
from kdlib.data.broden import BrodenDataset, BrodenWriter
from kdlib.data.broden_labels import label_cache
from kdlib.dissect import DissectResult, dissect
from kdlib.dissect import budget
from kdlib.errors import KdlibError
from kdlib.params import DissectParams, from_dict

ROOT = Path(__file__).resolve().parents[1]
COUNTS = ("thresholds", "intersection", "activation_cat", "unit_area", "truth", "top_images", "top_values", "top_maps")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return random_broden(tmp_path_factory.mktemp("probe") / "broden", n=20)


def _same(a, b) -> None:
    for name in COUNTS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --------------------------------------------------------------------------------------------
# Settings in one place
# --------------------------------------------------------------------------------------------


def test_settings_and_keyword_overrides_are_the_same_run(probe):
    model = SmallNet(seed=1)
    settings = DissectParams(layers=["layer1"], quantile=0.02, batch_size=7, examples=3)
    a = dissect(model, probe, settings, progress=False)["layer1"]
    b = dissect(model, probe, layers=["layer1"], quantile=0.02, batch_size=7, examples=3, progress=False)["layer1"]
    c = dissect(model, probe, DissectParams(layers=["layer2"]), layers="layer1", quantile=0.02, batch_size=7, examples=3,
                progress=False)["layer1"]  # overrides replace fields of the settings given
    _same(a, b)
    _same(a, c)
    assert a.top_images.shape[1] == 3


def test_defaults_come_from_dissect_params_only(probe):
    """dissect() with nothing given runs DissectParams()'s defaults: its layers, quantile and examples."""
    from kdlib.dissect.__main__ import _parser, settings_from

    defaults = DissectParams()
    result = dissect(SmallNet(seed=1), probe, layers=["layer1", "layer2"], progress=False)  # the model lacks layer3/4
    assert result.meta["quantile"] == defaults.quantile and result["layer1"].iou_threshold == defaults.iou_threshold
    assert result["layer2"].top_images.shape[1] == defaults.examples
    args = _parser().parse_args(["--model", "m", "--data", "d", "--out", "o"])
    assert settings_from(args) == defaults  # the command line's defaults are the dataclass's


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"examples": -1}, r"dissect.examples = -1 is out of range; valid: >= 0"),
        ({"batch_size": 0}, r"dissect.batch_size = 0 is out of range"),
        ({"batch_size": 5000}, r"dissect.batch_size = 5000 is out of range; valid: >= 1 and <= 4096"),
        ({"image_size": 0}, r"dissect.image_size = 0 is out of range; valid: >= 8 and <= 1024"),
        ({"image_size": 100000}, r"dissect.image_size = 100000 is out of range"),
        ({"feature_cache_mb": 1e9}, r"dissect.feature_cache_mb = 1000000000.0 is out of range"),
        ({"layers": ["layer1", "layer1"]}, r"'layer1' is named twice"),
        ({"layers": []}, r"layers = \[\] is not valid"),
        ({"threads": 0}, r"dissect.threads = 0 is out of range"),
        ({"batch": 3}, r"dissect.batch is an unknown key"),
        ({"quantile": "0.005"}, r"dissect.quantile = '0.005' has the wrong type"),
    ],
)
def test_overrides_are_validated_by_dissect_params(probe, overrides, match):
    with pytest.raises(KdlibError, match=match) as info:
        dissect(SmallNet(), probe, progress=False, **overrides)
    assert "\n" not in str(info.value)


def test_settings_must_be_dissect_params(probe):
    with pytest.raises(KdlibError, match="is not DissectParams"):
        dissect(SmallNet(), probe, ["layer1"], progress=False)
    with pytest.raises(KdlibError, match="named twice"):
        from_dict(DissectParams, {"layers": ["a", "a"]}, "params.yaml: dissect")


@pytest.mark.parametrize("value,match", [("0", "--image-size: image_size = 0 is out of range; valid: >= 8 and <= 1024"),
                                         ("100000", "--image-size: image_size = 100000 is out of range")])
def test_cli_image_size_out_of_range_is_one_line(probe, tmp_path, capsys, value, match):
    from kdlib.dissect.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--model", "resnet8", "--num-classes", "3", "--random-init", "--data", str(probe.root),
              "--out", str(tmp_path / "o"), "--image-size", value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.strip().count("\n") == 0
    assert err.startswith("error: ") and match in err and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# Sizes estimated before allocating; probe images too small for a layer
# --------------------------------------------------------------------------------------------


def test_memory_is_estimated_before_allocating(probe, monkeypatch):
    """20 MiB free: enough to read the probe set's batches, not for the run (tally chunks alone take more)."""
    monkeypatch.setattr(budget, "free_bytes", lambda device: 20 * 2**20)
    seen = []
    model = SmallNet()
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    with pytest.raises(KdlibError, match=r"^dissection needs at least \d+ MiB on cpu \(tally counts: \d+ MiB\) but 20 MiB are free; valid: a smaller batch_size"):
        dissect(model, probe, layers=["layer1"], progress=False)
    assert seen == [1]  # only the one-image forward pass that gives the layers' shapes


def test_huge_stored_images_are_refused_before_decoding(probe, tmp_path, monkeypatch):
    """index.csv says 100000 x 100000 px: refused from the index, before any image is decoded."""
    import shutil

    root = tmp_path / "huge"
    shutil.copytree(probe.root, root)
    index = (root / "index.csv").read_text().splitlines()
    head = index[0].split(",")
    rows = [r.split(",") for r in index[1:]]
    for r in rows:
        r[head.index("ih")] = r[head.index("iw")] = "100000"
    (root / "index.csv").write_text("\n".join([index[0]] + [",".join(r) for r in rows]) + "\n")
    decoded = []
    monkeypatch.setattr(BrodenDataset, "load_image", lambda self, i: decoded.append(i))
    with pytest.raises(KdlibError, match=r"reading the probe set needs at least \d+\.\d GiB on cpu \(image batches: \d+\.\d GiB\)"):
        dissect(SmallNet(), BrodenDataset(root), layers=["layer1"], progress=False)
    assert decoded == []


def test_probe_images_too_small_for_the_layer(tmp_path):
    """4x4 images: a layer whose map has no pixel, or a model that cannot run on them at all, is one line
    naming the image, its index.csv row and its size."""
    from torch import nn

    w = BrodenWriter(tmp_path / "b", ["object"], ["disc"])
    for i in range(3):
        w.add(f"p/{i}", np.zeros((4, 4, 3), np.uint8), pixel={"object": [np.ones((4, 4), np.int64)]}, split="probe")
    w.finish()
    empty = nn.Sequential()
    empty.layer1 = nn.Conv2d(3, 2, 1)
    empty.layer2 = nn.AdaptiveAvgPool2d((0, 3))  # a map of 0 pixels
    with pytest.raises(KdlibError, match=r"^layer 'layer2' gives a map of 2 units at 0x3 on probe image p/0.png \(index.csv row 2\), 4x4 px; valid: probe images large enough"):
        dissect(empty, BrodenDataset(tmp_path / "b"), layers=["layer2"], progress=False)
    strided = nn.Sequential()
    strided.layer1 = nn.Conv2d(3, 2, 2, stride=2)
    strided.layer2 = nn.Conv2d(2, 2, 1, stride=2)
    strided.layer3 = nn.AvgPool2d(2)  # 1x1 input: cannot run
    with pytest.raises(KdlibError, match=r"^the model cannot run on probe image p/0.png \(index.csv row 2\), 4x4 px \(.*Output size is too small\)"):
        dissect(strided, BrodenDataset(tmp_path / "b"), layers=["layer2"], progress=False)


# --------------------------------------------------------------------------------------------
# Decoded labels cached once per probe set
# --------------------------------------------------------------------------------------------


def test_labels_are_decoded_once_per_probe_set(probe, tmp_path, monkeypatch):
    decoded = []
    original = BrodenDataset.load_segmentation
    monkeypatch.setattr(BrodenDataset, "load_segmentation", lambda self, i, cat: decoded.append(i) or original(self, i, cat))
    first = dissect(SmallNet(seed=1), probe, layers=["layer1"], cache_dir=tmp_path / "cache", progress=False)
    assert sorted(set(decoded)) == [i for i, r in enumerate(probe.rows) if r.pixel]  # every image with pixel labels
    (folder,) = (tmp_path / "cache" / "labels").glob("labels-*")  # where the study's cache/ keeps them
    decoded.clear()
    second = dissect(SmallNet(seed=2), probe, layers=["layer1"], cache_dir=tmp_path / "cache", progress=False)
    assert decoded == []  # the second network reads the cache
    assert torch.equal(first["layer1"].truth, second["layer1"].truth)
    assert json.loads((folder / "key.json").read_text())["fingerprint"] == probe.fingerprint()


def test_label_cache_is_rebuilt_when_the_set_changes(probe, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(probe.root, root)
    before = label_cache(BrodenDataset(root), tmp_path / "labels", progress=False)
    # change one segmentation (a file of another size): a new fingerprint, a new cache
    seg = next((root / "images" / "probe").glob("*_object.png"))
    from kdlib.data.broden_format import encode_segmentation

    encode_segmentation(np.full((16, 16), 1, np.int64)).save(seg)
    changed = BrodenDataset(root)
    after = label_cache(changed, tmp_path / "labels", progress=False)
    assert after.folder != before.folder and after.key["fingerprint"] == changed.fingerprint()
    i = next(i for i, r in enumerate(changed.rows) if any(seg.name in f for fs in r.pixel.values() for f in fs))
    assert (after.image(i).runs[:, 2] == 1).any()


def test_a_half_built_or_edited_label_cache_is_rebuilt(probe, tmp_path):
    good = label_cache(probe, tmp_path, progress=False)
    key = json.loads((good.folder / "key.json").read_text())
    (good.folder / "key.json").write_text(json.dumps({**key, "fingerprint": "something else"}))
    again = label_cache(probe, tmp_path, progress=False)
    assert again.key == key  # rebuilt, not trusted
    (again.folder / "key.json").unlink()  # as an interrupted build that got as far as the rename would not leave it
    assert label_cache(probe, tmp_path, progress=False).key == key
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left behind


# --------------------------------------------------------------------------------------------
# Threads and workers
# --------------------------------------------------------------------------------------------


def test_thread_policy_sets_and_restores_torch_threads(probe):
    model = SmallNet(seed=1)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    dissect(model, probe, layers=["layer1"], progress=False)  # default: 1 thread
    assert set(seen) == {1} and torch.get_num_threads() == before
    seen.clear()
    dissect(model, probe, layers=["layer1"], threads=2, progress=False)
    assert set(seen) == {2} and torch.get_num_threads() == before
    seen.clear()
    dissect(model, probe, layers=["layer1"], threads=None, progress=False)
    assert set(seen) == {before}


@pytest.mark.slow
def test_dataloader_workers_give_the_same_answer(probe, tmp_path):
    model = SmallNet(seed=3)
    for mb in (256, 0):  # activations kept, or the model run again in pass 2
        none = dissect(model, probe, layers=["layer1", "layer2"], num_workers=0, feature_cache_mb=mb, progress=False)
        two = dissect(model, probe, layers=["layer1", "layer2"], num_workers=2, feature_cache_mb=mb, progress=False,
                      label_cache_dir=tmp_path / f"labels{mb}")  # the label cache built by 2 workers too
        for layer in ("layer1", "layer2"):
            _same(none[layer], two[layer])


# --------------------------------------------------------------------------------------------
# Documented error paths
# --------------------------------------------------------------------------------------------


def test_mixed_segmentation_sizes_in_one_batch_are_refused(tmp_path):
    w = BrodenWriter(tmp_path / "b", ["object"], ["disc"])
    for i, size in enumerate((8, 8, 6)):
        w.add(f"p/{i}", np.zeros((8, 8, 3), np.uint8), pixel={"object": [np.ones((size, size), np.int64)]}, split="probe")
    w.finish()
    with pytest.raises(KdlibError, match=r"segmentation sizes \[\(6, 6\), \(8, 8\)\] in one batch; valid: one size per batch"):
        dissect(SmallNet(), BrodenDataset(tmp_path / "b"), layers=["layer1"], batch_size=3, progress=False)
    ok = dissect(SmallNet(), BrodenDataset(tmp_path / "b"), layers=["layer1"], batch_size=2, progress=False)
    assert ok["layer1"].truth[1] == 8 * 8 * 2 + 6 * 6  # one size per batch is fine


def test_result_load_refuses_the_wrong_folder(probe, tmp_path):
    with pytest.raises(KdlibError, match="no dissection in .*valid: a folder written by DissectResult.save"):
        DissectResult.load(tmp_path)
    dissect(SmallNet(), probe, layers=["layer1", "layer2"], progress=False).save(tmp_path / "out")
    (tmp_path / "out" / "dissect_layer2.pt").unlink()
    with pytest.raises(KdlibError, match="missing .*dissect_layer2.pt; valid: a complete folder"):
        DissectResult.load(tmp_path / "out")


def test_a_layer_named_twice_is_refused(probe):
    from kdlib.dissect import capture_layers

    with pytest.raises(KdlibError, match="'layer1' is named twice"):
        dissect(SmallNet(), probe, layers=["layer1", "layer1"], progress=False)
    with pytest.raises(KdlibError, match="'layer1' is named twice"):
        capture_layers(SmallNet(), ["layer1", "layer2", "layer1"])
