"""Dissection pictures (kdlib.viz) and the command line (python -m kdlib.dissect)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from dissect_helpers import ChannelUnits, SmallNet, load_small_checkpoint, random_broden, save_small_checkpoint
from kdlib.data.broden import BrodenDataset, BrodenWriter
from kdlib.dissect import DissectResult, dissect
from kdlib.errors import KdlibError
from kdlib.viz import detector_bar_chart, detector_table, best_iou_chart, save_unit_strips, unit_label, unit_masks, unit_strip
from kdlib.viz.dissect import OUTLINE


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """12x12 images with one bright 3x3 block (object "block") on a dark background."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("blocks") / "broden"
    w = BrodenWriter(root, ["object"], ["block"])
    for i in range(10):
        image = np.full((12, 12, 3), 20, np.uint8)
        seg = np.zeros((12, 12), np.int64)
        y, x = rng.integers(1, 8, size=2)
        image[y : y + 3, x : x + 3] = 240
        seg[y : y + 3, x : x + 3] = 1
        w.add(f"p/{i}", image, pixel={"object": [seg]}, split="probe")
    w.finish()
    ds = BrodenDataset(root)
    model = ChannelUnits(gains=[1.0, -1.0], biases=[0.0, 0.0], channels=[0, 0])
    return ds, dissect(model, ds, layers=["units"], quantile=0.1, examples=4, progress=False)["units"]


def test_unit_masks_outline_the_units_mask(blocks):
    ds, layer = blocks
    assert layer.iou[0, 1] == pytest.approx(1.0)
    strip = unit_masks(layer, 0, ds, n=3, size=12, gap=2)
    assert strip.size == (3 * 12 + 2 * 2, 12)
    pixels = np.asarray(strip)
    for j in range(3):
        tile = pixels[:, j * 14 : j * 14 + 12]
        index = int(layer.top_images[0, j])
        seg = ds[index]["pixel"]["object"][0].numpy() == 1
        yellow = (tile == OUTLINE).all(axis=2)
        assert yellow.sum() == 8 and not (yellow & ~seg).any()  # the block's border, nothing outside
        original = np.asarray(ds.load_image(index))
        centre = seg & ~yellow
        assert (tile[centre] == original[centre]).all()  # inside the mask: the image as it is
        assert (tile[~seg] < original[~seg]).all()  # outside: dimmed


def test_unit_strip_figure_and_label(blocks):
    ds, layer = blocks
    fig = unit_strip(layer, 0, ds, n=2)
    assert isinstance(fig, Figure)
    assert fig._suptitle.get_text() == unit_label(layer, 0) == "units unit 1: block (object), IoU 1.000"
    with pytest.raises(KdlibError, match="unit = 2"):
        unit_masks(layer, 2, ds)


def test_save_unit_strips_writes_netdissect_names(blocks, tmp_path):
    ds, layer = blocks
    paths = save_unit_strips(layer, ds, tmp_path / "image", size=24)
    assert [p.name for p in paths] == ["units-0001.jpg", "units-0002.jpg"]
    with Image.open(paths[0]) as im:
        assert im.size == (4 * 24 + 3 * 4, 24 + 18)


def test_detector_bar_chart_counts(tmp_path):
    probe = random_broden(tmp_path / "b", n=12)
    a = dissect(SmallNet(seed=1), probe, layers=["layer1"], quantile=0.05, progress=False)["layer1"]
    b = dissect(SmallNet(seed=2), probe, layers=["layer1"], quantile=0.05, progress=False)["layer1"]
    table = detector_table({"a": a, "b": b}, iou_threshold=0.005)
    assert list(table.columns) == ["name", "category", "detectors", "share"]
    assert table[table["name"] == "a"].set_index("category")["detectors"].to_dict() == a.detector_counts(0.005).to_dict()
    fig = detector_bar_chart({"a": a, "b": b}, iou_threshold=0.005)
    heights = sorted(p.get_height() for p in fig.axes[0].patches if p.get_width() > 0)
    assert sorted(heights)[-1] == table["detectors"].max()
    assert sum(heights) == table["detectors"].sum()
    assert isinstance(best_iou_chart({"a": a, "b": b}), Figure)
    with pytest.raises(KdlibError, match="LayerResult"):
        detector_bar_chart([a, b])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tiny_world):
    """The tiny concept world (tests/conftest.py), a generated world folder holding broden/."""
    return tiny_world


