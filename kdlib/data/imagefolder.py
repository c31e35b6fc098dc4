"""Classification splits in the ImageFolder layout, read with torchvision's own ``ImageFolder``.

``root/<split>/<class>/<image>``: the generated world's ``imagefolder/`` folder, or real data such as
ImageNet's ``train/`` and ``val/`` folders. kdlib adds only checks that turn torchvision's deep errors
(an empty class folder, a missing split, a corrupt image) into one line naming the folder or file.
The world's object masks live at the same relative paths under ``masks/`` (see :mod:`kdlib.data.world`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from kdlib.errors import KdlibError


def load_image(path: str) -> Image.Image:
    """ImageFolder's loader, with a one-line error for an unreadable file."""
    try:
        with open(path, "rb") as f, Image.open(f) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise KdlibError(f"corrupt image {path}: {exc.__class__.__name__}; valid: a readable image file") from None


def split_root(root: str | os.PathLike) -> Path:
    """``root`` itself, or ``root/imagefolder`` when ``root`` is a generated world."""
    root = Path(root)
    return root / "imagefolder" if (root / "imagefolder").is_dir() else root


def load_split(root: str | os.PathLike, split: str, transform: Callable | None = None) -> ImageFolder:
    """torchvision ``ImageFolder`` over ``root/<split>`` after checking that every class folder has images."""
    base = split_root(root)
    folder = base / split
    if not folder.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise KdlibError(f"split folder {str(folder)!r} does not exist; valid: {', '.join(have) or 'a folder holding <split>/<class>/ images'}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise KdlibError(f"split folder {str(folder)!r} has no class folders; valid: {folder}/<class>/<image>")
    for c in classes:
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in c.iterdir() if f.is_file()):
            raise KdlibError(f"class folder {str(c)!r} holds no images; valid: at least one {'/'.join(IMG_EXTENSIONS[:3])}... file per class")
    return ImageFolder(str(folder), transform=transform, loader=load_image)
