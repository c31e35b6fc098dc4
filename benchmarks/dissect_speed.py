"""How fast and how lean is kdlib's dissection? One run, same model and data for every comparison.

    python benchmarks/dissect_speed.py                    # CPU: everything below except the GPU parts
    python benchmarks/dissect_speed.py --data data/world-default-s0 --images 400
    python benchmarks/dissect_speed.py --broden-scale     # on a GPU: a Broden-sized synthetic probe

Prints
1. speed-up of the engine over ``per_image`` (NetDissect-Lite's structure; goal >= 20x) and over
   ``naive`` (the seed's loops; goal >= 100x), for the study's network (a random-weight resnet18_w8)
   and for a wide layer of 512 units (ResNet18's layer4 width) on the same images, end to end (forward
   passes included) and for the tally alone (given the activations). The engine runs as ``dissect``
   does by default (pass 1's activations kept for pass 2, one forward pass) and with
   ``feature_cache_mb=0`` (two forward passes). The references make each mask with ``F.interpolate``
   (one C call per map, as NetDissect-Lite's ``imresize``); their IoUs must match the engine's within
   1e-5 with the same detectors and the same thresholds bit for bit. A breakdown line gives the time
   of one forward pass over the images alone: no dissection that runs the model can beat ``per_image``
   by more than ``per_image / forward``. The probe images are decoded into memory first, so PNG
   decoding (identical for all three) is not what is timed;
2. cost of the exact quantile over an approximate one (a fixed-size random sample per unit, in the
   spirit of NetDissect-Lite's sampling ``vecquantile``): whole dissection and pass 1 alone (goal <= 1.5x);
3. peak RSS of a dissection from disk with N and 4N images, each in its own process, the peak reset
   just before dissecting (Linux), so start-up (imports) does not hide it (goal 4N <= 1.2x); three
   times: activations never kept (``feature_cache_mb=0``), a budget between N's and 4N's activations
   (N keeps them, 4N crosses the budget and falls back to a second forward pass), and the default budget;
4. with CUDA: images/s and the ratio to a memory-bandwidth bound; ``--broden-scale``: 63k images,
   112 px masks, a 512-unit 7x7 layer (goal <= 2 minutes on one H100).
The reference implementations live in ``tests/reference_dissect.py``. Timings use one torch thread by
default (``--threads``): on a shared 2-core machine, two OpenMP threads beside another busy process can
run 10x slower, which would swamp the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kdlib.data.broden import BrodenDataset  # noqa: E402
from kdlib.dissect import compute_tallies, compute_thresholds, dissect  # noqa: E402
from kdlib.device import resolve_device  # noqa: E402
from kdlib.dissect.engine import FeatureCache, make_loader  # noqa: E402
from kdlib.models.nethook import capture_layers  # noqa: E402
from kdlib.dissect.quantile import check_quantile  # noqa: E402


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------


def find_probe(path: str | None) -> Path:
    if path is None:
        out = Path(tempfile.gettempdir()) / "kdlib-bench-world-default"
        from kdlib.params import PROFILES
        from kdlib.data.world import generate

        print(f"generating the default world in {out} (once; about a minute on 2 cores) ...", flush=True)
        generate(PROFILES["default"], out, seed=0)
        path = str(out)
    for candidate in (Path(path), Path(path) / "broden"):
        if (candidate / "index.csv").is_file():
            return candidate
    raise SystemExit(f"error: --data {path} holds no Broden probe set")


def first_images(dataset: BrodenDataset, n: int) -> BrodenDataset:
    """The dataset restricted to its first ``n`` images (a view; nothing is loaded)."""
    view = copy.copy(dataset)
    view.rows = dataset.rows[:n]
    return view


class InMemory(torch.utils.data.Dataset):
    """A probe set decoded once into memory, with the attributes dissection reads."""

    def __init__(self, dataset: BrodenDataset, n: int):
        self.items = [dataset[i] for i in range(n)]
        self.rows = dataset.rows[:n]
        self.base = dataset
        for name in ("root", "categories", "num_labels", "label_names", "primary_category", "image_size"):
            setattr(self, name, getattr(dataset, name))
        self._fingerprint = f"{dataset.fingerprint()}:first{n}"

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def fingerprint(self):
        return self._fingerprint

    def load_image(self, i):
        return self.base.load_image(i)


class WideLayer(nn.Module):
    """A cheap network whose ``features`` layer has 512 units (ResNet18's layer4 width) at 1/8 of the image size."""

    def __init__(self, units: int = 512, stride: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, units, stride, stride=stride), nn.ReLU())

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


