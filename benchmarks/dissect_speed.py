"""How fast and how lean is kdlib's dissection? Two regimes, every comparison measured in the same run.

    python benchmarks/dissect_speed.py                      # both regimes, a few minutes on 2 cores
    python benchmarks/dissect_speed.py --regime broden      # the Broden regime only
    python benchmarks/dissect_speed.py --before /tmp/main   # + the study regime with the code of another checkout
    python benchmarks/dissect_speed.py --broden-scale       # on a GPU: 63k Broden-like images, 512 units at 7x7

**Broden regime** (what real users run): a generated Broden-format probe set (``--broden-images``,
default 2,000, of 112 px segmentations with Broden-like label statistics: Broden 1.0's six categories
and 1,376 labels, colour on every image, objects on 70%, parts on 30%, materials on 15%, image-level
scenes on 50% and textures on 8%, Zipf-distributed concepts; ``tests/dissect_helpers.py``), and a
synthetic activation source of 512 units at 7x7 and at 14x14 (``SyntheticUnits``: a random 1x1
convolution of a fixed random input per image, so every method sees the same activations). Printed per
map size, on ``--compare-images`` images (default 500):

1. images/s of kdlib's engine (end to end: both passes, labels from its label cache, built once per probe
   set beforehand and timed separately) and of a NetDissect-Lite-structured baseline written here
   (``tests/reference_dissect.py:netdissect_lite_like``: every activation kept, its approximate quantile,
   then per image, per unit whose map reaches its threshold, one bilinear resize (PIL) of the map to the
   mask size, ``> T`` and ``np.bincount`` of the labels; labels decoded into memory beforehand, so the
   baseline is not charged for PNG decoding); the ratio (goal >= 20x);
2. both alone and beside a busy second process (a Python ``while True`` loop), kdlib at 1 and 2 torch
   threads; the slowdown beside the busy process (goal <= 1.5x);
3. scaling from N to 4N images (``--compare-images`` and 4 times that), each in its own process with the
   peak RSS reset before dissecting: time ratio (goal <= 4.4) and peak RSS ratio (goal <= 1.2x), with
   pass 1's activations kept for pass 2 (the default budget) and never kept (``feature_cache_mb=0``);
4. agreement: the best concept of each unit and the IoUs of both methods; the baseline's counting with
   kdlib's exact thresholds, against kdlib's.

**Study regime**: the default world's probe set (2,400 images, 32 px) and the study's network (a
random-weight ``resnet18_w8``, layers 3 and 4, default settings, from disk): seconds per network, with
the label cache cold (the study's first network) and warm (every later one); with ``--before DIR`` (a
checkout of another commit, e.g. ``git worktree add /tmp/main 8b16b90``) the same dissection with that
code, interleaved. Also the engine against the ``per_image`` reference (NetDissect-Lite's structure) on
layer4 in memory, end to end and tally only.

**CUDA**: with a GPU, the CUDA images/s of the Broden regime and ``--broden-scale`` (63k images, 112 px
masks, 512 units at 7x7; goal <= 2 minutes); without one, both are skipped with the reason printed.
Every timing is wall-clock; the machine's load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kdlib.data.broden import BrodenDataset  # noqa: E402
from kdlib.params import DissectParams  # noqa: E402

TMP = Path(tempfile.gettempdir())


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def first_images(dataset, n: int):
    """The dataset restricted to its first ``n`` images (a view; nothing is loaded)."""
    view = copy.copy(dataset)
    view.rows = dataset.rows[:n]
    return view


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


@contextlib.contextmanager
def busy_process(on: bool):
    """A second CPU-bound process (a busy Python loop) for the duration of the block."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def _memory_mb() -> dict:
    """Current and peak resident set size (Linux /proc; ru_maxrss elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rss": peak, "peak": peak}


def _reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux), so the peak seen later is the dissection's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: list[str], code_root: Path = ROOT) -> dict:
    """Run this script with ``args`` in a fresh process (``code_root`` on the path); its last line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Broden regime
# --------------------------------------------------------------------------------------------


def broden_probe(n: int) -> Path:
    """The generated Broden-like probe set of ``n`` images (made once in the temporary folder)."""
    from dissect_helpers import broden_like

    root = TMP / f"kdlib-bench-broden-like-{n}-v1"
    if not (root / "index.csv").is_file():
        print(f"generating a Broden-like probe set of {n} images with 112 px masks in {root} (once) ...", flush=True)
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        broden_like(tmp, n=n)
        os.replace(tmp, root)
    return root


