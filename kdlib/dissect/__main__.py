"""``python -m kdlib.dissect``: dissect a checkpoint (or a random-weight network) on a Broden probe set.

::

    python -m kdlib.dissect --checkpoint runs/scratch/checkpoint.pt --layers layer3 layer4 \\
        --data data/world-default-s0 --out outputs/dissect-scratch
    python -m kdlib.dissect --model resnet18_w8 --num-classes 24 --random-init --seed 0 \\
        --layers layer4 --data data/world-default-s0 --out outputs/dissect-random

``--data`` is a Broden folder or a world folder holding ``broden/``. ``--checkpoint`` is read by a loader
``module:function`` taking the path and returning ``(model, checkpoint dict)`` (``--loader``; default
``kdlib.models.checkpoint:load_model``, the reader of kdlib's checkpoint format; another loader reads
foreign checkpoints). The output folder gets, per layer,
``tally_<layer>.csv`` (NetDissect-compatible), ``thresholds_<layer>.npy``, ``iou_<layer>.npy``,
``dissect_<layer>.pt`` (reload with ``DissectResult.load``), ``bargraph.png`` (detectors per category),
``image/<layer>-<unit>.jpg`` strips, ``summary.csv``, ``dissect.json``, and ``done`` written last.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from kdlib.atomic import atomic_path, write_text
from kdlib.errors import KdlibError, cli_main

# The checkpoint format belongs to the training code: read it with the training code's own reader,
# named here and imported only for --checkpoint (kdlib.dissect itself never imports kdlib.train).
DEFAULT_LOADER = "kdlib.models.checkpoint:load_model"


def find_broden(path: str) -> Path:
    """``path`` if it holds ``index.csv``, else ``path/broden`` (a generated world's probe set)."""
    root = Path(path)
    for candidate in (root, root / "broden"):
        if (candidate / "index.csv").is_file():
            return candidate
    raise KdlibError(f"--data {path!r} holds no Broden probe set; valid: a folder with index.csv, or a world folder with broden/index.csv")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kdlib.dissect", description="Network Dissection of a model's layers.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a kdlib checkpoint (or its run folder)")
    p.add_argument("--loader", default=DEFAULT_LOADER,
                   help=f"module:function reading --checkpoint into (model, checkpoint dict) (default {DEFAULT_LOADER})")
    src.add_argument("--model", help="a model name (kdlib.models), with --num-classes and --random-init")
    p.add_argument("--num-classes", type=int, default=None, help="classes of --model")
    p.add_argument("--random-init", action="store_true", help="confirm that --model gets random weights (the null network)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--layers", nargs="+", default=["layer4"], help="module names to dissect (default: layer4)")
    p.add_argument("--data", required=True, help="Broden folder, or a world folder holding broden/")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quantile", type=float, default=0.005, help="top share of activations per unit (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04, help="detector threshold (default 0.04; Han et al.: 0.05)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--cache", default=None, help="cache folder for per-layer results")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--examples", type=int, default=8, help="top images kept per unit for strips (default 8)")
    p.add_argument("--feature-cache-mb", type=float, default=256,
                   help="keep pass 1's activations up to this size so pass 2 needs no second forward pass (default 256; 0: off)")
    p.add_argument("--strips", choices=["all", "detectors", "none"], default="all", help="which units get a strip")
    p.add_argument("--image-size", type=int, default=None, help="resize probe images to this size")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


CheckpointLoader = Callable[[str], "tuple[torch.nn.Module, dict[str, Any]]"]


def resolve_loader(spec: str) -> CheckpointLoader:
    """``"module:function"`` -> the function (imported now, not before)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise KdlibError(f"--loader {spec!r} is not module:function; valid: e.g. {DEFAULT_LOADER}")
    try:
        loader = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise KdlibError(f"--loader {spec!r} cannot be imported ({type(exc).__name__}: {exc}); valid: an importable module:function") from None
    if not callable(loader):
        raise KdlibError(f"--loader {spec!r} is not callable; valid: a function taking the checkpoint path")
    return loader


def load_network(args, load_checkpoint: CheckpointLoader | None = None) -> tuple[torch.nn.Module, dict]:
    """The network to dissect and where it came from. ``--checkpoint`` goes through ``load_checkpoint``
    (default: ``--loader``): any callable taking the path and returning ``(model, checkpoint dict)``;
    the dict's ``model`` (a dict with ``name``) and ``epoch`` are recorded when present."""
    if args.checkpoint is not None:
        loader = load_checkpoint if load_checkpoint is not None else resolve_loader(args.loader)
        model, state = loader(args.checkpoint)
        spec = state.get("model", {}) if isinstance(state, dict) else {}
        return model, {
            "checkpoint": str(args.checkpoint),
            "model": spec.get("name") if isinstance(spec, dict) else None,
            "epoch": state.get("epoch") if isinstance(state, dict) else None,
        }
    from kdlib.models import build

    if not args.random_init:
        raise KdlibError(
            f"--model {args.model!r} without --random-init; valid: --random-init for a random-weight network, or --checkpoint CKPT"
        )
    if args.num_classes is None:
        raise KdlibError(f"--model {args.model!r} needs --num-classes; valid: the number of classes, e.g. --num-classes 24")
    torch.manual_seed(args.seed)
    model = build(args.model, args.num_classes)
    return model, {"model": args.model, "num_classes": args.num_classes, "random_init": True, "seed": args.seed}


@cli_main
def main(argv: list[str] | None = None, load_checkpoint: CheckpointLoader | None = None) -> int:
    """The command line; ``load_checkpoint`` (for callers in Python) replaces ``--loader``."""
    args = _parser().parse_args(argv)
    from kdlib.data.broden import BrodenDataset
    from kdlib.dissect.engine import dissect
    from kdlib.viz.dissect import detector_bar_chart, save_unit_strips

    dataset = BrodenDataset(find_broden(args.data), image_size=args.image_size)
    model, source = load_network(args, load_checkpoint)
    result = dissect(
        model,
        dataset,
        layers=args.layers,
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache,
        progress=not args.no_progress,
        examples=args.examples,
        num_workers=args.workers,
        feature_cache_mb=args.feature_cache_mb,
    )
    result.meta.update(source=source)
    out = Path(args.out)
    done = out / "done"
    if done.exists():
        done.unlink()
    result.save(out)
    fig = detector_bar_chart(result)
    with atomic_path(out / "bargraph.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    if args.strips != "none" and args.examples > 0:
        for name, layer in result.items():
            units = None if args.strips == "all" else [int(u) - 1 for u in layer.detectors()["unit"]]
            save_unit_strips(layer, dataset, out / "image", units=units, progress=not args.no_progress)
    summary = result.summary()
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_text(done, json.dumps({"layers": list(result), "source": source}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
