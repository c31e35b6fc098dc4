"""The ``world`` section: knobs of the generated concept world, its named profiles, its folder name.

A world section is a profile plus overrides (``{profile: tiny, context_bias: 0.9}``). Profiles are
plain values, so they live here beside the dataclass; the generator (:mod:`kdlib.data.world`) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from kdlib.digest import json_digest
from kdlib.errors import KdlibError
from kdlib.params.validate import knob, replace_from_dict, to_dict


@dataclass(frozen=True)
class WorldParams:
    """Knobs of the generated concept world (``kdlib.data.world``). Profiles give the base values.

    Sizes have upper bounds so that a typo cannot fill the disk: 100,000 images per class and split and
    200,000 probe images are far beyond what the study needs (a default world is 142 MB)."""

    profile: str = "default"
    seed: Optional[int] = knob(None, ge=0, doc="None: the study's top-level seed")
    superclasses: int = knob(6, ge=2, le=8, doc="object shape families; siblings share one")
    subclasses: int = knob(4, ge=2, le=6, doc="classes per superclass")
    image_size: int = knob(32, ge=16, le=128, doc="square images, pixels")
    train_per_class: int = knob(320, ge=1, le=100_000)
    val_per_class: int = knob(40, ge=1, le=100_000)
    test_per_class: int = knob(80, ge=1, le=100_000)
    probe_images: int = knob(2400, ge=8, le=200_000, doc="images in the Broden-format dissection probe set")
    scenes: int = knob(36, ge=2, le=48, doc="scene types; each is a layout of background stuff")
    context_bias: float = knob(0.4, ge=0.0, le=1.0, doc="P(scene is the class's home scene)")
    attribute_fidelity: float = knob(
        0.7, ge=0.0, le=1.0, doc="P(a part/texture/material is the class's own, else a sibling's)"
    )
    colour_fidelity: float = knob(0.4, ge=0.0, le=1.0, doc="P(body colour is the class's own)")
    label_noise: float = knob(0.05, ge=0.0, lt=1.0, doc="P(train label replaced by a random class)")
    max_distractors: int = knob(2, ge=0, le=6, doc="small unrelated objects per image")
    object_scale: list[float] = knob(default_factory=lambda: [0.5, 0.8], doc="object size / image, range")

    def __post_init__(self) -> None:
        lo, hi = (self.object_scale + [None, None])[:2] if len(self.object_scale) == 2 else (None, None)
        if lo is None or not (0.1 <= lo <= hi <= 1.0):
            raise KdlibError(
                f"object_scale = {self.object_scale!r} is not valid; valid: [low, high] with 0.1 <= low <= high <= 1"
            )

    @property
    def num_classes(self) -> int:
        return self.superclasses * self.subclasses


PROFILES: dict[str, WorldParams] = {
    # The study's embedded default: 24 classes, 32 px (see README, "Why 32 px").
    "default": WorldParams(profile="default"),
    # For tests and smoke runs: small, fast, same generator and label format.
    "tiny": WorldParams(
        profile="tiny",
        superclasses=3,
        subclasses=2,
        image_size=24,
        train_per_class=24,
        val_per_class=6,
        test_per_class=6,
        probe_images=48,
        scenes=12,
    ),
}


def world_params_from(section: Any, where: str = "world") -> WorldParams:
    """A world section: ``profile`` picks the base values, every other key overrides one of them."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise KdlibError(f"{where} = {section!r} has the wrong type; valid: a mapping")
    profile = section.get("profile", "default")
    if profile not in PROFILES:
        raise KdlibError(f"{where}.profile = {profile!r} is not a profile; valid: {', '.join(sorted(PROFILES))}")
    return replace_from_dict(PROFILES[profile], section, where)


def world_dir_name(params: WorldParams, seed: int) -> str:
    """``world-<profile>-s<seed>``, plus a short hash of the params when they differ from the profile's."""
    name = f"world-{params.profile}-s{seed}"
    base = PROFILES.get(params.profile)
    content = to_dict(params) | {"seed": None}  # the seed is already in the name
    if base is None or to_dict(base) != content:
        name += f"-{json_digest(content, 8)}"
    return name