def broden_data(root: Path, hw: int, n: int):
    from dissect_helpers import SyntheticInputs, SyntheticUnits

    return first_images(SyntheticInputs(root, hw), n), SyntheticUnits(512, hw).eval()


def engine(model, data, threads: int, label_dir, device: str = "cpu", feature_cache_mb: float = 256.0, whole: bool = False):
    """kdlib's dissection of ``layer4`` (the layer's result, or the whole :class:`DissectResult`)."""
    from kdlib.dissect import dissect

    settings = DissectParams(layers=["layer4"], threads=threads, device=device, feature_cache_mb=feature_cache_mb)
    result = dissect(model, data, settings, label_cache_dir=label_dir, progress=False)
    return result if whole else result["layer4"]


def broden_child(args) -> None:
    """One Broden-regime dissection in this process (warm-up first, for the label cache), peak RSS reset."""
    data, model = broden_data(broden_probe(args.broden_images), args.hw[0], args.images)
    run = lambda: engine(model, data, 1, args.label_dir, feature_cache_mb=args.feature_cache_mb, whole=True)  # noqa: E731
    run()  # the label cache, and the allocator warmed up
    reset = _reset_peak()
    before = _memory_mb()
    seconds, res = timed(run)
    print(json.dumps({"images": args.images, "seconds": seconds, "rss_before_mb": before["rss"], "rss_peak_mb": _memory_mb()["peak"],
                      "peak_reset": reset, "kept": res.meta["feature_cache"]["state"]}))


def _agreement(ours, theirs) -> tuple[float, float]:
    """Share of units with the same best concept, and the largest |IoU difference| of each unit's best IoU."""
    known = ours.label_category >= 0
    a, b = ours.iou[:, known], theirs.iou[:, known]
    same = float((a.argmax(dim=1) == b.argmax(dim=1)).double().mean())
    return same, float((a.max(dim=1).values - b.max(dim=1).values).abs().max())


def broden_section(args, hw: int, results: list) -> None:
    import reference_dissect as ref

    root = broden_probe(args.broden_images)
    n = min(args.compare_images, args.broden_images)
    data, model = broden_data(root, hw, n)
    label_dir = TMP / "kdlib-bench-label-cache"  # keyed by the probe set inside: reused across runs
    shutil.rmtree(label_dir, ignore_errors=True)
    t_cache, _ = timed(lambda: engine(model, data, 1, label_dir))  # builds the label cache (and warms up)
    print(f"\n[Broden regime: 512 units at {hw}x{hw}, 112 px masks, {n} of {args.broden_images} generated images; {load()}]")
    print(f"  first dissection, label cache built in it (once per probe set): {t_cache:.1f} s")
    rows = {}
    for busy in (False, True):
        for threads in args.threads:
            with busy_process(busy):
                seconds, res = timed(lambda: engine(model, data, threads, label_dir))
            rows[("kdlib", threads, busy)] = seconds
    labels = ref.all_labels(root, data.categories, n)
    torch.set_num_threads(1)
    for busy in (False, True):
        with busy_process(busy):
            seconds, base = timed(lambda: ref.netdissect_lite_like(model, data, "layer4", 0.005, labels))
        rows[("NetDissect-Lite-like", 1, busy)] = seconds
    print(f"  {'method':<22} {'threads':>7} {'alone img/s':>12} {'beside busy img/s':>18} {'slowdown':>9}   (goal <= 1.5x)")
    for (method, threads) in [("kdlib", t) for t in args.threads] + [("NetDissect-Lite-like", 1)]:
        alone, busy = rows[(method, threads, False)], rows[(method, threads, True)]
        print(f"  {method:<22} {threads:>7} {n / alone:>12.1f} {n / busy:>18.1f} {busy / alone:>8.2f}x")
        results.append({"regime": "broden", "hw": hw, "method": method, "threads": threads, "images": n,
                        "alone_s": alone, "busy_s": busy})
    base_t = rows[("NetDissect-Lite-like", 1, False)]
    best = min(rows[("kdlib", t, False)] for t in args.threads)
    print(f"  kdlib over the baseline, alone: {base_t / rows[('kdlib', 1, False)]:.1f}x at 1 thread, {base_t / best:.1f}x at its best thread count (goal >= 20x)")
    same, diff = _agreement(res, base)
    print(f"  agreement: same best concept on {same:.1%} of units; best IoU differs by up to {diff:.4f} (the baseline's approximate quantile)")
    few = first_images(data, min(n, 100))
    mine = engine(model, few, 1, label_dir)
    exact = ref.netdissect_lite_like(model, few, "layer4", 0.005, labels[: len(few)], thresholds=mine.thresholds)
    print(f"  counting: with kdlib's thresholds on {len(few)} images the baseline's IoUs differ from kdlib's by up to "
          f"{float((mine.iou - exact.iou).abs().max()):.2e} (PIL's resize against kdlib's fixed float32 upsampling)")
    scaling_section(args, hw, n, label_dir, results)


