"""The concept world generator: ``python -m kdlib.data.world --profile tiny|default --out DIR [--seed N]``.

A world folder holds
- ``imagefolder/{train,val,test}/<NN_class>/<split>_<i>.png``: the classification task, readable by
  ``torchvision.datasets.ImageFolder`` unchanged (class folders start with their zero-padded index, so
  ImageFolder's class index is the world's). Train labels carry ``label_noise``; val and test are clean.
- ``masks/{train,val,test}/<NN_class>/<split>_<i>.png``: ground-truth object mask of each classification
  image at the same relative path: 8-bit grey PNG, 0 background, 1 object (body and parts), 2 the
  distinguishing feature (the class's own part, when the image shows it).
- ``records/{train,val,test,probe}.csv``: what each image shows (true class, label, scene, part(s),
  texture, material, colour, distractors), for analyses and tests.
- ``broden/``: the dissection probe set in the Broden format (see :mod:`kdlib.data.broden`), with
  pixel labels for color, object, part, material, texture and image-level scene labels.
- ``classes.json`` (the ontology: classes with their own attributes, scenes, labels),
  ``label_stats.csv`` (per category: concepts, frequency, coverage) and ``manifest.json``
  (generator version, params, seed, counts, content hash).

Generation is deterministic: each image draws from its own ``numpy`` generator seeded by
``(seed, split, index)``, so the files are byte-identical whatever the number of worker processes.
A world is written into a temporary folder and renamed when complete; a second run with the same
params is a no-op (:func:`write_world` returns whether it wrote; the command line prints "wrote world"
or "is up to date" from that), and a run with other params refuses to replace an existing world unless
``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from kdlib import atomic
from kdlib.data import render
from kdlib.data.broden_format import BrodenWriter, WrittenImage, write_item
from kdlib.data.concepts import (
    BODY_COLOURS,
    CATEGORIES,
    COLOURS,
    DISTRACTORS,
    MATERIALS,
    PARTS,
    Ontology,
    build_ontology,
)
from kdlib.errors import KdlibError, cli_main
from kdlib.locks import lock_file
from kdlib.params import PROFILES, WorldParams, to_dict, world_dir_name

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test", "probe")
SUPERSAMPLE = 2
MANIFEST = "manifest.json"
RECORD_COLUMNS = ("file", "label", "true_class", "scene", "part", "extra_part", "texture", "material", "colour", "distractors")


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


@dataclass
class Drawn:
    image: np.ndarray  # uint8 [N, N, 3]
    layers: dict[str, np.ndarray]  # object, part, material, texture, truth: int64 [N, N]
    colour: np.ndarray  # index into COLOURS per pixel
    record: dict[str, object]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


class _Painter:
    """Draws one image of class ``cls`` onto a supersampled canvas. Every random draw comes from ``rng``,
    in a fixed order (background, distractors behind, body, parts, distractors in front), so an image
    depends only on its generator's seed."""

    def __init__(self, onto: Ontology, params: WorldParams, cls: int, rng: np.random.Generator):
        self.onto, self.params, self.cls, self.rng = onto, params, cls, rng
        self.spec = onto.classes[cls]
        self.size = params.image_size
        self.canvas = render.Canvas(self.size, SUPERSAMPLE)
        self.num = onto.number

    def own_or_sibling(self, attr: str) -> str:
        """The class's own attribute with probability ``attribute_fidelity``, else a random sibling's."""
        if self.rng.random() < self.params.attribute_fidelity:
            return getattr(self.spec, attr)
        return getattr(self.onto.classes[_pick(self.rng, self.onto.siblings(self.cls))], attr)

    def background(self, scene) -> None:
        """Top stuff above a gently tilted, wavy horizon, bottom stuff below."""
        rng, size, x, y = self.rng, self.size, self.canvas.x, self.canvas.y
        h0 = (0.4 if scene.horizon == "high" else 0.62) * size
        horizon = h0 + rng.uniform(-0.08, 0.08) * (x - size / 2) + rng.uniform(0, 0.05 * size) * np.sin(
            2 * np.pi * x / size * rng.uniform(0.5, 1.5) + rng.uniform(0, 2 * np.pi)
        )
        top = y < horizon
        for stuff, where in ((scene.top, top), (scene.bottom, ~top)):
            self.canvas.paint(where, render.stuff_appearance(stuff, x, y, rng, 1.0, size), object=self.num(stuff))

    def sample_distractors(self) -> list[tuple]:
        """Small unrelated objects: (frame, kind, colour, material, in front of the main object)."""
        rng, size = self.rng, self.size
        out = []
        for _ in range(int(rng.integers(self.params.max_distractors + 1))):
            frame = render.Frame(
                cx=rng.uniform(0, size), cy=rng.uniform(0, size), radius=size * rng.uniform(0.08, 0.15),
                angle=rng.uniform(0, 2 * np.pi),
            )
            out.append((frame, _pick(rng, DISTRACTORS), _pick(rng, tuple(COLOURS)), _pick(rng, MATERIALS), rng.random() < 0.5))
        return out

    def paint_distractors(self, distractors: list[tuple], front: bool) -> None:
        for frame, kind, colour, material, in_front in distractors:
            if in_front != front:
                continue
            u, v = frame.local(self.canvas.x, self.canvas.y)
            mask = render.shape_mask(kind, u, v)
            shade, alpha = render.material_shading(material, u, v, self.rng, 1.0 / frame.radius)
            col = np.clip(render.rgb(colour) * shade[..., None], 0, 1)
            self.canvas.paint(mask, col, alpha, object=self.num(kind), material=self.num(material), part=0, texture=0, truth=0)

    def body(self) -> dict:
        """The main object's body (shape, colour, texture, material); returns what the parts need."""
        rng, size, spec = self.rng, self.size, self.spec
        lo, hi = self.params.object_scale
        radius = size * rng.uniform(lo, hi) / 2
        margin = min(radius * 1.05, size / 2)
        obj = render.Frame(
            cx=rng.uniform(margin, size - margin), cy=rng.uniform(margin, size - margin), radius=radius,
            angle=rng.uniform(-0.35, 0.35), aspect=float(np.exp(rng.uniform(-0.12, 0.12))),
        )
        u, v = obj.local(self.canvas.x, self.canvas.y)
        px = 1.0 / radius  # one image pixel in local units
        body = render.shape_mask(spec.shape, u, v)
        colour = spec.colour if rng.random() < self.params.colour_fidelity else _pick(rng, BODY_COLOURS)
        base = np.clip(render.rgb(colour) + rng.normal(0, 0.04, 3).astype(np.float32), 0, 1)
        material = self.own_or_sibling("material")
        texture = self.own_or_sibling("texture")
        second = base * 0.4 if _luma(base) > 0.35 else base * 0.4 + 0.6
        surface = np.where(render.texture_pattern(texture, u, v, px)[..., None], second, base)
        shade, alpha = render.material_shading(material, u, v, rng, px)
        self.canvas.paint(body, np.clip(surface * shade[..., None], 0, 1), alpha, object=self.num(spec.shape),
                          material=self.num(material), texture=self.num(texture), part=0, truth=1)
        return {"u": u, "v": v, "px": px, "mask": body, "colour": colour, "material": material, "texture": texture}

    def parts(self, body: dict) -> tuple[str, str]:
        """The (own or a sibling's) part, and with probability 0.3 an extra one; returns their names."""
        rng, spec, u, v = self.rng, self.spec, body["u"], body["v"]
        part = self.own_or_sibling("part")
        extra = _pick(rng, tuple(p for p in PARTS if p != part)) if rng.random() < 0.3 else ""
        for name in [part] + ([extra] if extra else []):
            mask = render.shape_mask(name, u, v)
            if name in render.INTERIOR_PARTS:
                mask &= body["mask"]
            if name == "eye":
                col = render.rgb("white")
            elif name == "window":
                col = np.clip(render.rgb("yellow") * 0.5 + 0.5, 0, 1)
            else:
                col = render.rgb(_pick(rng, tuple(c for c in COLOURS if c != body["colour"])))
            pshade, palpha = render.material_shading(pm := _pick(rng, MATERIALS), u, v, rng, body["px"])
            self.canvas.paint(mask, np.clip(col * pshade[..., None], 0, 1), palpha, object=self.num(spec.shape),
                              part=self.num(name), material=self.num(pm), texture=0, truth=2 if name == spec.part else 1)
            if name == "eye":
                pupil = render.shape_mask("eye", u * 2.4 - 0.28, v * 2.4 + 0.35) & mask
                self.canvas.paint(pupil, render.rgb("black"))
        return part, extra


