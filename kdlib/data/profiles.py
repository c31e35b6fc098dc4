"""Named world profiles: the base values a params file's ``world: {profile: ...}`` starts from."""

from __future__ import annotations

from kdlib.params import WorldParams

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