def test_cli_dissects_a_random_network(world, tmp_path, capsys):
    pytest.importorskip("kdlib.models")
    from kdlib.dissect.__main__ import main

    out = tmp_path / "out"
    common = ["--model", "resnet8", "--num-classes", "6", "--random-init", "--seed", "1", "--layers", "layer2", "layer3",
              "--data", str(world), "--no-progress", "--quantile", "0.01"]
    assert main(common + ["--out", str(out), "--examples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "layer3" in printed and "total" in printed
    for name in ("tally_layer2.csv", "tally_layer3.csv", "summary.csv", "bargraph.png", "dissect.json", "done"):
        assert (out / name).is_file(), name
    tally = pd.read_csv(out / "tally_layer3.csv")
    assert len(tally) == 64 and tally["unit"].min() == 1
    assert len(list((out / "image").glob("layer3-*.jpg"))) == 64
    info = json.loads((out / "dissect.json").read_text())
    assert info["source"] == {"model": "resnet8", "num_classes": 6, "random_init": True, "seed": 1}
    again = DissectResult.load(out)
    assert torch.equal(again["layer2"].thresholds, torch.from_numpy(np.load(out / "thresholds_layer2.npy")))
    # the same seed gives the same network, and so the same numbers
    assert main(common + ["--out", str(tmp_path / "out2"), "--strips", "none"]) == 0
    assert (pd.read_csv(tmp_path / "out2" / "tally_layer3.csv") == tally).all().all()


def test_cli_loads_a_checkpoint(world, tmp_path):
    checkpoint = pytest.importorskip("kdlib.models.checkpoint")
    from kdlib.dissect.__main__ import main
    from kdlib.models import build

    torch.manual_seed(0)
    net = build("resnet8", 6)
    checkpoint.save(tmp_path / "ckpt.pt", {"model": {"name": "resnet8", "num_classes": 6, "kwargs": {}}, "model_state": net.state_dict(), "epoch": 2})
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--layers", "layer3", "--data", str(world), "--out", str(out), "--no-progress", "--strips", "detectors"]) == 0
    info = json.loads((out / "dissect.json").read_text())
    assert info["source"]["model"] == "resnet8" and info["source"]["epoch"] == 2
    direct = dissect(net, BrodenDataset(world / "broden"), layers=["layer3"], progress=False)
    assert np.allclose(np.load(out / "thresholds_layer3.npy"), direct["layer3"].thresholds.numpy())


def test_cli_takes_any_checkpoint_loader(world, tmp_path):
    """--loader module:function (or main(load_checkpoint=...)) reads the checkpoint; kdlib.train is not needed."""
    from kdlib.dissect.__main__ import main

    net = save_small_checkpoint(tmp_path / "small.pt", seed=4, epoch=7)
    direct = dissect(net, BrodenDataset(world / "broden"), layers=["layer2"], quantile=0.02, progress=False)["layer2"]
    common = ["--checkpoint", str(tmp_path / "small.pt"), "--layers", "layer2", "--quantile", "0.02", "--data", str(world),
              "--no-progress", "--strips", "none"]
    assert main(common + ["--out", str(tmp_path / "a"), "--loader", "dissect_helpers:load_small_checkpoint"]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--feature-cache-mb", "0"], load_checkpoint=load_small_checkpoint) == 0
    for out in ("a", "b"):
        info = json.loads((tmp_path / out / "dissect.json").read_text())
        assert info["source"]["model"] == "smallnet" and info["source"]["epoch"] == 7
        assert np.array_equal(np.load(tmp_path / out / "thresholds_layer2.npy"), direct.thresholds.numpy())
        assert np.array_equal(np.load(tmp_path / out / "iou_layer2.npy"), direct.iou.numpy())


@pytest.mark.parametrize(
    "spec,match",
    [("no_separator", "not module:function"), ("kdlib_no_such_module:load", "cannot be imported"),
     ("dissect_helpers:no_such_function", "cannot be imported"), ("dissect_helpers:MEAN", "not callable")],
)
def test_cli_bad_loader_is_one_line(world, tmp_path, capsys, spec, match):
    from kdlib.dissect.__main__ import main

    save_small_checkpoint(tmp_path / "small.pt")
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", str(tmp_path / "small.pt"), "--loader", spec, "--data", str(world), "--out", str(tmp_path / "o"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--model", "resnet8", "--num-classes", "6"], "--random-init"),
        (["--model", "resnet8", "--random-init"], "--num-classes"),
        (["--model", "resnet8", "--num-classes", "6", "--random-init", "--layers", "nope"], "'nope' is not in"),
        (["--model", "resnet8", "--num-classes", "6", "--random-init", "--quantile", "2"], "quantile = 2.0"),
    ],
)
def test_cli_bad_input_is_one_line(world, tmp_path, capsys, argv, match):
    pytest.importorskip("kdlib.models")
    from kdlib.dissect.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv + ["--data", str(world), "--out", str(tmp_path / "o"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


def test_cli_refuses_a_folder_without_probe_set(tmp_path, capsys):
    from kdlib.dissect.__main__ import main

    with pytest.raises(SystemExit):
        main(["--model", "resnet8", "--num-classes", "6", "--random-init", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "holds no Broden probe set" in capsys.readouterr().err


def test_cli_refuses_an_output_folder_another_process_holds(world, tmp_path):
    """A second dissection into the same --out stops at once with one line naming the holder, writes
    nothing there, and the folder is usable once the holder is gone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kdlib.locks import folder_lock\n"
         "with folder_lock(sys.argv[1], 'dissection folder'):\n    print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = [sys.executable, "-m", "kdlib.dissect", "--model", "resnet8", "--num-classes", "6", "--random-init",
                "--layers", "layer3", "--data", str(world), "--no-progress", "--strips", "none", "--out", str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: dissection folder") and f"process {holder.pid}" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".lock"], "nothing written beside the holder's lock"
    finally:
        holder.kill()
        holder.wait()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (out / "done").is_file()
