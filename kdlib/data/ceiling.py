"""The attribute ceiling: the best accuracy any classifier could reach on a world's test split.

Given a generated image's true attributes (shape, part, texture, material, colour, scene; the
``records/`` tables) the generator's own likelihoods give each class's posterior; the Bayes classifier
picks the most probable class. Its accuracy bounds what a network can reach from pixels (which also
loses small or occluded parts), so it tells whether the task can saturate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdlib.data.concepts import BODY_COLOURS
from kdlib.data.world import read_manifest


def attribute_posteriors(world: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of every class for every image of ``split`` ([images, classes]) and true classes."""
    world = Path(world)
    params = read_manifest(world)["params"]
    onto = json.loads((world / "classes.json").read_text())
    classes = onto["classes"]
    scenes = [s["name"] for s in onto["scenes"]]
    rec = pd.read_csv(world / "records" / f"{split}.csv", keep_default_na=False)
    fid, cfid, bias = params["attribute_fidelity"], params["colour_fidelity"], params["context_bias"]
    shape_of_true = np.array([classes[t]["shape"] for t in rec.true_class])
    out = np.zeros((len(rec), len(classes)))
    for c in classes:
        sibs = [k for k in classes if k["superclass"] == c["superclass"] and k["index"] != c["index"]]
        like = (shape_of_true == c["shape"]).astype(float)
        for attr in ("part", "texture", "material"):
            own = (rec[attr].to_numpy() == c[attr]).astype(float)
            sib = np.array([sum(k[attr] == v for k in sibs) for v in rec[attr]]) / max(len(sibs), 1)
            like *= fid * own + (1 - fid) * sib
        like *= cfid * (rec.colour.to_numpy() == c["colour"]) + (1 - cfid) / len(BODY_COLOURS)
        like *= bias * (rec.scene.to_numpy() == scenes[c["home_scene"]]) + (1 - bias) / len(scenes)
        out[:, c["index"]] = np.log(like + 1e-300)
    return out, rec.true_class.to_numpy()


def attribute_ceiling(world: str | Path, split: str = "test") -> float:
    """Accuracy of the Bayes classifier that sees every image's true attributes."""
    loglik, truth = attribute_posteriors(world, split)
    return float((loglik.argmax(1) == truth).mean())