def study_model(name: str, num_classes: int = 24) -> nn.Module:
    from kdlib.models import build

    torch.manual_seed(0)
    return build(name, num_classes)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


class SampledQuantile:
    """Approximate pass-1 statistic: a uniform random sample of at most ``size`` values per unit."""

    def __init__(self, units: int, n: int, quantile: float, device=None, size: int = 4096):
        self.quantile = check_quantile(quantile)
        self.size = size
        self.seen = 0
        self.sample = torch.empty((units, 0), device=device)
        self.gen = torch.Generator(device=device or "cpu").manual_seed(0)

    def add(self, feats: torch.Tensor) -> None:
        flat = feats.float().transpose(0, 1).reshape(feats.shape[1], -1)
        self.seen += flat.shape[1]
        merged = torch.cat([self.sample, flat], dim=1)
        if merged.shape[1] > self.size:  # keep a uniform subsample (batch-level reservoir, adequate here)
            keep = torch.randperm(merged.shape[1], generator=self.gen, device=merged.device)[: self.size]
            merged = merged[:, keep]
        self.sample = merged

    def threshold(self) -> torch.Tensor:
        return torch.quantile(self.sample, 1.0 - self.quantile, dim=1)


def engine_passes(model, dataset, layer, quantile, batch_size, device, stat=None, feature_cache_mb=256):
    """Pass 1 (with ``stat``) then pass 2, timed separately, as ``dissect`` runs them."""
    from kdlib.dissect.quantile import TopK

    label_category = dataset.primary_category.clone().long()
    label_category[0] = -1
    model.eval().to(device)
    keep = FeatureCache(feature_cache_mb)
    t0 = time.perf_counter()
    loader = make_loader(dataset, batch_size, "images", device)
    thr = compute_thresholds(model, loader, [layer], quantile, len(dataset), device, progress=False, stat=stat or TopK, keep=keep)
    t1 = time.perf_counter()
    features = keep.batches if keep.complete else None
    loader = make_loader(dataset, batch_size, "labels" if features is not None else "all", device)
    compute_tallies(model, loader, [layer], thr, label_category, len(dataset.categories), device, examples=8, progress=False,
                    features=features)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t1


