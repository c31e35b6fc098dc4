"""Exact per-unit upper quantiles, streamed: keep each unit's k largest activations, merge per batch.

The threshold of unit u is the ``1 - q`` quantile of all its activations (every spatial position of every
probe image). Only the top ``k`` values are needed to get it exactly, where ``k`` covers the two order
statistics the quantile interpolates between; ``k = ceil(q * n)`` (``n`` = positions) or one more.

The quantile matches ``torch.quantile(values, 1 - q, interpolation="linear")`` bit for bit: as torch
does, the level ``1 - q`` is stored in the activations' dtype, the rank ``level * (n - 1)`` is computed in
float64, the two neighbouring order statistics are read from the top-k buffer, and they are combined
with ``torch.lerp`` and the weight ``rank - floor(rank)`` in the activations' dtype (a test pins this
against ``torch.quantile``). This is NumPy's default ``linear`` percentile (Hyndman & Fan type 7) up to float rounding.

Memory: ``units * k`` values on the device, the one buffer that grows with the probe set; for Broden
(63k images, 7x7 maps, q = 0.005) that is 15.4k values per unit.
"""

from __future__ import annotations

import math

import torch

from kdlib.errors import KdlibError


def check_quantile(quantile: float) -> float:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile < 1.0:
        raise KdlibError(f"quantile = {quantile!r} is out of range; valid: 0 < quantile < 1 (0.005: top 0.5%)")
    return float(quantile)


def _rank(level: float, n: int, dtype: torch.dtype) -> tuple[int, int, torch.Tensor]:
    """torch.quantile's linear rank for ``level`` among ``n`` sorted values: (below, above, weight)."""
    rank = torch.tensor(level, dtype=dtype).to(torch.float64) * (n - 1)
    below = int(rank.to(torch.long))
    above = int(torch.ceil(rank).to(torch.long))
    return below, above, (rank - below).to(dtype)


def topk_size(n: int, quantile: float, dtype: torch.dtype = torch.float32) -> int:
    """How many of the largest values an exact ``1 - quantile`` quantile of ``n`` values needs."""
    below, _, _ = _rank(1.0 - quantile, n, dtype)
    return min(n, max(math.ceil(quantile * n), n - below))


class TopK:
    """Streaming exact top-k per unit, on the tensors' device.

    ``add(feats)`` takes ``[batch, units, h, w]`` (or ``[batch, units]``) activations; ``threshold()``
    gives the exact ``1 - quantile`` quantile per unit once ``n`` positions have been added.
    """

    def __init__(self, units: int, n: int, quantile: float, device=None, dtype: torch.dtype = torch.float32):
        self.quantile = check_quantile(quantile)
        if n < 1:
            raise KdlibError(f"n = {n} positions per unit; valid: at least 1 (an empty probe set has none)")
        self.units = units
        self.n = n
        self.dtype = dtype
        self.k = topk_size(n, self.quantile, dtype)
        self.values = torch.empty((units, 0), dtype=dtype, device=device)
        self.count = 0

    def add(self, feats: torch.Tensor) -> None:
        """One batch. Once ``k`` values are kept, only values above each unit's smallest kept one can
        change its top-k (a value equal to it leaves the multiset of kept values as it is), so only those
        are merged: one comparison over the batch, then a top-k over the few that pass."""
        if feats.dim() < 2 or feats.shape[1] != self.units:
            raise KdlibError(f"activations of shape {tuple(feats.shape)}; valid: [batch, {self.units}, ...]")
        feats = feats.detach().to(self.dtype)
        per_unit = feats.numel() // max(1, self.units)
        self.count += per_unit
        if self.count > self.n:
            raise KdlibError(f"{self.count} positions added to a top-k made for {self.n}; valid: at most {self.n}")
        if self.values.shape[1] < self.k:  # still filling: keep everything up to k
            flat = feats.transpose(0, 1).reshape(self.units, -1)
            merged = torch.cat([self.values, flat], dim=1)
        else:
            merged = torch.cat([self.values, self._above(feats)], dim=1)
        if merged.shape[1] > self.k:
            merged = torch.topk(merged, self.k, dim=1, largest=True, sorted=False).values
        self.values = merged

    def _above(self, feats: torch.Tensor) -> torch.Tensor:
        """[units, m]: each unit's batch values above its smallest kept value, padded with -inf."""
        floor = self.values.amin(dim=1)
        above = (feats > floor.view(1, -1, *([1] * (feats.dim() - 2)))).transpose(0, 1)  # unit-major order
        unit, *where = above.nonzero(as_tuple=True)
        per = torch.bincount(unit, minlength=self.units)
        out = torch.full((self.units, int(per.max()) if unit.numel() else 0), -math.inf, dtype=self.dtype, device=feats.device)
        if unit.numel():
            pos = torch.arange(unit.numel(), device=feats.device) - (torch.cumsum(per, 0) - per).index_select(0, unit)
            out[unit, pos] = feats.transpose(0, 1)[(unit, *where)]
        return out

    def threshold(self) -> torch.Tensor:
        """Per-unit ``1 - quantile`` quantile, equal to ``torch.quantile`` over all added values."""
        if self.count != self.n:
            raise KdlibError(f"{self.count} of {self.n} positions were added; valid: all of them before threshold()")
        top = torch.sort(self.values, dim=1, descending=True).values  # top[:, j] = (n-1-j)-th order statistic
        below, above, weight = _rank(1.0 - self.quantile, self.n, self.dtype)
        lo = top[:, self.n - 1 - below]
        hi = top[:, self.n - 1 - above]
        return torch.lerp(lo, hi, weight.to(top.device))

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "count": self.count, "n": self.n, "quantile": self.quantile}