def scaling_section(args, hw: int, n: int, label_dir: Path, results: list) -> None:
    big = 4 * n
    if big > args.broden_images:
        print(f"  scaling: skipped ({big} images needed, --broden-images {args.broden_images})")
        return
    for budget in (256.0, 0.0):
        out = {}
        for count in (n, big):
            out[count] = child(["--broden-child", "--hw", str(hw), "--images", str(count), "--broden-images", str(args.broden_images),
                                "--label-dir", str(label_dir), "--feature-cache-mb", str(budget)])
        a, b = out[n], out[big]
        print(f"  scaling {n} -> {big} images (feature_cache_mb={budget:g}; pass 1's activations {a['kept']} / {b['kept']}): time "
              f"{b['seconds'] / a['seconds']:.2f}x (goal <= 4.4), peak RSS {a['rss_peak_mb']:.0f} -> {b['rss_peak_mb']:.0f} MB = "
              f"{b['rss_peak_mb'] / a['rss_peak_mb']:.2f}x (goal <= 1.2x); above the RSS before dissecting: "
              f"{a['rss_peak_mb'] - a['rss_before_mb']:.0f} -> {b['rss_peak_mb'] - b['rss_before_mb']:.0f} MB")
        results.append({"regime": "broden", "hw": hw, "scaling_budget_mb": budget, "n": a, "4n": b})


# --------------------------------------------------------------------------------------------
# Study regime
# --------------------------------------------------------------------------------------------


def study_probe(path: str | None) -> Path:
    """The default world's probe set (``--data``, else generated once in the temporary folder)."""
    if path is None:
        out = TMP / "kdlib-bench-world-default"
        if not (out / "broden" / "index.csv").is_file():
            from dataclasses import replace

            from kdlib.data.world import generate
            from kdlib.params import PROFILES

            print(f"generating the default world's probe set in {out} (once; a minute on 2 cores) ...", flush=True)
            generate(replace(PROFILES["default"], train_per_class=1, val_per_class=1, test_per_class=1), out, seed=0)
        path = str(out)
    for candidate in (Path(path), Path(path) / "broden"):
        if (candidate / "index.csv").is_file():
            return candidate
    raise SystemExit(f"error: --data {path} holds no Broden probe set")


def study_child(args) -> None:
    """The study's dissection of one network in this process, with whatever kdlib is on the path (the
    keyword form works with the old and the new signature)."""
    from kdlib.dissect import dissect
    from kdlib.models import build

    torch.manual_seed(0)
    model = build("resnet18_w8", 24)
    data = BrodenDataset(args.data)
    extra = {"label_cache_dir": args.label_dir} if args.label_dir else {}
    seconds, res = timed(lambda: dissect(model, data, layers=["layer3", "layer4"], progress=False, **extra))
    print(json.dumps({"seconds": seconds, "detectors": {k: len(v.detectors()) for k, v in res.items()},
                      "intersection": {k: int(v.intersection.sum()) for k, v in res.items()}}))


def study_section(args, results: list) -> None:
    probe = study_probe(args.data)
    with tempfile.TemporaryDirectory(prefix="kdlib-bench-study-labels-") as tmp:
        _study_runs(args, probe, Path(tmp), results)
    reference_section(probe, results)


def _study_runs(args, probe: Path, label_dir: Path, results: list) -> None:
    print(f"\n[study regime: the default world's probe set {probe} (2,400 images, 32 px), random resnet18_w8, layers 3 and 4, "
          f"default settings, from disk, 1 thread; {load()}]")
    runs: dict[str, list[float]] = {}
    seen = {}
    for rep in range(args.repeats):
        if args.before:
            out = child(["--study-child", "--data", str(probe)], Path(args.before))
            runs.setdefault("before", []).append(out["seconds"])
            seen["before"] = out
        cold = child(["--study-child", "--data", str(probe), "--label-dir", str(label_dir / f"cold{rep}")])
        warm = child(["--study-child", "--data", str(probe), "--label-dir", str(label_dir / f"cold{rep}")])
        runs.setdefault("after, label cache cold (first network)", []).append(cold["seconds"])
        runs.setdefault("after, label cache warm (later networks)", []).append(warm["seconds"])
        seen["after"] = warm
    for name, values in runs.items():
        print(f"  {name:<44} {min(values):6.2f} s per network (best of {len(values)})")
    if "before" in seen and seen["before"]["intersection"] != seen["after"]["intersection"]:
        print("  WARNING: before and after give different counts")
    if args.before:
        print(f"  speed-up: {min(runs['before']) / min(runs['after, label cache warm (later networks)']):.2f}x "
              f"(cold: {min(runs['before']) / min(runs['after, label cache cold (first network)']):.2f}x); same counts: "
              f"{seen['before']['intersection'] == seen['after']['intersection']}")
    else:
        print("  before: not measured (pass --before DIR, a checkout of the commit to compare with)")
    results.append({"regime": "study", **{k: min(v) for k, v in runs.items()}})