def draw(onto: Ontology, params: WorldParams, cls: int, rng: np.random.Generator) -> Drawn:
    """Sample and render one image of class ``cls`` (see :class:`_Painter` for the order of the draws)."""
    painter = _Painter(onto, params, cls, rng)
    spec = painter.spec
    scene_idx = spec.home_scene if rng.random() < params.context_bias else int(rng.integers(len(onto.scenes)))
    scene = onto.scenes[scene_idx]
    painter.background(scene)
    distractors = painter.sample_distractors()
    painter.paint_distractors(distractors, front=False)
    body = painter.body()
    part, extra = painter.parts(body)
    painter.paint_distractors(distractors, front=True)
    image, layers, colour_idx = painter.canvas.finish(rng)
    record = {
        "true_class": cls, "scene": scene.name, "part": part, "extra_part": extra, "texture": body["texture"],
        "material": body["material"], "colour": body["colour"], "distractors": len(distractors),
    }
    return Drawn(image=image, layers=layers, colour=colour_idx, record=record)


# --------------------------------------------------------------------------------------------
# Jobs (run in worker processes)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    split: str
    index: int
    cls: int


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _png(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=6)


def run_job(job: Job, onto: Ontology, params: WorldParams, seed: int, root: Path) -> tuple[dict, WrittenImage | None]:
    rng = _rng(seed, job.split, job.index)
    drawn = draw(onto, params, job.cls, rng)
    record = dict(drawn.record)
    if job.split == "probe":
        name = f"probe/{job.index:06d}"
        pixel = {"color": [drawn.colour + 1]}  # colour terms are labels 1..11
        for cat in ("object", "part", "material", "texture"):
            if drawn.layers[cat].any():
                pixel[cat] = [drawn.layers[cat]]
        written = write_item(root / "broden", name, drawn.image, pixel, {"scene": [onto.number(record["scene"])]}, "probe", CATEGORIES)
        record.update(file=written.row["image"], label=job.cls)
        return record, written
    label = job.cls
    # Label noise (train only) spares each class's first image, so no class folder is ever empty.
    if job.split == "train" and params.label_noise > 0 and job.index % params.train_per_class:
        noise_rng = np.random.default_rng([seed, SPLITS.index(job.split), job.index, 1])
        if noise_rng.random() < params.label_noise:
            label = int(noise_rng.integers(len(onto.classes)))
    rel = f"{job.split}/{onto.classes[label].name}/{job.split}_{job.index:06d}.png"
    _png(root / "imagefolder" / rel, drawn.image, "RGB")
    _png(root / "masks" / rel, drawn.layers["truth"].astype(np.uint8), "L")
    record.update(file=rel, label=label)
    return record, None


