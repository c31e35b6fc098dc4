"""Dissection results: per-layer counts, IoU, NetDissect's tally table, detectors and graded measures.

A :class:`LayerResult` keeps the raw counts (intersection, the per-category A term, label areas) and
derives everything else, so a result reloaded from disk or from the cache answers every question again,
at any IoU threshold.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from kdlib.atomic import atomic_path, write_text
from kdlib.errors import KdlibError
from kdlib.dissect.tally import activation_per_label, iou_from_counts

_TENSORS = (
    "thresholds",
    "intersection",
    "activation_cat",
    "unit_area",
    "truth",
    "label_category",
    "top_images",
    "top_values",
    "top_maps",
)


@dataclass
class LayerResult:
    """What dissection found for one layer.

    Tensors (CPU): ``thresholds`` [U]; ``intersection`` [U, L], ``activation_cat`` [U, C] (the IoU's A
    term per category), ``unit_area`` [U] (mask pixels), ``truth`` [L] (label pixels), ``label_category``
    [L] (primary category, -1 none); ``top_images`` / ``top_values`` / ``top_maps`` [U, n(, h, w)]: the
    n probe images with the highest map maximum per unit, their maxima and maps (for pictures).
    Label ids are the numbers of ``label.csv``; units are 0-based here and 1-based in :attr:`tally`.
    """

    layer: str
    thresholds: torch.Tensor
    intersection: torch.Tensor
    activation_cat: torch.Tensor
    unit_area: torch.Tensor
    truth: torch.Tensor
    label_category: torch.Tensor
    label_names: list[str]
    categories: list[str]
    quantile: float
    iou_threshold: float
    top_images: torch.Tensor
    top_values: torch.Tensor
    top_maps: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    # -- derived quantities -------------------------------------------------------------------------

    @property
    def units(self) -> int:
        return self.thresholds.numel()

    @property
    def activation(self) -> torch.Tensor:
        """A per (unit, label): the mask area over images where the mask overlaps the label's category."""
        return activation_per_label(self.activation_cat, self.label_category)

    @property
    def iou(self) -> torch.Tensor:
        """Dataset-level IoU [units, labels] (float64); 0 for label 0 (unlabelled) and for labels in none
        of the dissected categories."""
        cached = getattr(self, "_iou", None)
        if cached is None:
            cached = iou_from_counts(self.intersection, self.activation, self.truth)
            cached[:, self.label_category < 0] = 0
            self._iou = cached
        return cached

    def best_per_category(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(best IoU [U, C], best label [U, C]) over the labels whose primary category is each category.

        As in NetDissect-Lite, a category where the unit's best IoU is 0 reports label 0 ("-")."""
        iou = self.iou
        C = len(self.categories)
        member = self.label_category.unsqueeze(0) == torch.arange(C).unsqueeze(1)  # [C, L]
        masked = torch.where(member.unsqueeze(0), iou.unsqueeze(1), torch.full_like(iou.unsqueeze(1), -1.0))
        best, label = masked.max(dim=2)  # [U, C]; ties -> lowest label number
        label = torch.where(best > 0, label, torch.zeros_like(label))
        return best.clamp(min=0), label

    def best_iou(self) -> pd.DataFrame:
        """Graded measure: each unit's best IoU per category (rows: units 1..U, columns: categories)."""
        best, _ = self.best_per_category()
        return pd.DataFrame(best.numpy(), columns=self.categories, index=pd.RangeIndex(1, self.units + 1, name="unit"))

    @property
    def tally(self) -> pd.DataFrame:
        """NetDissect-Lite's ``tally.csv``: one row per unit, best score first.

        Columns: ``unit`` (1-based), ``category``, ``label``, ``score`` (the unit's best IoU over all
        categories; ties go to the earlier category), then per category ``<cat>-label``, ``<cat>-truth``,
        ``<cat>-activation``, ``<cat>-intersect``, ``<cat>-iou`` for that category's best label."""
        cached = getattr(self, "_tally", None)
        if cached is not None:
            return cached.copy()
        best, label = self.best_per_category()
        U = self.units
        score, bestcat = best.max(dim=1)
        units = torch.arange(U)
        names = np.asarray(self.label_names, dtype=object)
        data: dict[str, Any] = {
            "unit": units.numpy() + 1,
            "category": [self.categories[c] for c in bestcat.tolist()] if self.categories else [""] * U,
            "label": names[label[units, bestcat].numpy()] if self.categories else [""] * U,
            "score": score.numpy(),
        }
        act = self.activation
        for ci, cat in enumerate(self.categories):
            lab = label[:, ci]
            data[f"{cat}-label"] = names[lab.numpy()]
            data[f"{cat}-truth"] = self.truth[lab].numpy()
            data[f"{cat}-activation"] = act[units, lab].numpy()
            data[f"{cat}-intersect"] = self.intersection[units, lab].numpy()
            data[f"{cat}-iou"] = best[:, ci].numpy()
        frame = pd.DataFrame(data)
        frame = frame.iloc[np.lexsort((frame["unit"].to_numpy(), -frame["score"].to_numpy()))].reset_index(drop=True)
        self._tally = frame
        return frame.copy()

    def detectors(self, iou_threshold: float | None = None) -> pd.DataFrame:
        """The tally rows whose score > ``iou_threshold`` (default: the one dissection was run with)."""
        thr = self._threshold(iou_threshold)
        tally = self.tally
        return tally[tally["score"] > thr].reset_index(drop=True)

    def detector_counts(self, iou_threshold: float | None = None) -> pd.Series:
        """Detectors per category (every category listed, zeros included), by each unit's best category."""
        det = self.detectors(iou_threshold)
        return det["category"].value_counts().reindex(self.categories, fill_value=0).rename("detectors")

    def unique_concepts(self, iou_threshold: float | None = None) -> pd.Series:
        """Distinct concepts (labels) among the detectors, per category."""
        det = self.detectors(iou_threshold)
        return det.groupby("category")["label"].nunique().reindex(self.categories, fill_value=0).rename("concepts")

    def summary(self, iou_threshold: float | None = None) -> pd.DataFrame:
        """Per category: detectors, their share of the layer's units, unique concepts, and graded
        measures over all units (mean and median of each unit's best IoU in the category); a ``total``
        row counts every detector once."""
        thr = self._threshold(iou_threshold)
        best = self.best_iou()
        det = self.detectors(thr)
        frame = pd.DataFrame(
            {
                "layer": self.layer,
                "category": self.categories,
                "detectors": self.detector_counts(thr).to_numpy(),
                "unique_concepts": self.unique_concepts(thr).to_numpy(),
                "mean_best_iou": best.mean(axis=0).to_numpy() if self.units else 0.0,
                "median_best_iou": best.median(axis=0).to_numpy() if self.units else 0.0,
            }
        )
        total = {
            "layer": self.layer,
            "category": "total",
            "detectors": len(det),
            "unique_concepts": det["label"].nunique(),
            "mean_best_iou": float(best.max(axis=1).mean()) if self.units else 0.0,
            "median_best_iou": float(best.max(axis=1).median()) if self.units else 0.0,
        }
        frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
        frame.insert(3, "share", frame["detectors"] / max(self.units, 1))
        frame.insert(2, "iou_threshold", thr)
        return frame

    def _threshold(self, iou_threshold: float | None) -> float:
        thr = self.iou_threshold if iou_threshold is None else iou_threshold
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0.0 <= thr < 1.0:
            raise KdlibError(f"iou_threshold = {thr!r} is out of range; valid: 0 <= iou_threshold < 1 (0.04 or 0.05)")
        return float(thr)

    # -- storage ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).cpu() for name in _TENSORS}
        out.update(
            layer=self.layer,
            label_names=list(self.label_names),
            categories=list(self.categories),
            quantile=self.quantile,
            iou_threshold=self.iou_threshold,
            meta=dict(self.meta),
        )
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], from_cache: bool = False) -> "LayerResult":
        kwargs = {k: state[k] for k in (*_TENSORS, "layer", "label_names", "categories", "quantile", "iou_threshold", "meta")}
        return cls(**kwargs, from_cache=from_cache)

    def with_iou_threshold(self, iou_threshold: float) -> "LayerResult":
        return LayerResult.from_state({**self.state(), "iou_threshold": iou_threshold}, self.from_cache)


