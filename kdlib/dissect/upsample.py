"""The mask rule of dissection and its sparse exact evaluation.

A unit's mask on one image is its map upsampled bilinearly to the segmentation size and compared
strictly with the unit's threshold, ``mask = upsample_bilinear(map) > T``, empty when the map's maximum is
``<= T`` (:func:`unit_mask`). :func:`upsample_bilinear` is ``F.interpolate``'s sampling
(``align_corners=False``) with fixed float32 arithmetic, so the bits do not depend on the batch or the
device.

**Sparse exact masks** (:class:`SparseMasks`, what the tally uses): the upsampling is separable, a pass
along x (``a[y, sx] = wx0 * m[y, x0] + wx1 * m[y, x1]``) then along y (``v = wy0 * a[y0, sx] + wy1 * a[y1,
sx]``). Each pass makes convex combinations, which never exceed the larger of their two values; float32
rounding adds at most ``3 u S`` per pass (``u = 2**-24``; two products and one sum, each rounded once; the
float32 weights sum to 1 within ``u``; ``S`` the largest ``|value|`` of the map), plus a few subnormal
units. So a pixel can only be in the mask if one of the four map values it reads is above
``T - 8 u (S + |T|) - 2 tiny`` (two passes away), and, after the x pass, one of its two x-pass values is
above ``T - 4 u (S + |T|) - tiny`` (one pass away) (:func:`candidate_cutoff`). :class:`SparseMasks`
evaluates only those: the *cells* (blocks of pixels reading the same four map values) around candidate
map positions, the x pass on those cells' columns, and the y pass on the candidate columns' rows, each
pixel with the very float32 operations of :func:`upsample_bilinear` (same products, same sums, same
order). Every evaluated pixel has the dense rule's bits and every skipped pixel is provably ``<= T``, so
the masks are the dense rule's exactly (a test compares them on adversarial maps: constants that round
one ulp above themselves, thresholds equal to map values, subnormals, 1e30). The cost follows what can
be in a mask (a few cells around each map position near ``T``), not the mask's size.
"""

from __future__ import annotations

import functools
import math

import torch

from kdlib.errors import KdlibError

UPSAMPLE = "bilinear, align_corners=False; separable float32: columns then rows, w0*a + w1*b; empty when max <= T"


