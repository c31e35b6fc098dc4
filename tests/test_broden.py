"""The Broden reader and writer: exact round trips, the generated probe set, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kdlib.data import world as world_mod
from kdlib.data.broden import BrodenDataset, BrodenWriter, collate_broden, decode_segmentation, encode_segmentation
from kdlib.data.concepts import CATEGORIES, build_ontology
from kdlib.params import PROFILES
from kdlib.data.transforms import MEAN, STD
from kdlib.errors import KdlibError


def _hand_made(root, n=5, seed=0):
    """Random pixel labels (two layers of part), image-level scenes (some images with two)."""
    rng = np.random.default_rng(seed)
    labels = ["red-c", "blue-c", "disc", "sky", "cap", "eye", "beach-s", "forest-s", "street-s"]
    w = BrodenWriter(root, ["color", "object", "part", "scene"], labels)
    truth = []
    for i in range(n):
        image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        color = rng.choice([0, 1, 2], size=(6, 5))
        obj = rng.choice([0, 3, 4], size=(6, 5))
        part1 = rng.choice([0, 5], size=(6, 5))
        part2 = rng.choice([0, 6], size=(6, 5))
        scenes = [7, 9] if i % 2 else [8]
        w.add(f"img/{i:03d}", image, {"color": [color], "object": [obj], "part": [part1, part2]}, {"scene": scenes}, split="probe")
        truth.append((image, {"color": [color], "object": [obj], "part": [part1, part2]}, scenes))
    stats = w.finish()
    return truth, stats


def test_round_trip_every_category_multi_layer_and_image_level(tmp_path):
    truth, _ = _hand_made(tmp_path)
    ds = BrodenDataset(tmp_path, normalize=False)
    assert ds.categories == ["color", "object", "part", "scene"]
    assert len(ds) == len(truth)
    for i, (image, pixel, scenes) in enumerate(truth):
        item = ds[i]
        assert torch.equal((item["image"] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(image))
        for cat, layers in pixel.items():
            assert torch.equal(item["pixel"][cat], torch.from_numpy(np.stack(layers)).long())
        assert item["scalar"]["scene"].tolist() == scenes
        assert "scene" not in item["pixel"] and "part" not in item["scalar"]


def test_tables_frequency_coverage_and_primary_category(tmp_path):
    truth, _ = _hand_made(tmp_path)
    ds = BrodenDataset(tmp_path)
    labels = ds.labels
    # frequency: images where the label appears; coverage: summed share of each image covered
    disc = [(p["object"][0] == 3) for _, p, _ in truth]
    assert int(labels.loc[3, "frequency"]) == sum(m.any() for m in disc)
    assert float(labels.loc[3, "coverage"]) == pytest.approx(sum(m.mean() for m in disc), abs=1e-6)
    assert labels.loc[8, "category"] == "scene(3)"  # forest-s: images 0, 2 and 4
    assert int(labels.loc[7, "frequency"]) == 2 and float(labels.loc[7, "coverage"]) == pytest.approx(2.0)
    assert ds.label_names[3] == "disc" and ds.label_names[0] == "-"
    assert [ds.category_of(n) for n in (1, 3, 5, 6, 7)] == ["color", "object", "part", "part", "scene"]
    codes = ds.category_codes["part"]
    assert codes.number.tolist() == [5, 6] and codes.code.tolist() == [1, 2]


def test_normalisation_is_the_models(tmp_path):
    _hand_made(tmp_path)
    raw = BrodenDataset(tmp_path, normalize=False)[0]["image"]
    norm = BrodenDataset(tmp_path)[0]["image"]
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(norm, expected, atol=1e-6)


def test_resize_only_when_asked(tmp_path):
    _hand_made(tmp_path)
    assert BrodenDataset(tmp_path)[0]["image"].shape == (3, 12, 10)
    assert BrodenDataset(tmp_path, image_size=16)[0]["image"].shape == (3, 16, 16)


def test_category_subset_and_collate_padding(tmp_path):
    _hand_made(tmp_path)
    ds = BrodenDataset(tmp_path, categories=["part", "scene"])
    assert ds.categories == ["part", "scene"]
    batch = collate_broden([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 12, 10)
    assert batch["pixel"].shape == (2, 2, 6, 5)
    assert batch["scalar"].tolist() == [[8, 0], [7, 9]]
    assert batch["index"].tolist() == [0, 1]


def test_segmentation_encoding_uses_red_plus_256_green():
    labels = np.array([[0, 1, 255], [256, 257, 1234]])
    img = encode_segmentation(labels)
    arr = np.asarray(img)
    assert arr[1, 2, 0] == 1234 % 256 and arr[1, 2, 1] == 1234 // 256 and arr[..., 2].max() == 0
    assert np.array_equal(decode_segmentation(img), labels)


def test_generated_probe_round_trip_equals_the_drawn_layers(tiny_world):
    """What the generator drew is exactly what BrodenDataset loads, category by category."""
    ds = BrodenDataset(tiny_world / "broden")
    params = PROFILES["tiny"]
    onto = build_ontology(params, 0)
    jobs = world_mod.jobs_for(onto, params, 0)["probe"]
    for i in (0, 7, len(ds) - 1):
        drawn = world_mod.draw(onto, params, jobs[i].cls, world_mod._rng(0, "probe", i))
        item = ds[i]
        assert torch.equal(item["pixel"]["color"][0], torch.from_numpy(drawn.colour + 1))
        for cat in ("object", "part", "material", "texture"):
            if drawn.layers[cat].any():
                assert torch.equal(item["pixel"][cat][0], torch.from_numpy(drawn.layers[cat]))
            else:
                assert cat not in item["pixel"]
        assert ds.label_names[int(item["scalar"]["scene"][0])] == drawn.record["scene"]
        stored = np.asarray(ds.load_image(i))
        assert np.array_equal(stored, drawn.image)


def test_generated_probe_labels_belong_to_their_categories(tiny_world):
    ds = BrodenDataset(tiny_world / "broden")
    assert ds.categories == list(CATEGORIES)
    batch = collate_broden([ds[i] for i in range(8)])
    present = set(batch["pixel"].unique().tolist()) - {0}
    assert present and all(ds.category_of(n) in {"color", "object", "part", "material", "texture"} for n in present)
    assert all(ds.category_of(int(n)) == "scene" for n in batch["scalar"].flatten() if n)


def test_fingerprint_changes_with_data_not_with_location(tmp_path):
    _hand_made(tmp_path / "a")
    _hand_made(tmp_path / "b")
    _hand_made(tmp_path / "c", seed=1)
    fa, fb, fc = (BrodenDataset(tmp_path / x).fingerprint() for x in "abc")
    assert fa == fb != fc
    assert BrodenDataset(tmp_path / "a", categories=["part"]).fingerprint() != fa


# -- bad input: one line naming the file or value -----------------------------------------


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_index_csv(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "index.csv").unlink()
    with pytest.raises(KdlibError) as e:
        BrodenDataset(tmp_path)
    assert "index.csv" in _one_line(e)


def test_missing_category_csv(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "c_part.csv").unlink()
    with pytest.raises(KdlibError) as e:
        BrodenDataset(tmp_path)
    assert "c_part.csv" in _one_line(e)
    assert BrodenDataset(tmp_path, categories=["color"]).categories == ["color"]


def test_missing_segmentation_file(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "images" / "img" / "002_part_1.png").unlink()
    with pytest.raises(KdlibError) as e:
        BrodenDataset(tmp_path)
    assert "002_part_1.png" in _one_line(e)


def test_segmentation_with_unknown_label(tmp_path):
    _hand_made(tmp_path)
    bad = np.zeros((6, 5), int)
    bad[2, 2] = 40
    encode_segmentation(bad).save(tmp_path / "images" / "img" / "001_object.png")
    ds = BrodenDataset(tmp_path)
    with pytest.raises(KdlibError) as e:
        ds[1]
    msg = _one_line(e)
    assert "001_object.png" in msg and "label 40" in msg and "label.csv" in msg


def test_image_level_label_not_in_label_csv(tmp_path):
    _hand_made(tmp_path)
    index = pd.read_csv(tmp_path / "index.csv", dtype=str, keep_default_na=False)
    index.loc[0, "scene"] = "77"
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(KdlibError) as e:
        BrodenDataset(tmp_path)
    assert "scene label 77" in _one_line(e)


def test_corrupt_image(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "images" / "img" / "003.png").write_bytes(b"not a png at all")
    ds = BrodenDataset(tmp_path)
    with pytest.raises(KdlibError) as e:
        ds[3]
    assert "corrupt image" in _one_line(e) and "003.png" in str(e.value)


def test_unknown_category_and_missing_folder(tmp_path):
    _hand_made(tmp_path)
    with pytest.raises(KdlibError, match="category 'shape' is not in .*valid: color, object, part, scene"):
        BrodenDataset(tmp_path, categories=["shape"])
    with pytest.raises(KdlibError, match="does not exist"):
        BrodenDataset(tmp_path / "nope")


def test_segmentation_of_wrong_size(tmp_path):
    _hand_made(tmp_path)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "images" / "img" / "000_color.png")
    with pytest.raises(KdlibError, match="000_color.png is 3x3; valid: 6x5"):
        BrodenDataset(tmp_path)[0]


def test_category_with_no_labels_reads_as_empty(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "c_part.csv").write_text("code,number,name,frequency,coverage\n")
    ds = BrodenDataset(tmp_path)
    assert ds.category_codes["part"].empty
    assert ds.category_of(5) is None  # "cap" is in no loaded category any more


def test_fingerprint_names_a_missing_file(tmp_path):
    _hand_made(tmp_path)
    ds = BrodenDataset(tmp_path, check_files=False)
    (tmp_path / "images" / "img" / "001.png").unlink()
    with pytest.raises(KdlibError, match="missing file .*001.png"):
        ds.fingerprint()


def test_image_tensor_is_the_items_image(tmp_path):
    _hand_made(tmp_path)
    ds = BrodenDataset(tmp_path, image_size=16)
    assert torch.equal(ds.image_tensor(2), ds[2]["image"])
