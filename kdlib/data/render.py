"""Drawing the concept world: shapes as implicit functions, materials, textures, stuff, colour naming.

Everything is drawn on a grid ``supersample`` times finer than the image, then averaged down (RGB) or
reduced to the most frequent label of each block (label maps), so pixels and labels stay aligned.
All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kdlib.data.concepts import COLOURS

COLOUR_NAMES = tuple(COLOURS)
_PROTO = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32) / 255.0


def rgb(name: str) -> np.ndarray:
    return np.array(COLOURS[name], dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Colour naming: nearest Broden colour term in CIELAB
# --------------------------------------------------------------------------------------------


def _srgb_to_lab(x: np.ndarray) -> np.ndarray:
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32)
    xyz = lin @ m.T / np.array([0.9505, 1.0, 1.089], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PROTO_LAB = _srgb_to_lab(_PROTO)


def name_colours(image: np.ndarray) -> np.ndarray:
    """RGB floats [H, W, 3] in [0, 1] -> index into ``COLOUR_NAMES`` of each pixel's nearest term."""
    lab = _srgb_to_lab(image.astype(np.float32))
    d = ((lab[..., None, :] - _PROTO_LAB) ** 2).sum(-1)
    return d.argmin(-1)


# --------------------------------------------------------------------------------------------
# Shapes: implicit functions of local coordinates (u, v) in [-1, 1]; v grows downwards
# --------------------------------------------------------------------------------------------


def _disc(u, v, cu=0.0, cv=0.0, r=1.0):
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _box(u, v, cu, cv, hu, hv):
    return (np.abs(u - cu) <= hu) & (np.abs(v - cv) <= hv)


def _triangle(u, v, a, b, c):
    """Points inside the triangle with corners a, b, c."""

    def side(p, q):
        return (q[0] - p[0]) * (v - p[1]) - (q[1] - p[1]) * (u - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def _segment(u, v, a, b, width):
    """Points within ``width`` of the segment a-b."""
    pu, pv = u - a[0], v - a[1]
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0.0, 1.0)
    return (pu - t * du) ** 2 + (pv - t * dv) ** 2 <= width * width


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Main objects, distractors and parts, all in the local frame of the object they belong to."""
    r = np.sqrt(u * u + v * v)
    if name == "disc":
        return r <= 0.85
    if name == "square":
        return _box(u, v, 0, 0, 0.74, 0.74)
    if name == "triangle":
        return _triangle(u, v, (0.0, -0.95), (0.95, 0.75), (-0.95, 0.75))
    if name == "cross":
        return _box(u, v, 0, 0, 0.3, 0.9) | _box(u, v, 0, -0.1, 0.9, 0.3)
    if name == "star":
        theta = np.arctan2(u, -v)
        k = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return r <= 0.45 + 0.5 * k
    if name == "crescent":
        return _disc(u, v, 0, 0, 0.9) & ~_disc(u, v, 0.42, -0.2, 0.68)
    if name == "heart":
        x, y = u * 1.15, -(v * 1.15 - 0.12)
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if name == "arrow":
        return _box(u, v, -0.3, 0, 0.6, 0.24) | _triangle(u, v, (0.2, -0.75), (0.95, 0.0), (0.2, 0.75))
    # distractors (drawn in their own small frame)
    if name == "ring":
        return (r <= 0.9) & (r >= 0.55)
    if name == "pole":
        return _box(u, v, 0, 0, 0.18, 0.95)
    if name == "leaf":
        return _disc(u, v, -0.45, 0, 0.95) & _disc(u, v, 0.45, 0, 0.95) & (np.abs(v) <= 0.9)
    if name == "drop":
        return _disc(u, v, 0, 0.3, 0.6) | _triangle(u, v, (0, -0.95), (0.55, 0.2), (-0.55, 0.2))
    if name == "bowtie":
        return _triangle(u, v, (0, 0), (-0.9, -0.6), (-0.9, 0.6)) | _triangle(u, v, (0, 0), (0.9, -0.6), (0.9, 0.6))
    if name == "arc":
        return (r <= 0.9) & (r >= 0.6) & (v <= 0.1)
    # parts (in the main object's frame)
    if name == "cap":
        return ((u / 0.42) ** 2 + ((v + 0.92) / 0.2) ** 2) <= 1
    if name == "horn":
        return _triangle(u, v, (-0.16, -0.78), (0.16, -0.78), (0.05, -1.2))
    if name == "antenna":
        return _segment(u, v, (0.0, -0.8), (0.3, -1.18), 0.06) | _disc(u, v, 0.3, -1.18, 0.11)
    if name == "base":
        return _box(u, v, 0, 0.9, 0.62, 0.11)
    if name == "handle":
        d = np.sqrt((u - 0.95) ** 2 + v**2)
        return (d <= 0.3) & (d >= 0.16)
    if name == "fin":
        return _triangle(u, v, (-0.75, -0.3), (-0.75, 0.3), (-1.2, 0.35))
    if name == "tail":
        d = np.sqrt((u - 0.85) ** 2 + (v - 0.75) ** 2)
        return (d <= 0.32) & (d >= 0.22) & (u >= 0.85)
    if name == "spots":
        return _disc(u, v, -0.3, -0.15, 0.13) | _disc(u, v, 0.28, 0.05, 0.13) | _disc(u, v, -0.05, 0.38, 0.13)
    if name == "eye":
        return _disc(u, v, 0.2, -0.25, 0.2)
    if name == "window":
        return _box(u, v, -0.12, 0.12, 0.2, 0.2)
    raise ValueError(f"no shape {name!r}")  # a bug, not bad input: names come from concepts.py


INTERIOR_PARTS = ("spots", "eye", "window")  # drawn only where the body is


# --------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] on a ``size`` grid: a ``cells`` x ``cells`` random grid, bilinearly enlarged."""
    small = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BILINEAR))