def reference_section(probe: Path, results: list) -> None:
    """The engine against the per_image reference on layer4 of the study's network, in memory."""
    import reference_dissect as ref
    from kdlib.dissect import dissect
    from kdlib.dissect.labels import from_pixel
    from kdlib.dissect.tally import IoUTally
    from kdlib.models import build

    torch.manual_seed(0)
    model = build("resnet18_w8", 24).eval()
    data = first_images(BrodenDataset(probe), 300)
    label_dir = TMP / "kdlib-bench-label-cache"
    dissect(model, data, layers=["layer4"], progress=False, label_cache_dir=label_dir)
    t_engine, res = timed(lambda: dissect(model, data, layers=["layer4"], progress=False, label_cache_dir=label_dir)["layer4"])
    labels = ref.all_labels(data.root, data.categories, len(data))
    acts = ref.dump_activations(model, data, "layer4")
    t_ref, counts = timed(lambda: ref.per_image_tally(acts, res.thresholds, data, ref.interpolate_mask, labels))
    category = data.primary_category.clone()
    category[0] = -1
    batches = [from_pixel(*_collated(labels[s : s + 64]), data.num_labels) for s in range(0, len(data), 64)]

    def tally_only():
        tally = IoUTally(res.thresholds, category, len(data.categories))
        for s, b in zip(range(0, len(data), 64), batches):
            tally.add(acts[s : s + 64], b)
        return tally

    t_tally, tally = timed(tally_only)
    assert torch.equal(tally.intersection, res.intersection), "the tally alone and dissect() disagree"
    print(f"  engine vs the per_image reference (NetDissect-Lite's structure, F.interpolate masks), layer4, 300 images in memory: "
          f"engine end to end {t_engine:.2f} s; reference tally alone {t_ref:.2f} s, engine tally alone {t_tally:.3f} s "
          f"-> {t_ref / t_tally:.1f}x on the tally; IoU differs by up to {float((counts.iou - res.iou).abs().max()):.1e}")
    results.append({"regime": "study", "engine_s": t_engine, "reference_tally_s": t_ref, "engine_tally_s": t_tally})