def forward_only(model, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            model(batch["image"])


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _check_agrees(engine, other, name: str) -> None:
    """Same thresholds bit for bit, IoU within 1e-5, same detectors (the references use F.interpolate here)."""
    assert torch.equal(engine.thresholds, other.thresholds), f"{name}: thresholds differ"
    assert torch.allclose(engine.iou, other.iou, atol=1e-5, rtol=0), f"{name}: IoU differs by more than 1e-5"
    for thr in (0.04, 0.05):
        assert set(engine.detectors(thr)["unit"] - 1) == other.detector_units(thr), f"{name}: detectors differ"


def speed_section(name, model, layer, data, quantile, batch_size, repeats, run_naive, results):
    import reference_dissect as ref
    from kdlib.dissect.tally import IoUTally, label_areas

    cpu = torch.device("cpu")

    def engine(mb):
        return dissect(model, data, layers=[layer], quantile=quantile, batch_size=batch_size, device=cpu, progress=False, feature_cache_mb=mb)

    engine(256)  # warm-up
    t_engine, res = best_of(lambda: engine(256), repeats)
    assert res.meta["feature_cache"]["used"], res.meta["feature_cache"]
    t_two, res2 = best_of(lambda: engine(0), repeats)
    assert torch.equal(res2[layer].intersection, res[layer].intersection), "kept activations change the answer"
    t_per_image, pi = best_of(lambda: ref.per_image(model, data, layer, quantile, batch_size, mask_fn=ref.interpolate_mask), 1)
    _check_agrees(res[layer], pi, "per_image")
    row = {"config": name, "images": len(data), "units": res[layer].units, "engine_s": t_engine, "engine_two_forward_s": t_two,
           "per_image_s": t_per_image, "speedup_per_image": t_per_image / t_engine, "speedup_per_image_two_forward": t_per_image / t_two}
    # what one forward pass over the images costs on its own (the floor of any dissection that runs the model)
    image_batches = list(make_loader(data, batch_size, "images", cpu))
    t_forward, _ = best_of(lambda: forward_only(model, image_batches), repeats)
    row.update(forward_s=t_forward, bound_per_image=t_per_image / t_forward)
    # the tally alone, from the same activations and thresholds
    acts = ref.dump_activations(model, data, layer, batch_size)
    thresholds = res[layer].thresholds
    label_category = data.primary_category.clone().long()
    label_category[0] = -1
    batches = list(make_loader(data, batch_size, "all", cpu))

    def engine_tally():
        tally = IoUTally(thresholds, label_category, len(data.categories))
        start = 0
        for batch in batches:
            b = batch["image"].shape[0]
            label_areas(batch["pixel"], batch["scalar"], data.num_labels)
            tally.add(acts[start : start + b], batch["pixel"], batch["scalar"])
            start += b
        return tally

    t_tally, _ = best_of(engine_tally, repeats)
    t_pi_tally, _ = best_of(lambda: ref.per_image_tally(acts, thresholds, data, mask_fn=ref.interpolate_mask), 1)
    row.update(engine_tally_s=t_tally, per_image_tally_s=t_pi_tally, tally_speedup_per_image=t_pi_tally / t_tally)
    if run_naive:
        t_naive, nv = best_of(lambda: ref.naive(model, data, layer, quantile, batch_size, mask_fn=ref.interpolate_mask), 1)
        _check_agrees(res[layer], nv, "naive")
        t_nv_tally, _ = best_of(lambda: ref.naive_tally(acts, thresholds, data, mask_fn=ref.interpolate_mask), 1)
        row.update(naive_s=t_naive, speedup_naive=t_naive / t_engine, naive_tally_s=t_nv_tally, tally_speedup_naive=t_nv_tally / t_tally)
    print(f"\n[{name}] {len(data)} images in memory, {row['units']} units, masks {data.rows[0].sh}x{data.rows[0].sw}, "
          f"{res[layer].meta['pairs_upsampled']}/{res[layer].meta['pairs_seen']} (image, unit) pairs upsampled")
    print(f"  end to end : engine {t_engine:.3f} s | per_image {t_per_image:.2f} s -> {row['speedup_per_image']:.1f}x (goal >= 20x)", end="")
    print(f" | naive {row['naive_s']:.1f} s -> {row['speedup_naive']:.0f}x (goal >= 100x)" if run_naive else "")
    print(f"  two passes : engine with feature_cache_mb=0 (model run twice) {t_two:.3f} s -> {row['speedup_per_image_two_forward']:.1f}x over per_image")
    print(f"  breakdown  : one forward pass over the images alone {t_forward:.3f} s = {t_forward / t_engine:.0%} of the engine's time; "
          f"so a dissection that runs the model once is at most {row['bound_per_image']:.1f}x faster than per_image here")
    print(f"  tally only : engine {t_tally:.3f} s | per_image {t_pi_tally:.2f} s -> {row['tally_speedup_per_image']:.1f}x", end="")
    print(f" | naive {row['naive_tally_s']:.1f} s -> {row['tally_speedup_naive']:.0f}x" if run_naive else "")
    results.append(row)


def quantile_section(model, layer, data, quantile, batch_size, repeats, results):
    cpu = torch.device("cpu")
    exact = [engine_passes(model, data, layer, quantile, batch_size, cpu) for _ in range(repeats)]
    approx = [engine_passes(model, data, layer, quantile, batch_size, cpu, stat=SampledQuantile) for _ in range(repeats)]
    e1, e2 = min(p[0] for p in exact), min(p[1] for p in exact)
    a1, a2 = min(p[0] for p in approx), min(p[1] for p in approx)
    whole = (e1 + e2) / (a1 + a2)
    print(f"\n[exact vs approximate quantile] pass 1: exact {e1:.3f} s, sampled {a1:.3f} s -> {e1 / a1:.2f}x; "
          f"whole dissection {e1 + e2:.3f} s vs {a1 + a2:.3f} s -> {whole:.2f}x (goal <= 1.5x)")
    results.append({"config": "quantile", "exact_pass1_s": e1, "sampled_pass1_s": a1, "pass1_ratio": e1 / a1, "whole_ratio": whole})


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


def rss_child(args) -> None:
    """Run one dissection from disk on the first ``--images`` images and print peak RSS (JSON)."""
    ds = first_images(BrodenDataset(find_probe(args.data)), args.images)
    model = study_model(args.model)
    reset = _reset_peak()
    before = _memory_mb()
    t = time.perf_counter()
    res = dissect(model, ds, layers=[args.layer], quantile=args.quantile, batch_size=args.batch_size, device="cpu", progress=False,
                  feature_cache_mb=args.feature_cache_mb)
    after = _memory_mb()
    print(json.dumps({"images": len(ds), "seconds": time.perf_counter() - t, "rss_before_mb": before["rss"],
                      "rss_peak_mb": after["peak"], "peak_reset": reset, "detectors": len(res[args.layer].detectors()),
                      "feature_cache": res.meta["feature_cache"]}))


def activation_bytes_per_image(model, layer: str, dataset) -> int:
    with torch.no_grad(), capture_layers(model.eval(), [layer]) as captured:
        model(dataset.image_tensor(0)[None])
        return captured[layer][0].numel() * 4


def rss_section(args, full: BrodenDataset, results) -> None:
    n = max(1, min(args.rss_images, len(full) // 4))
    per_image = activation_bytes_per_image(study_model(args.model), args.layer, full)
    between = 2 * n * per_image / 2**20  # N images' activations fit, 4N images' do not
    print(f"\n[peak RSS during dissection, from disk, own process each; {args.layer} activations: {n * per_image / 2**20:.1f} MB "
          f"for {n} images, {4 * n * per_image / 2**20:.1f} MB for {4 * n}]")
    for label, budget in (("activations never kept (feature_cache_mb=0)", 0.0),
                          (f"budget {between:.1f} MB: {n} images keep them, {4 * n} cross it", between),
                          ("default budget (256 MB)", 256.0)):
        out = {}
        for count in (n, 4 * n):
            cmd = [sys.executable, __file__, "--rss-child", "--images", str(count), "--model", args.model, "--layer", args.layer,
                   "--quantile", str(args.quantile), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--feature-cache-mb", str(budget)]
            if args.data:
                cmd += ["--data", args.data]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            out[count] = json.loads(proc.stdout.strip().splitlines()[-1])
        a, b = out[n], out[4 * n]
        ratio = b["rss_peak_mb"] / a["rss_peak_mb"]
        print(f"  {label}: {n} images {a['rss_peak_mb']:.0f} MB ({a['seconds']:.1f} s, kept: {a['feature_cache']['state']}); "
              f"{4 * n} images {b['rss_peak_mb']:.0f} MB ({b['seconds']:.1f} s, kept: {b['feature_cache']['state']}) -> {ratio:.3f}x (goal <= 1.2x); "
              f"above the RSS before dissecting: {a['rss_peak_mb'] - a['rss_before_mb']:.1f} MB vs {b['rss_peak_mb'] - b['rss_before_mb']:.1f} MB "
              f"({'peak reset before dissecting' if a['peak_reset'] else 'peak includes start-up'})")
        results.append({"config": "rss", "feature_cache_mb": budget, "images": n, "rss_mb": a["rss_peak_mb"], "rss_4x_mb": b["rss_peak_mb"],
                        "ratio": ratio, "above_start_mb": a["rss_peak_mb"] - a["rss_before_mb"],
                        "above_start_4x_mb": b["rss_peak_mb"] - b["rss_before_mb"]})


def gpu_section(model, layer, data, quantile, batch_size, results) -> None:
    if not torch.cuda.is_available():
        print("\n[GPU] no CUDA device here: images/s and the bandwidth bound are unmeasured")
        return
    dev = torch.device("cuda")
    t, res = best_of(lambda: dissect(model, data, layers=[layer], quantile=quantile, batch_size=batch_size, device=dev, progress=False), 3)
    r = res[layer]
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    bw_t, _ = best_of(lambda: x.clone(), 5)
    bandwidth = 2 * x.numel() / bw_t  # bytes read + written per second
    bytes_needed = sum(_bytes_per_pass(r, data, kept=res.meta["feature_cache"]["used"]).values())
    bound = bandwidth / (bytes_needed / len(data))
    print(f"\n[GPU] {len(data) / t:.0f} images/s end to end; memory-bandwidth bound {bound:.0f} images/s "
          f"({bandwidth / 1e9:.0f} GB/s measured) -> {len(data) / t / bound:.2%} of the bound")
    results.append({"config": "gpu", "images_per_s": len(data) / t, "bound_images_per_s": bound})


def _bytes_per_pass(r, data, kept: bool) -> dict:
    """Bytes the two passes must at least move: activations written and read in each pass (written once
    and read twice when pass 1 kept them), labels read once, the upsampled maps of the pairs that pass
    the threshold written and read once."""
    U, h, w = r.top_maps.shape[0], r.top_maps.shape[2], r.top_maps.shape[3]
    sh, sw = data.rows[0].sh, data.rows[0].sw
    N = len(data)
    depth = max(1, sum(len(v) for v in data.rows[0].pixel.values()))
    return {"activations": (3 if kept else 4) * N * U * h * w * 4, "labels": N * depth * sh * sw * 8,
            "upsampled": 2 * r.meta["pairs_upsampled"] * sh * sw * 4}


class SyntheticBroden:
    """Broden-shaped batches made on the device: ``images`` of 112x112 masks (4 pixel layers, ~1200
    labels in 6 categories, blocky regions) and 1 scene label each, with a 512-unit 7x7 layer."""

    categories = ["object", "part", "scene", "material", "texture", "color"]

    def __init__(self, images: int, batch_size: int, device, labels: int = 1200, size: int = 112):
        self.images, self.batch_size, self.device, self.labels, self.size = images, batch_size, device, labels, size
        per = labels // len(self.categories)
        self.primary_category = torch.arange(labels + 1) // per
        self.primary_category = self.primary_category.clamp(max=len(self.categories) - 1)
        self.primary_category[0] = -1

    def __len__(self):
        return math.ceil(self.images / self.batch_size)

    def __iter__(self):
        g = torch.Generator(device=self.device).manual_seed(0)
        per = self.labels // len(self.categories)
        for start in range(0, self.images, self.batch_size):
            b = min(self.batch_size, self.images - start)
            image = torch.randn((b, 3, 56, 56), generator=g, device=self.device)
            layers = []
            for ci in (0, 1, 3, 5):  # object, part, material, color layers
                grid = torch.randint(ci * per + 1, (ci + 1) * per + 1, (b, 1, 8, 8), generator=g, device=self.device)
                keep = torch.rand((b, 1, 8, 8), generator=g, device=self.device) < 0.6
                grid = torch.where(keep, grid, torch.zeros_like(grid))
                layers.append(nn.functional.interpolate(grid.float(), size=(self.size, self.size), mode="nearest").long())
            scalar = torch.randint(2 * per + 1, 3 * per + 1, (b, 1), generator=g, device=self.device)
            yield {"image": image, "pixel": torch.cat(layers, 1), "scalar": scalar, "index": torch.arange(start, start + b, device=self.device)}


def broden_scale(args) -> None:
    dev = resolve_device(args.device)
    n = args.images or 63305
    data = SyntheticBroden(n, args.batch_size, dev)
    model = nn.Sequential()
    torch.manual_seed(0)
    model.layer4 = nn.Sequential(nn.Conv2d(3, 512, 8, stride=8), nn.ReLU())  # 56 px noise -> 512 x 7 x 7
    model.to(dev).eval()
    if dev.type != "cuda":
        print(f"[broden-scale] running on {dev}: this is a dry run of the code path, not the H100 timing")
    keep = FeatureCache(args.feature_cache_mb)
    t = time.perf_counter()
    thr = compute_thresholds(model, data, ["layer4"], args.quantile, n, dev, progress=True, total=len(data), keep=keep)
    t1 = time.perf_counter()
    features = keep.batches if keep.complete else None
    tallies, _, _ = compute_tallies(model, data, ["layer4"], thr, data.primary_category, len(data.categories), dev, examples=8,
                                    progress=True, total=len(data), features=features)
    keep.clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    tally = tallies["layer4"]
    print(f"[broden-scale] {n} images, masks 112x112, 512 units at 7x7 on {dev}: pass 1 {t1 - t:.1f} s, pass 2 {t2 - t1:.1f} s, "
          f"total {t2 - t:.1f} s (goal <= 120 s on one H100); {tally.pairs_upsampled}/{tally.pairs_seen} pairs upsampled; "
          f"activations kept for pass 2: {keep.summary()['state']} (--feature-cache-mb {args.feature_cache_mb:g})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="Broden folder or world folder (default: generate the default world in the temp folder)")
    p.add_argument("--images", type=int, default=None, help="images for the speed comparison (default 300) or the child / broden-scale run")
    p.add_argument("--wide-images", type=int, default=100, help="images for the 512-unit comparison (default 100)")
    p.add_argument("--rss-images", type=int, default=600, help="N for the RSS comparison (N and 4N; default 600)")
    p.add_argument("--model", default="resnet18_w8")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--quantile", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive reference")
    p.add_argument("--device", default="auto")
    p.add_argument("--broden-scale", action="store_true", help="time a Broden-sized synthetic probe (for a GPU)")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: ratios stay stable on a shared machine; 0 keeps torch's default)")
    p.add_argument("--feature-cache-mb", type=float, default=256.0, help="dissect's feature_cache_mb for the RSS child and --broden-scale")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args)
    if args.broden_scale:
        return broden_scale(args)
    if args.data is None:
        args.data = str(find_probe(None).parent)
    full = BrodenDataset(find_probe(args.data))
    print(f"probe set {full.root}: {len(full)} images, {full.num_labels - 1} labels, categories {', '.join(full.categories)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    results: list[dict] = []
    data = InMemory(full, min(args.images or 300, len(full)))
    model = study_model(args.model)
    speed_section(f"{args.model} {args.layer}", model, args.layer, data, args.quantile, args.batch_size, args.repeats, not args.skip_naive, results)
    wide = InMemory(full, min(args.wide_images, len(full)))
    speed_section("wide layer, 512 units", WideLayer(), "features", wide, args.quantile, args.batch_size, args.repeats, not args.skip_naive, results)
    quantile_section(model, args.layer, data, args.quantile, args.batch_size, args.repeats, results)
    rss_section(args, full, results)
    gpu_section(model, args.layer, data, args.quantile, args.batch_size, results)
    if not torch.cuda.is_available():
        print("[broden-scale] unmeasured here (no GPU): run with --broden-scale on a CUDA machine")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