def material_shading(material: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, px: float) -> tuple[np.ndarray, float]:
    """Per-pixel brightness factor and opacity of a surface. ``px``: one image pixel in local units."""
    shape = u.shape
    if material == "metal":  # smooth gradient with a bright specular band
        band = np.exp(-(((u + v) * 0.7 - rng.uniform(-0.4, 0.2)) ** 2) / 0.04)
        return 0.7 + 0.25 * (-v) * 0.5 + 0.55 * band, 1.0
    if material == "glass":  # see-through, slightly bright
        return np.full(shape, 1.15, np.float32), 0.45
    if material == "stone":  # grainy speckle
        return 1.0 + 0.22 * rng.standard_normal(shape).astype(np.float32), 1.0
    if material == "wood":  # growth rings around an off-centre point
        cu, cv = rng.uniform(-1.5, 1.5, 2)
        d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        return 0.9 + 0.2 * np.sin(2 * np.pi * d / (3.2 * px)), 1.0
    if material == "plastic":  # flat with a soft rounded shading
        return 1.05 - 0.25 * np.clip(u * u + v * v, 0, 1), 1.0
    if material == "fur":  # short dark strands
        streak = np.sin(2 * np.pi * (u * 0.3 + v) / (1.3 * px) + 3 * rng.standard_normal(shape))
        return 0.85 + 0.2 * streak.astype(np.float32), 1.0
    raise ValueError(f"no material {material!r}")


