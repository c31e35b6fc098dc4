"""The concept world's ontology: its vocabulary in Broden's six categories, and its class hierarchy.

Vocabulary (what an image is made of and what the probe set labels):
- object: the main objects' shapes (one per superclass), small distractor objects, and background
  "stuff" regions (sky, grass, water, ...), as in Broden, where sky and floor are object labels;
- part: small parts attached to a main object (cap, handle, eye, ...);
- material: how a surface is shaded (metal, glass, stone, wood, plastic, fur);
- texture: a pattern painted on a main object's body (striped, dotted, ...);
- color: Broden's eleven colour names, given to every pixel from its rendered colour;
- scene: an image-level label, one per background layout (top stuff, bottom stuff, horizon height).

Classes: ``superclasses x subclasses``. All subclasses of a superclass share its shape (siblings);
each class has its own part, texture, material, colour and home scene. Siblings' own attributes are
distinct, so only attributes tell siblings apart, while any two cousins already differ in shape.
When an image does not show its class's own attribute it shows a sibling's, so the errors a good
classifier makes fall between siblings: the class similarity that a teacher's soft labels carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kdlib.params import WorldParams

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")  # Broden's column order

SHAPES = ("disc", "square", "triangle", "cross", "star", "crescent", "heart", "arrow")
DISTRACTORS = ("ring", "pole", "leaf", "drop", "bowtie", "arc")
TOP_STUFF = ("sky", "wall", "foliage", "mountain", "cloud")
BOTTOM_STUFF = ("grass", "sand", "road", "floor", "snow", "water")
STUFF = TOP_STUFF + BOTTOM_STUFF
PARTS = ("cap", "horn", "antenna", "base", "handle", "fin", "tail", "spots", "eye", "window")
MATERIALS = ("metal", "glass", "stone", "wood", "plastic", "fur")
TEXTURES = ("striped", "banded", "chequered", "dotted", "grid", "zigzagged", "crosshatched", "wavy")
HORIZONS = ("high", "low")

# Broden's eleven colour terms and the sRGB prototypes used both to paint and to name pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "blue": (40, 80, 200),
    "brown": (120, 70, 30),
    "green": (40, 150, 50),
    "grey": (128, 128, 128),
    "orange": (240, 140, 20),
    "pink": (245, 150, 190),
    "purple": (130, 50, 160),
    "red": (210, 30, 30),
    "white": (240, 240, 240),
    "yellow": (240, 220, 40),
}
# Body colours a class may own (black and white are kept for textures, eyes and windows).
BODY_COLOURS = ("blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "yellow")


@dataclass(frozen=True)
class Scene:
    name: str
    top: str
    bottom: str
    horizon: str  # "high" (more ground) or "low"


@dataclass(frozen=True)
class ClassSpec:
    index: int
    name: str  # ImageFolder folder name; zero-padded index first so that ImageFolder's order is ours
    superclass: int
    subclass: int
    shape: str
    part: str
    texture: str
    material: str
    colour: str
    home_scene: int


@dataclass(frozen=True)
class Ontology:
    """Everything a world's images are drawn from, fixed by its params and seed."""

    classes: tuple[ClassSpec, ...]
    scenes: tuple[Scene, ...]
    labels: tuple[str, ...]  # Broden label names; number i + 1 is labels[i]
    label_category: tuple[str, ...]  # category of each label, same order

    def number(self, name: str) -> int:
        return self.labels.index(name) + 1

    def siblings(self, c: int) -> list[int]:
        s = self.classes[c].superclass
        return [k.index for k in self.classes if k.superclass == s and k.index != c]

    def to_json(self) -> dict:
        return {
            "classes": [asdict(c) for c in self.classes],
            "scenes": [asdict(s) for s in self.scenes],
            "labels": [{"number": i + 1, "name": n, "category": c} for i, (n, c) in enumerate(zip(self.labels, self.label_category))],
        }


def all_scenes() -> list[Scene]:
    """Every possible background layout, in a fixed order."""
    out = []
    for top in TOP_STUFF:
        for bottom in BOTTOM_STUFF:
            for horizon in HORIZONS:
                out.append(Scene(f"{top}-{bottom}-{horizon}-s", top, bottom, horizon))
    return out


def build_ontology(params: WorldParams, seed: int) -> Ontology:
    """Assign shapes, own attributes and home scenes to classes, deterministically from ``seed``."""
    rng = np.random.default_rng([seed, 0xC0])
    n_sub = params.subclasses
    scenes_all = all_scenes()
    pick = np.sort(rng.choice(len(scenes_all), size=params.scenes, replace=False))
    scenes = tuple(scenes_all[i] for i in pick)
    home = rng.permutation(params.scenes)
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[: params.superclasses]]
    classes = []
    for s, shape in enumerate(shapes):
        # Distinct attributes within a superclass; drawn independently across superclasses,
        # so some cousins share a part or a texture, as real cousins sometimes do.
        parts = rng.choice(len(PARTS), size=n_sub, replace=False)
        textures = rng.choice(len(TEXTURES), size=n_sub, replace=False)
        materials = rng.choice(len(MATERIALS), size=n_sub, replace=False)
        colours = rng.choice(len(BODY_COLOURS), size=n_sub, replace=False)
        for j in range(n_sub):
            idx = s * n_sub + j
            classes.append(
                ClassSpec(
                    index=idx,
                    name=f"{idx:02d}_{shape}-{chr(ord('a') + j)}",
                    superclass=s,
                    subclass=j,
                    shape=shape,
                    part=PARTS[parts[j]],
                    texture=TEXTURES[textures[j]],
                    material=MATERIALS[materials[j]],
                    colour=BODY_COLOURS[colours[j]],
                    home_scene=int(home[idx % params.scenes]),
                )
            )
    labels: list[tuple[str, str]] = []
    labels += [(f"{c}-c", "color") for c in COLOURS]
    labels += [(n, "object") for n in SHAPES[: max(len(SHAPES), 0)] if n in shapes]
    labels += [(n, "object") for n in DISTRACTORS + STUFF]
    labels += [(n, "part") for n in PARTS]
    labels += [(n, "material") for n in MATERIALS]
    labels += [(s.name, "scene") for s in scenes]
    labels += [(n, "texture") for n in TEXTURES]
    return Ontology(
        classes=tuple(classes),
        scenes=scenes,
        labels=tuple(n for n, _ in labels),
        label_category=tuple(c for _, c in labels),
    )