class DissectResult(Mapping[str, LayerResult]):
    """Results by layer name: ``result["layer4"]``; :meth:`save` / :meth:`load` a folder."""

    def __init__(self, layers: Mapping[str, LayerResult], meta: Mapping[str, Any] | None = None):
        self.layers = dict(layers)
        self.meta = dict(meta or {})

    def __getitem__(self, layer: str) -> LayerResult:
        try:
            return self.layers[layer]
        except KeyError:
            raise KdlibError(f"layer {layer!r} was not dissected; valid: {', '.join(self.layers)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        parts = [f"{name}: {len(r.detectors())}/{r.units} detectors" for name, r in self.layers.items()]
        return f"DissectResult({'; '.join(parts)})"

    def summary(self, iou_threshold: float | None = None) -> pd.DataFrame:
        """Every layer's :meth:`LayerResult.summary`, stacked."""
        return pd.concat([r.summary(iou_threshold) for r in self.layers.values()], ignore_index=True)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write, per layer, ``tally_<layer>.csv`` (NetDissect-compatible), ``thresholds_<layer>.npy``,
        ``iou_<layer>.npy`` and ``dissect_<layer>.pt`` (everything, for :meth:`load`), then
        ``summary.csv`` and ``dissect.json``. Every file is written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, r in self.layers.items():
            with atomic_path(folder / f"tally_{name}.csv") as tmp:
                r.tally.to_csv(tmp, index=False)
            with atomic_path(folder / f"thresholds_{name}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, r.thresholds.numpy())
            with atomic_path(folder / f"iou_{name}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, r.iou.numpy())
            with atomic_path(folder / f"dissect_{name}.pt") as tmp:
                torch.save(r.state(), tmp)
        with atomic_path(folder / "summary.csv") as tmp:
            self.summary().to_csv(tmp, index=False)
        info = {"layers": list(self.layers), **self.meta}
        write_text(folder / "dissect.json", json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "DissectResult":
        folder = Path(folder)
        info_path = folder / "dissect.json"
        if not info_path.is_file():
            raise KdlibError(f"no dissection in {folder}; valid: a folder written by DissectResult.save (has dissect.json)")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        layers = {}
        for name in info.get("layers", []):
            path = folder / f"dissect_{name}.pt"
            if not path.is_file():
                raise KdlibError(f"missing {path}; valid: a complete folder written by DissectResult.save")
            layers[name] = LayerResult.from_state(torch.load(path, map_location="cpu", weights_only=True))
        meta = {k: v for k, v in info.items() if k != "layers"}
        return cls(layers, meta)