def _collated(labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel [B, D, sh, sw], scalar [B, M]) from :func:`reference_dissect.all_labels` items, zero-padded."""
    depth = max(l[0].shape[0] for l in labels)
    width = max(len(l[1]) for l in labels)
    sh, sw = labels[0][0].shape[1:]
    pixel = torch.zeros((len(labels), depth, sh, sw), dtype=torch.long)
    scalar = torch.zeros((len(labels), width), dtype=torch.long)
    for b, (layers, nums) in enumerate(labels):
        pixel[b, : layers.shape[0]] = torch.from_numpy(layers)
        scalar[b, : len(nums)] = torch.tensor(nums, dtype=torch.long)
    return pixel, scalar


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


def cuda_section(args, results: list) -> None:
    if not torch.cuda.is_available():
        print("\n[CUDA] skipped: no CUDA device here, so CUDA images/s and --broden-scale are unmeasured")
        return
    root = broden_probe(args.broden_images)
    data, model = broden_data(root, 7, min(args.broden_images, 4 * args.compare_images))
    label_dir = TMP / "kdlib-bench-label-cache"
    engine(model, data, 1, label_dir, device="cuda")
    seconds, _ = timed(lambda: engine(model, data, 1, label_dir, device="cuda"))
    print(f"\n[CUDA] Broden regime, 512 units at 7x7: {len(data) / seconds:.0f} images/s on {torch.cuda.get_device_name()}")
    results.append({"regime": "cuda", "images": len(data), "seconds": seconds})


class BrodenLikeLabels(torch.utils.data.Dataset):
    """Image i's Broden-like labels (drawn from a generator seeded by i, decoded for the tally) and a
    synthetic 7x7 input: a Broden-sized probe set without writing 63k images to disk."""

    def __init__(self, n: int, hw: int = 7):
        self.n, self.hw = n, hw

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from dissect_helpers import BRODEN_CATEGORIES, broden_like_layers
        from kdlib.data.broden_labels import decode_image

        first, at = {}, 1
        for cat, count in BRODEN_CATEGORIES.items():
            first[cat], at = at, at + count
        pixel, scalar = broden_like_layers(np.random.default_rng(i), 112, first)
        layers = [l for ls in pixel.values() for l in ls]
        g = torch.Generator().manual_seed(i)
        image = torch.nn.functional.avg_pool2d(torch.randn((1, 3, self.hw + 2, self.hw + 2), generator=g), 3, stride=1)[0] * 3
        return {"index": i, "image": image,
                "labels": decode_image(layers, [n for ns in scalar.values() for n in ns], (112, 112))}


def broden_scale(args) -> None:
    """63k Broden-like images, 112 px masks, 512 units at 7x7, on the device: both passes end to end."""
    from dissect_helpers import BRODEN_CATEGORIES, SyntheticUnits
    from kdlib.device import resolve_device
    from kdlib.dissect import compute_tallies, compute_thresholds
    from kdlib.dissect.batches import CollateParts, FeatureCache

    dev = resolve_device(args.device)
    if dev.type != "cuda":
        print(f"[broden-scale] skipped on {dev}: this is the GPU timing (goal <= 2 minutes on one GPU); there is no CUDA device here")
        return
    n = args.images or 63305
    num_labels = sum(BRODEN_CATEGORIES.values()) + 1
    category = torch.full((num_labels,), -1, dtype=torch.long)
    at = 1
    for ci, count in enumerate(BRODEN_CATEGORIES.values()):
        category[at : at + count] = ci
        at += count
    loader = lambda: torch.utils.data.DataLoader(BrodenLikeLabels(n), batch_size=args.batch_size, num_workers=args.workers,  # noqa: E731
                                                 collate_fn=CollateParts(num_labels), pin_memory=True)
    model = SyntheticUnits(512, 7).to(dev).eval()
    keep = FeatureCache(args.feature_cache_mb)
    t = time.perf_counter()
    thr = compute_thresholds(model, loader(), ["layer4"], 0.005, n, dev, progress=True, keep=keep)
    t1 = time.perf_counter()
    features = keep.batches if keep.complete else None
    tallies, _, _ = compute_tallies(model, loader(), ["layer4"], thr, category, len(BRODEN_CATEGORIES), dev, progress=True, features=features)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"[broden-scale] {n} images, 112 px masks, 512 units at 7x7 on {torch.cuda.get_device_name()}: pass 1 {t1 - t:.1f} s, "
          f"pass 2 {t2 - t1:.1f} s, total {t2 - t:.1f} s = {n / (t2 - t):.0f} images/s (goal <= 120 s); "
          f"{tallies['layer4'].pairs_upsampled}/{tallies['layer4'].pairs_seen} pairs reach their threshold")


# --------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regime", choices=["all", "broden", "study"], default="all")
    p.add_argument("--broden-images", type=int, default=2000, help="size of the generated Broden-like probe set (default 2000)")
    p.add_argument("--compare-images", type=int, default=500, help="images timed for each comparison (default 500; scaling: N and 4N)")
    p.add_argument("--hw", type=int, nargs="+", default=[7, 14], help="map sizes of the 512 units (default 7 14)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads for kdlib (default 1 2)")
    p.add_argument("--data", default=None, help="the study regime's probe set (default: the default world, generated once)")
    p.add_argument("--before", default=None, help="a checkout of another commit: the study regime is also run with its code")
    p.add_argument("--repeats", type=int, default=2, help="repeats of the study-regime timings (best kept; default 2)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--broden-scale", action="store_true", help="time 63k Broden-like images on the GPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=8, help="--broden-scale: DataLoader workers making the labels")
    p.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--feature-cache-mb", type=float, default=256.0, help=argparse.SUPPRESS)
    p.add_argument("--label-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--broden-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--study-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.broden_child:
        return broden_child(args)
    if args.study_child:
        return study_child(args)
    if args.broden_scale:
        return broden_scale(args)
    print(f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}; {load()}")
    results: list[dict] = []
    if args.regime in ("all", "broden"):
        for hw in args.hw:
            broden_section(args, hw, results)
    if args.regime in ("all", "study"):
        study_section(args, results)
    cuda_section(args, results)
    print(f"\nend: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