def texture_pattern(texture: str, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """Where a texture paints its second colour (bool), in the object's frame; periods in image pixels."""
    a, b = u / px, v / px  # image-pixel units along the object's axes
    if texture == "striped":
        return ((a + b) / 4.0) % 1.0 < 0.5
    if texture == "banded":
        return (b / 7.0) % 1.0 < 0.42
    if texture == "chequered":
        return ((np.floor(a / 3.5) + np.floor(b / 3.5)) % 2) == 0
    if texture == "dotted":
        return ((a % 5.0 - 2.5) ** 2 + (b % 5.0 - 2.5) ** 2) <= 1.5**2
    if texture == "grid":
        return ((a % 5.0) < 1.1) | ((b % 5.0) < 1.1)
    if texture == "zigzagged":
        tri = np.abs((a / 4.0) % 2.0 - 1.0) * 3.0
        return ((b + tri) / 5.0) % 1.0 < 0.4
    if texture == "crosshatched":
        return (((a + b) / 4.0) % 1.0 < 0.25) | (((a - b) / 4.0) % 1.0 < 0.25)
    if texture == "wavy":
        return ((b + 1.6 * np.sin(2 * np.pi * a / 7.0)) / 5.0) % 1.0 < 0.45
    raise ValueError(f"no texture {texture!r}")


STUFF_LOOK: dict[str, tuple[str, str]] = {
    # stuff: (base colour, second colour)
    "sky": ("blue", "white"),
    "wall": ("red", "grey"),
    "foliage": ("green", "black"),
    "mountain": ("brown", "grey"),
    "cloud": ("white", "grey"),
    "grass": ("green", "yellow"),
    "sand": ("yellow", "white"),
    "road": ("grey", "white"),
    "floor": ("brown", "orange"),
    "snow": ("white", "blue"),
    "water": ("blue", "green"),
}


def stuff_appearance(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, px: float, size: int) -> np.ndarray:
    """RGB of a background stuff region over the whole grid (masked by the caller). x, y in image pixels."""
    base, second = (rgb(c) for c in STUFF_LOOK[name])
    jitter = rng.normal(0, 0.04, 3).astype(np.float32)
    base = np.clip(base * 0.8 + 0.2 * rgb("grey") + jitter, 0, 1)
    mix = np.zeros(x.shape, np.float32)
    grid = x.shape[0]
    if name == "sky":
        mix = np.clip(y / size, 0, 1) * 0.55
    elif name == "wall":
        row = np.floor(y / 4.0)
        mortar = ((y % 4.0) < 0.8) | (((x + 4.0 * (row % 2)) % 8.0) < 0.8)
        mix = mortar.astype(np.float32) * 0.8
    elif name == "foliage":
        mix = np.clip(smooth_noise(rng, grid, max(2, size // 4)), 0, 1) * 0.7
    elif name == "mountain":
        mix = (((x + y) / 6.0) % 1.0 < 0.3) * 0.35 + 0.2 * smooth_noise(rng, grid, max(2, size // 8))
    elif name == "cloud":
        mix = np.clip(smooth_noise(rng, grid, max(2, size // 6)), 0, 1) * 0.8
    elif name == "grass":
        mix = np.clip(np.sin(x * 2.3 + 2 * smooth_noise(rng, grid, max(2, size // 4))), 0, 1) * 0.35
    elif name == "sand":
        mix = np.clip(rng.standard_normal(x.shape).astype(np.float32) * 0.25, 0, 1)
    elif name == "road":
        mid = rng.uniform(0.6, 0.85) * size
        mix = ((np.abs(y - mid) < 0.9) & ((x % 8.0) < 4.5)).astype(np.float32) * 0.9
    elif name == "floor":
        mix = (((np.floor(x / 6.0) + np.floor(y / 6.0)) % 2) == 0).astype(np.float32) * 0.5
    elif name == "snow":
        mix = np.clip(rng.standard_normal(x.shape).astype(np.float32) * 0.15, 0, 1)
    elif name == "water":
        mix = ((np.sin(y * 1.7 + 0.8 * np.sin(x * 0.5)) > 0.75).astype(np.float32)) * 0.5
    else:
        raise ValueError(f"no stuff {name!r}")
    return base * (1 - mix[..., None]) + second * mix[..., None]


# --------------------------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """Placement of a thing: centre (image pixels), radius (image pixels), rotation (radians), aspect."""

    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    aspect: float = 1.0

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / (self.radius * self.aspect)
        v = (-dx * s + dy * c) / (self.radius / self.aspect)
        return u, v


LAYERS = ("object", "part", "material", "texture", "truth")  # label layers kept while drawing


class Canvas:
    """A supersampled RGB canvas with one label layer per pixel category and the ground-truth layer."""

    def __init__(self, size: int, supersample: int):
        self.size = size
        self.ss = supersample
        grid = size * supersample
        coords = (np.arange(grid, dtype=np.float32) + 0.5) / supersample
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.rgb = np.zeros((grid, grid, 3), np.float32)
        self.layers = {name: np.zeros((grid, grid), np.int16) for name in LAYERS}

    def paint(self, mask: np.ndarray, colour: np.ndarray, alpha: float = 1.0, **labels: int) -> None:
        """Paint ``colour`` ([3] or [H, W, 3]) where ``mask``; set each given label layer there.

        A label of 0 clears that layer (e.g. a distractor in front hides the object's texture)."""
        if alpha >= 1.0:
            self.rgb[mask] = colour[mask] if colour.ndim == 3 else colour
        else:
            src = colour[mask] if colour.ndim == 3 else colour
            self.rgb[mask] = alpha * src + (1 - alpha) * self.rgb[mask]
        for name, value in labels.items():
            self.layers[name][mask] = value

    def finish(self, rng: np.random.Generator, noise: float = 0.02) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Downsample: uint8 RGB [N, N, 3], label layers [N, N] (int64), colour-term index per pixel."""
        n, s = self.size, self.ss
        image = self.rgb.reshape(n, s, n, s, 3).mean(axis=(1, 3))
        image = np.clip(image + rng.normal(0, noise, image.shape).astype(np.float32), 0, 1)
        layers = {name: block_mode(layer, s) for name, layer in self.layers.items()}
        return (image * 255 + 0.5).astype(np.uint8), layers, name_colours(image)


def block_mode(layer: np.ndarray, s: int) -> np.ndarray:
    """The most frequent value in each ``s`` x ``s`` block (ties: the first in raster order)."""
    n = layer.shape[0] // s
    if s == 1:
        return layer.astype(np.int64)
    blocks = layer.reshape(n, s, n, s).transpose(0, 2, 1, 3).reshape(n, n, s * s)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(-1)
    pick = counts.argmax(-1)
    return np.take_along_axis(blocks, pick[..., None], -1)[..., 0].astype(np.int64)