def jobs_for(onto: Ontology, params: WorldParams, seed: int) -> dict[str, list[Job]]:
    n_classes = len(onto.classes)
    per_class = {"train": params.train_per_class, "val": params.val_per_class, "test": params.test_per_class}
    out = {split: [Job(split, i, i // n) for i in range(n * n_classes)] for split, n in per_class.items()}
    probe_rng = np.random.default_rng([seed, SPLITS.index("probe"), 0xBEEF])
    out["probe"] = [Job("probe", i, int(c)) for i, c in enumerate(probe_rng.integers(n_classes, size=params.probe_images))]
    return out


# --------------------------------------------------------------------------------------------
# The whole world
# --------------------------------------------------------------------------------------------


def manifest_key(params: WorldParams, seed: int) -> dict:
    return {"generator": "kdlib.data.world", "version": GENERATOR_VERSION, "seed": seed, "params": to_dict(params) | {"seed": None}}


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def content_hash(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order, the manifest excluded."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _records_csv(rows: list[dict]) -> str:
    lines = [",".join(RECORD_COLUMNS)]
    for r in rows:
        lines.append(",".join(str(r[c]) for c in RECORD_COLUMNS))
    return "\n".join(lines) + "\n"


def _iterate(fn, jobs: list[Job], workers: int, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    bar = dict(total=len(jobs), desc=desc, unit="img", leave=False, disable=None)
    if workers <= 1:
        yield from tqdm(map(fn, jobs), **bar)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        yield from tqdm(pool.imap(fn, jobs, chunksize=32), **bar)


def _generate_into(root: Path, params: WorldParams, seed: int, workers: int) -> dict:
    onto = build_ontology(params, seed)
    jobs = jobs_for(onto, params, seed)
    writer = BrodenWriter(root / "broden", CATEGORIES, onto.labels)
    (root / "records").mkdir(parents=True)
    fn = partial(run_job, onto=onto, params=params, seed=seed, root=root)
    counts = {}
    for split in SPLITS:
        rows = []
        for record, written in _iterate(fn, jobs[split], workers, f"world {split}"):
            rows.append(record)
            if written is not None:
                writer.add_written(written)
        (root / "records" / f"{split}.csv").write_text(_records_csv(rows))
        counts[split] = len(rows)
        if split in ("train", "val", "test"):
            # ImageFolder refuses empty class folders; every class must appear in every split.
            for c in onto.classes:
                (root / "imagefolder" / split / c.name).mkdir(parents=True, exist_ok=True)
    stats = writer.finish()
    stats.to_csv(root / "label_stats.csv", index=False, float_format="%.6f", lineterminator="\n")
    (root / "classes.json").write_text(json.dumps(onto.to_json(), indent=1) + "\n")
    manifest = {**manifest_key(params, seed), "counts": counts, "content_sha256": content_hash(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def write_world(params: WorldParams, out: str | os.PathLike, seed: int | None = None, force: bool = False, workers: int | None = None) -> bool:
    """Make ``out`` hold the world described by ``params`` and ``seed``; True when this call wrote it,
    False when ``out`` already held this exact world (nothing is touched).

    Refuses (one-line :class:`KdlibError`) when ``out`` holds another world (unless ``force``) or
    anything that is not a world.
    """
    out = Path(out)
    seed = (params.seed if params.seed is not None else 0) if seed is None else seed
    if seed < 0:
        raise KdlibError(f"seed = {seed} is not valid; valid: an integer >= 0")
    key = manifest_key(params, seed)
    if out.exists():
        if not out.is_dir():
            raise KdlibError(f"output {str(out)!r} is a file; valid: a new or empty folder, or an existing world")
        manifest = read_manifest(out)
        if manifest is None:
            if any(out.iterdir()):
                raise KdlibError(f"output folder {str(out)!r} holds other data (no {MANIFEST}); valid: a new or empty folder")
        else:
            same = {k: manifest.get(k) for k in key} == key
            if same:
                return False
            if not force:
                raise KdlibError(
                    f"output folder {str(out)!r} holds another world ({manifest.get('params', {}).get('profile')!r}, "
                    f"seed {manifest.get('seed')!r}); valid: another --out, or --force to replace it"
                )
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(out.parent / f".{out.name}.lock", "world folder", out):
        if read_manifest(out) is not None and {k: read_manifest(out).get(k) for k in key} == key:
            return False  # finished by another process between the check above and taking the lock
        for entry in out.parent.glob(f".{out.name}.*"):  # temporary folders of a killed generation
            if atomic.is_temporary(entry) or entry.name == f".{out.name}.old":
                shutil.rmtree(entry, ignore_errors=True)
        with atomic.atomic_dir(out, replace=True) as tmp:
            _generate_into(tmp, params, seed, workers)
    return True


def generate(params: WorldParams, out: str | os.PathLike, seed: int | None = None, force: bool = False, workers: int | None = None) -> Path:
    """Write the world described by ``params`` and ``seed`` to ``out`` (:func:`write_world`); return ``out``.

    A no-op when ``out`` already holds this exact world."""
    write_world(params, out, seed=seed, force=force, workers=workers)
    return Path(out)


def ensure_world(study) -> Path:
    """The generated world a study's params describe, generated first if absent."""
    return generate(study.world, study.world_dir(), seed=study.world_seed)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.data.world", description="Generate the concept world.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", default=None, help=f"named profile: {', '.join(sorted(PROFILES))} (default: default)")
    src.add_argument("--params", default=None, help="a study params YAML file; its world section is used")
    p.add_argument("--out", default=None, help="output folder (default: the study's data_root/world-<profile>-s<seed>)")
    p.add_argument("--seed", type=int, default=None, help="world seed (default: the profile's or the study's)")
    p.add_argument("--force", action="store_true", help="replace an existing world made with other params")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from kdlib.params import load_study, parse_study

    if args.params is not None:
        study = load_study(args.params)
    else:
        profile = args.profile or "default"
        if profile not in PROFILES:
            raise KdlibError(f"--profile {profile!r} is not a profile; valid: {', '.join(sorted(PROFILES))}")
        study = parse_study({"world": {"profile": profile}}, f"--profile {profile}")
    seed = study.world_seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else Path(study.data_root) / world_dir_name(study.world, seed)
    if args.workers is not None and args.workers < 1:
        raise KdlibError(f"--workers {args.workers} is not valid; valid: an integer >= 1")
    start = time.perf_counter()
    wrote = write_world(study.world, out, seed=seed, force=args.force, workers=args.workers)
    if wrote:
        print(f"wrote world {out} in {time.perf_counter() - start:.1f} s: {read_manifest(out)['counts']} (seed {seed})")
    else:
        print(f"world {out} is up to date (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
