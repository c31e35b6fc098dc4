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


# -- label numbers, text files and image-level cells (each refusal one line naming file, row, value) ---


def _rewrite(path, edit):
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def _cell(lines, row, column, value):
    head = lines[0].split(",")
    cells = lines[row].split(",")
    cells[head.index(column)] = value
    lines[row] = ",".join(cells)
    return lines


@pytest.mark.parametrize(
    "value,match",
    [("-1", r"label.csv row 2: number = '-1' is not valid; valid: a positive integer"),
     ("0", r"label.csv row 2: number = '0' is not valid"),
     ("abc", r"label.csv row 2: number = 'abc' is not valid"),
     ("3", r"label.csv row 4: number = '3' is listed twice \(also row 2\); valid: unique label numbers")],
)
def test_label_numbers_must_be_unique_positive_integers(tmp_path, value, match):
    """A label number of -1 used to rename another label silently (names[-1] is the last one)."""
    _hand_made(tmp_path)
    _rewrite(tmp_path / "label.csv", lambda lines: _cell(lines, 1, "number", value))
    with pytest.raises(KdlibError, match=match) as e:
        BrodenDataset(tmp_path)
    _one_line(e)


def test_category_codes_must_name_labels_of_label_csv(tmp_path):
    _hand_made(tmp_path)
    _rewrite(tmp_path / "c_part.csv", lambda lines: _cell(lines, 1, "number", "99"))
    with pytest.raises(KdlibError, match=r"c_part.csv row 2: number = 99 is not in label.csv") as e:
        BrodenDataset(tmp_path)
    _one_line(e)


@pytest.mark.parametrize("name", ["label.csv", "index.csv", "c_object.csv"])
def test_undecodable_text_files_are_named(tmp_path, name):
    _hand_made(tmp_path)
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes() + b"\xff\xfe broken\n")
    with pytest.raises(KdlibError, match=rf"{name} is not UTF-8 text \(byte 0xff at offset \d+\); valid: a UTF-8 CSV file") as e:
        BrodenDataset(tmp_path)
    _one_line(e)


def test_a_category_name_that_is_not_a_plain_name_is_named(tmp_path):
    """Category names become file names (c_<name>.csv) and index.csv columns."""
    _hand_made(tmp_path)
    (tmp_path / "category.csv").write_bytes(b"name,first\ncolor\x00,1\n")
    with pytest.raises(KdlibError, match=r"category.csv row 2: name = 'color\\x00' is not a plain name") as e:
        BrodenDataset(tmp_path)
    _one_line(e)


@pytest.mark.parametrize(
    "column,value,match",
    [("scene", "abc", r"index.csv row 3: scene = 'abc' is not a label number; valid: positive label numbers"),
     ("scene", "-1", r"index.csv row 3: scene = '-1' is not a label number"),
     ("scene", "0", r"index.csv row 3: scene = '0' is not a label number"),
     ("scene", "7;3.5", r"index.csv row 3: scene = '3.5' is not a label number"),
     ("object", "12", r"index.csv row 3: object = '12' is a label number in a column of segmentation files"),
     ("sh", "0", r"index.csv row 3: sh = '0' is not valid; valid: a positive integer"),
     ("iw", "x", r"index.csv row 3: iw = 'x' is not valid; valid: an integer")],
)
def test_index_cells_that_are_not_what_their_column_holds(tmp_path, column, value, match):
    _hand_made(tmp_path)
    _rewrite(tmp_path / "index.csv", lambda lines: _cell(lines, 2, column, value))
    with pytest.raises(KdlibError, match=match) as e:
        BrodenDataset(tmp_path)
    _one_line(e)


def test_writer_refuses_labels_above_65535_and_layers_of_other_shapes(tmp_path):
    with pytest.raises(KdlibError, match=r"segmentation label 65536 is out of range; valid: 0..65535"):
        encode_segmentation(np.array([[0, 65536]]))
    w = BrodenWriter(tmp_path, ["object", "part"], ["a", "b"])
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(KdlibError, match=r"image 'p/0': part layer 0 is \(3, 3\); valid: \(4, 4\) like its other layers"):
        w.add("p/0", image, pixel={"object": [np.ones((4, 4), np.int64)], "part": [np.ones((3, 3), np.int64)]})
    with pytest.raises(KdlibError, match=r"image 'p/1.png': object label 3 is not defined; valid: 1..2"):
        w.add("p/1", image, pixel={"object": [np.full((4, 4), 3, np.int64)]})


# -- the primary-category rule, pinned ----------------------------------------------------------


def _two_categories(root, coverage: dict[str, dict[str, float]]):
    """A one-image Broden whose c_object.csv / c_material.csv list the given (label: coverage)."""
    import csv

    names = ["wood", "glass", "cup"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "images" / "0.png")
    with open(root / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "split", "ih", "iw", "sh", "sw", "object", "material"], ["0.png", "probe", 2, 2, 2, 2, "", ""]])
    with open(root / "category.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "first", "last", "count", "frequency"], ["object", 1, 3, 3, 1], ["material", 1, 2, 2, 1]])
    with open(root / "label.csv", "w", newline="") as f:
        csv.writer(f).writerows([["number", "name", "category", "frequency", "coverage", "syns"]] + [[i + 1, n, "", 1, 0, ""] for i, n in enumerate(names)])
    for cat, cover in coverage.items():
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["code", "number", "name", "frequency", "coverage"]]
                                    + [[c + 1, names.index(n) + 1, n, 1, v] for c, (n, v) in enumerate(cover.items())])
    return BrodenDataset(root)


def test_primary_category_is_where_a_label_covers_most_ties_to_the_later_category(tmp_path):
    """wood: object 0.2, material 0.5 -> material; glass: 0.3 in both -> material (the later category in
    category.csv order); cup: object only, with coverage 0 -> object (present counts)."""
    import reference_dissect as ref

    ds = _two_categories(tmp_path / "a", {"object": {"wood": 0.2, "glass": 0.3, "cup": 0.0}, "material": {"wood": 0.5, "glass": 0.3}})
    assert ds.categories == ["object", "material"]
    assert [ds.category_of(n) for n in (1, 2, 3)] == ["material", "material", "object"]
    assert ref.primary_categories(ds.root, ds.categories, ds.num_labels).tolist() == [-1, 1, 1, 0]  # the reference's own rule
    # the order of category.csv decides ties: object listed after material -> object wins glass
    flipped = _two_categories(tmp_path / "b", {"object": {"wood": 0.2, "glass": 0.3, "cup": 0.0}, "material": {"wood": 0.5, "glass": 0.3}})
    lines = (flipped.root / "category.csv").read_text().splitlines()
    (flipped.root / "category.csv").write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    flipped = BrodenDataset(flipped.root)
    assert flipped.categories == ["material", "object"]
    assert [flipped.category_of(n) for n in (1, 2, 3)] == ["material", "object", "object"]
    assert ref.primary_categories(flipped.root, flipped.categories, flipped.num_labels).tolist() == [-1, 0, 1, 1]
