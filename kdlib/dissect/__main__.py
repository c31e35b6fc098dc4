"""``python -m kdlib.dissect``: dissect a checkpoint (or a random-weight network) on a Broden probe set.

::

    python -m kdlib.dissect --checkpoint runs/scratch/checkpoint.pt --layers layer3 layer4 \\
        --data data/world-default-s0 --out outputs/dissect-scratch
    python -m kdlib.dissect --model resnet18_w8 --num-classes 24 --random-init --seed 0 \\
        --layers layer4 --data data/world-default-s0 --out outputs/dissect-random

The settings flags (``--layers``, ``--quantile``, ``--iou-threshold``, ``--batch-size``, ``--examples``,
``--feature-cache-mb``, ``--image-size``, ``--workers``, ``--device``, ``--threads``) build one
:class:`~kdlib.params.DissectParams`: their defaults are its defaults, each value is validated by it.

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
import contextlib
import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import torch

from kdlib.atomic import atomic_path, write_text
from kdlib.errors import KdlibError, cli_main
from kdlib.locks import folder_lock
from kdlib.params import DissectParams, replace_from_dict

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


# flag -> DissectParams field; each flag's default and help come from the dataclass
SETTINGS_FLAGS = {
    "--layers": "layers", "--quantile": "quantile", "--iou-threshold": "iou_threshold", "--batch-size": "batch_size",
    "--examples": "examples", "--feature-cache-mb": "feature_cache_mb", "--image-size": "image_size",
    "--workers": "num_workers", "--device": "device", "--threads": "threads",
}  # fmt: skip


def _settings_flags(p: argparse.ArgumentParser) -> None:
    defaults = DissectParams()
    fields = {f.name: f for f in dataclasses.fields(DissectParams)}
    for flag, name in SETTINGS_FLAGS.items():
        f = fields[name]
        hint = typing.get_type_hints(DissectParams)[name]
        kind = {int: int, float: float, str: str}.get(next((a for a in typing.get_args(hint) if a is not type(None)), hint), str)
        doc = f.metadata.get("doc") or name.replace("_", " ")
        default = getattr(defaults, name)
        extra = {"nargs": "+"} if name == "layers" else {"type": kind}
        p.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=f"{doc} (default: {default})", **extra)


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
    p.add_argument("--data", required=True, help="Broden folder, or a world folder holding broden/")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="cache folder for per-layer results (decoded labels go to CACHE/labels)")
    p.add_argument("--label-cache", default=None, help="folder for the probe set's decoded labels (default: CACHE/labels)")
    p.add_argument("--strips", choices=["all", "detectors", "none"], default="all", help="which units get a strip")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _settings_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> DissectParams:
    """The :class:`DissectParams` of the flags given (the others keep the dataclass's defaults), each
    validated by the dataclass; a bad value is one line naming its flag."""
    settings = DissectParams()
    for flag, name in SETTINGS_FLAGS.items():
        if hasattr(args, name):
            settings = replace_from_dict(settings, {name: getattr(args, name)}, f"{flag}:")
    return settings


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
    settings = settings_from(args)
    from kdlib.data.broden import BrodenDataset
    from kdlib.dissect import shard
    from kdlib.dissect.engine import dissect

    started = shard.init_from_env()  # under torchrun: each rank dissects a shard (kdlib.dissect.shard)
    if started and settings.device == "auto" and torch.cuda.is_available():
        settings = replace_from_dict(settings, {"device": f"cuda:{torch.cuda.current_device()}"}, "dissect")
    try:
        dataset = BrodenDataset(find_broden(args.data), image_size=settings.image_size)
        model, source = load_network(args, load_checkpoint)
        writer = shard.world()[0] == 0  # one writer, holding the output folder's lock throughout
        with folder_lock(Path(args.out), "dissection folder") if writer else contextlib.nullcontext():
            result = dissect(model, dataset, settings, cache_dir=args.cache, label_cache_dir=args.label_cache,
                             progress=not args.no_progress and writer)
            if writer:
                write_outputs(args, settings, dataset, result, source)
    finally:
        if started:
            torch.distributed.destroy_process_group()
    return 0


def write_outputs(args, settings: DissectParams, dataset, result, source: dict) -> None:
    """The output folder: the result, the bar graph, unit strips, the summary printed, ``done`` last."""
    from kdlib.viz.dissect import detector_bar_chart, save_unit_strips

    result.meta.update(source=source)
    out = Path(args.out)
    done = out / "done"
    if done.exists():
        done.unlink()
    result.save(out)
    fig = detector_bar_chart(result)
    with atomic_path(out / "bargraph.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    if args.strips != "none" and settings.examples > 0:
        for name, layer in result.items():
            units = None if args.strips == "all" else [int(u) - 1 for u in layer.detectors()["unit"]]
            save_unit_strips(layer, dataset, out / "image", units=units, progress=not args.no_progress)
    summary = result.summary()
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_text(done, json.dumps({"layers": list(result), "source": source}, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