def _axis_weights(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling along one axis (``align_corners=False``, as ``F.interpolate``): output i reads
    source position ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, between ``i0`` and ``i1 = min(i0 + 1,
    n_in - 1)`` with weights ``w0 = 1 - w1``, ``w1 = position - i0`` (computed in float64, stored in
    float32). Returns ``i0, i1, w0, w1``."""
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = pos - i0
    w0 = 1 - w1
    return i0.to(device), i1.to(device), w0.float().to(device), w1.float().to(device)


class _Upsampler:
    """:func:`upsample_bilinear` for one (map size, output size), weights made once. The two passes are
    separate methods so that :class:`SparseMasks` evaluates single pixels with the very same ops."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], device):
        self.in_size = tuple(in_size)
        self.out_size = tuple(out_size)
        self.y = _axis_weights(in_size[0], out_size[0], device)
        self.x = _axis_weights(in_size[1], out_size[1], device)

    def along_x(self, maps: torch.Tensor) -> torch.Tensor:
        """First pass: [k, h, w] -> [k, h, sw], ``w0 * a + w1 * b`` along x."""
        x0, x1, wx0, wx1 = self.x
        cols = maps.transpose(1, 2)  # [k, w, h]: interpolate along x first, on the small map
        a = cols.index_select(1, x0).mul_(wx0.unsqueeze(1))
        a.add_(cols.index_select(1, x1).mul_(wx1.unsqueeze(1)))
        return a.transpose(1, 2).contiguous()  # [k, h, sw]

    def along_y(self, a: torch.Tensor) -> torch.Tensor:
        """Second pass: [k, h, sw] -> [k, sh, sw], whole rows."""
        y0, y1, wy0, wy1 = self.y
        out = a.index_select(1, y0).mul_(wy0.unsqueeze(1))
        return out.add_(a.index_select(1, y1).mul_(wy1.unsqueeze(1)))

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        return self.along_y(self.along_x(maps))


@functools.lru_cache(maxsize=64)
def _upsampler(in_size: tuple[int, int], out_size: tuple[int, int], device: torch.device) -> _Upsampler:
    return _Upsampler(in_size, out_size, device)


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``maps`` [k, h, w] (float32) to ``size`` = (sh, sw): [k, sh, sw].

    The sampling is ``F.interpolate(mode="bilinear", align_corners=False)``'s. The arithmetic is fixed:
    first along x, ``w0 * a + w1 * b``, then along y the same way, each product and sum rounded to float32
    on its own (elementwise ops, no fused multiply-add). So a map gets the same bits alone or in any
    batch, on the CPU or on CUDA, which ``F.interpolate`` does not promise (its CPU kernel already gives
    other last bits for a batch shaped [1, k, h, w] than for [k, 1, h, w]). It agrees with
    ``F.interpolate`` to a few float32 ulps (a test pins that).
    """
    if maps.dim() != 3:
        raise KdlibError(f"maps of shape {tuple(maps.shape)}; valid: [k, h, w]")
    return _upsampler(tuple(maps.shape[1:]), (int(size[0]), int(size[1])), maps.device)(maps.float())


def unit_mask(fmap: torch.Tensor, threshold, size: tuple[int, int]) -> torch.Tensor:
    """The mask of one unit on one image: bool [sh, sw]; ``fmap`` [h, w]. The rule of the module docstring:
    ``upsample_bilinear(fmap) > threshold``, empty when ``fmap.max() <= threshold``."""
    if not bool(fmap.max() > threshold):
        return torch.zeros(tuple(size), dtype=torch.bool, device=fmap.device)
    return upsample_bilinear(fmap[None], size)[0] > threshold


_U = 2.0**-24  # float32 unit roundoff
_TINY = torch.finfo(torch.float32).tiny


def candidate_cutoff(thresholds: torch.Tensor, scale: torch.Tensor, passes: int) -> torch.Tensor:
    """Per map, a float32 ``c <= T - 4 u passes (scale + |T|) - passes * tiny``, computed in float64 and
    rounded down: a value that ``passes`` rounds of ``w0 * a + w1 * b`` make from values all ``<= c``
    (and ``<= scale`` in size) is ``<= T`` (the bound of the module docstring)."""
    thr = thresholds.double()
    exact = thr - 4 * _U * passes * (scale.double() + thr.abs()) - passes * _TINY
    cut = exact.float()
    return torch.where(cut.double() > exact, torch.nextafter(cut, torch.full_like(cut, -math.inf)), cut)


class _AxisCells:
    """One axis of the upsampling, output positions grouped into *cells*: runs that read the same two
    map positions ``src0, src1``. ``start`` [cells]; ``index`` [cells, R] the cell's output positions
    (padded to the longest cell, ``valid``), ``w0, w1`` their weights; ``readers`` [n_in, 2] the cells
    that read each map position (padded with ``cells``, a sentinel)."""

    def __init__(self, n_in: int, n_out: int, device):
        i0, i1, w0, w1 = _axis_weights(n_in, n_out, device)
        key = i0 * n_in + i1
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        # runs longer than the upsampling factor (the clamped borders) are split, so padding wastes little
        longest = max(1, math.ceil(n_out / n_in))
        pos = torch.arange(n_out, device=key.device)
        run = pos - torch.cummax(torch.where(first, pos, 0), 0).values
        first |= run % longest == 0
        self.start = first.nonzero(as_tuple=True)[0]
        length = torch.diff(self.start, append=torch.tensor([n_out], device=key.device))
        span = torch.arange(int(length.max()), device=key.device)
        self.index = (self.start.unsqueeze(1) + span).clamp(max=n_out - 1)
        self.valid = span < length.unsqueeze(1)
        self.w0, self.w1 = w0[self.index], w1[self.index]
        self.src0, self.src1 = i0[self.start], i1[self.start]
        self.cells = self.start.numel()
        readers = [[] for _ in range(n_in)]
        for c, (a, b) in enumerate(zip(self.src0.tolist(), self.src1.tolist())):
            for p in {a, b}:
                readers[p].append(c)
        width = max(len(r) for r in readers)
        self.readers = torch.tensor([r + [self.cells] * (width - len(r)) for r in readers], device=key.device)


class SparseMasks:
    """The mask pixels of many maps at once, evaluating only pixels that can pass (module docstring).

    ``segments(maps, thresholds)`` returns the pixels where ``upsample_bilinear(maps[pair]) >
    thresholds[pair]`` as vertical segments, bit for bit the dense rule (``pixels`` expands them).
    Steps, each a few tensor ops over all maps:
    candidate map positions (two rounding passes away from ``T``), the *cells* (blocks of pixels that
    read the same four map values) around them, the x pass on those cells' columns, candidate columns
    (one pass away), and the y pass on those columns' rows."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], device):
        self.h, self.w = int(in_size[0]), int(in_size[1])
        self.sw = int(out_size[1])
        self.y = _AxisCells(self.h, int(out_size[0]), device)
        self.x = _AxisCells(self.w, self.sw, device)

    @property
    def elements_per_map(self) -> int:
        """Values of the largest intermediate per map (the live-cell table), for sizing chunks."""
        return (self.y.cells + 1) * (self.x.cells + 1) + self.h * self.w

    def _live_cells(self, maps: torch.Tensor, thresholds: torch.Tensor, scale: torch.Tensor):
        k = maps.shape[0]
        cut = candidate_cutoff(thresholds, scale, passes=2)
        pair, pos = (maps.view(k, -1) > cut.unsqueeze(1)).nonzero(as_tuple=True)
        ry = self.y.readers.index_select(0, torch.div(pos, self.w, rounding_mode="floor"))  # [n, 2 or 3]
        rx = self.x.readers.index_select(0, pos.remainder(self.w))
        ny, nx = self.y.cells + 1, self.x.cells + 1
        live = torch.zeros(k * ny * nx, dtype=torch.bool, device=maps.device)
        where = (pair * (ny * nx)).view(-1, 1, 1) + (ry * nx).unsqueeze(2) + rx.unsqueeze(1)  # [n, ry, rx]
        live[where.view(-1)] = True
        live = live.view(k, ny, nx)[:, : ny - 1, : nx - 1]  # drop the "no cell" sentinel
        return live.nonzero(as_tuple=True)

    def segments(self, maps: torch.Tensor, thresholds: torch.Tensor, chunk_elements: int) -> tuple[torch.Tensor, ...]:
        """The masks as vertical segments: ``(pair, x, first, last)``, int64 [n] each: the pixels
        ``(y, x)`` with ``first <= y <= last`` are in map ``pair``'s mask; every mask pixel is in exactly
        one segment (a column's pixels in one row cell, split where float32 rounding leaves a gap)."""
        k = maps.shape[0]
        scale = maps.view(k, -1).abs().amax(dim=1)
        pair, cy, cx = self._live_cells(maps, thresholds, scale)
        flat = maps.reshape(-1)
        base = pair * (self.h * self.w)
        y0, y1 = self.y.src0.index_select(0, cy) * self.w, self.y.src1.index_select(0, cy) * self.w
        x0, x1 = self.x.src0.index_select(0, cx), self.x.src1.index_select(0, cx)
        corner = [flat.index_select(0, base + yy + xx).unsqueeze(1) for yy in (y0, y1) for xx in (x0, x1)]
        wx0, wx1 = self.x.w0.index_select(0, cx), self.x.w1.index_select(0, cx)  # [cells, Rx]
        a0 = (corner[0] * wx0).add_(corner[1] * wx1)  # the x pass of upsample_bilinear on the cells' columns
        a1 = (corner[2] * wx0).add_(corner[3] * wx1)
        cut = candidate_cutoff(thresholds, scale * (1 + 2.0**-20), passes=1).index_select(0, pair)
        col_ok = (torch.maximum(a0, a1) > cut.unsqueeze(1)).logical_and_(self.x.valid.index_select(0, cx))
        q = col_ok.view(-1).nonzero().squeeze(1)  # candidate columns: cell * Rx + j
        rx = a0.shape[1]
        v0, v1 = a0.view(-1).index_select(0, q), a1.view(-1).index_select(0, q)
        cell = torch.div(q, rx, rounding_mode="floor")
        sx = self.x.start.index_select(0, cx.index_select(0, cell)) + (q - cell * rx)
        ycell, pair = cy.index_select(0, cell), pair.index_select(0, cell)
        step = max(1, chunk_elements // self.y.index.shape[1])  # [R, step] values at a time (bounded memory)
        parts = [self._column_segments(v0[s : s + step], v1[s : s + step], ycell[s : s + step], pair[s : s + step],
                                       sx[s : s + step], thresholds) for s in range(0, q.numel(), step)]
        if not parts:
            empty = torch.empty(0, dtype=torch.long, device=maps.device)
            return empty, empty, empty, empty
        return tuple(torch.cat(p) for p in zip(*parts)) if len(parts) > 1 else parts[0]

    def _column_segments(self, v0, v1, ycell, pair, sx, thresholds):
        """The y pass of :func:`upsample_bilinear` on candidate columns (the same ops, per pixel), then
        each column's hits as one segment, or one per pixel where float32 rounding left a gap."""
        v = (v0.unsqueeze(1) * self.y.w0.index_select(0, ycell)).add_(v1.unsqueeze(1) * self.y.w1.index_select(0, ycell))
        hit = (v > thresholds.index_select(0, pair).unsqueeze(1)).logical_and_(self.y.valid.index_select(0, ycell))
        rows = hit.shape[1]
        rank = torch.arange(1, rows + 1, dtype=torch.int16, device=hit.device)
        count = hit.sum(dim=1, dtype=torch.int16).long()
        last = (hit * rank).amax(dim=1).long() - 1
        first = rows - (hit * rank.flip(0)).amax(dim=1).long()
        whole = (count > 0) & (count == last - first + 1)
        start = self.y.start.index_select(0, ycell)
        split = ((count > 0) & ~whole).nonzero().squeeze(1)
        i, r = hit.index_select(0, split).nonzero(as_tuple=True)
        keep, single = whole.nonzero().squeeze(1), split.index_select(0, i)
        pick = lambda t: torch.cat([t.index_select(0, keep), t.index_select(0, single)])  # noqa: E731
        return (pick(pair), pick(sx), torch.cat([(start + first).index_select(0, keep), start.index_select(0, single) + r]),
                torch.cat([(start + last).index_select(0, keep), start.index_select(0, single) + r]))

    def pixels(self, maps: torch.Tensor, thresholds: torch.Tensor, chunk_elements: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask pixels: ``(pair, flat)`` with ``flat = y * sw + x`` (the segments, expanded)."""
        pair, x, first, last = self.segments(maps, thresholds, chunk_elements)
        length = last - first + 1
        seg = torch.repeat_interleave(torch.arange(pair.numel(), device=pair.device), length)
        offset = torch.arange(seg.numel(), device=pair.device) - (torch.cumsum(length, 0) - length).index_select(0, seg)
        y = first.index_select(0, seg) + offset
        return pair.index_select(0, seg), y * self.sw + x.index_select(0, seg)


@functools.lru_cache(maxsize=64)
def sparse_masks(in_size: tuple[int, int], out_size: tuple[int, int], device: torch.device) -> SparseMasks:
    return SparseMasks(in_size, out_size, device)


