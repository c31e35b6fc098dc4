"""Checks every measure runs on its inputs: one line naming the bad value and what is valid."""

from __future__ import annotations

import torch

from kdlib.errors import KdlibError


def check_maps(maps: torch.Tensor, where: str = "maps") -> torch.Tensor:
    """Attribution maps: a float tensor ``[N, C, H, W]`` of finite values (NaN or inf: the first one named)."""
    if not torch.is_tensor(maps) or maps.dim() != 4 or not maps.is_floating_point():
        shape = tuple(maps.shape) if torch.is_tensor(maps) else type(maps).__name__
        raise KdlibError(f"{where} of shape {shape}; valid: a float tensor [images, channels, height, width]")
    bad = ~torch.isfinite(maps)
    if bool(bad.any()):
        n, c, y, x = (int(v) for v in bad.nonzero()[0])
        raise KdlibError(f"{where}: image {n} has {float(maps[n, c, y, x])} at channel {c}, pixel ({y}, {x}); valid: finite values")
    return maps


def check_masks(masks: torch.Tensor, like: torch.Tensor, where: str = "masks") -> torch.Tensor:
    """Object masks ``[N, H, W]`` (0 background, 1 object, 2 part) of the same images and size as ``like``
    (maps or images ``[N, C, H, W]``)."""
    if not torch.is_tensor(masks) or masks.dim() != 3:
        shape = tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__
        raise KdlibError(f"{where} of shape {shape}; valid: [images, height, width]")
    if masks.shape[0] != like.shape[0] or tuple(masks.shape[1:]) != tuple(like.shape[-2:]):
        raise KdlibError(
            f"{where} of shape {tuple(masks.shape)} do not match the {like.shape[0]} images of "
            f"{like.shape[-2]}x{like.shape[-1]} px; valid: one mask of each image's size"
        )
    if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) > 2):
        raise KdlibError(f"{where} hold values {int(masks.min())}..{int(masks.max())}; valid: 0 background, 1 object, 2 part")
    return masks


def check_aligned(maps: torch.Tensor, images: torch.Tensor, where: str = "maps") -> torch.Tensor:
    """Maps ``[N, C or 1, H, W]`` of images ``[N, C, H, W]``: one per image, of the image's size."""
    if maps.shape[0] != images.shape[0] or tuple(maps.shape[-2:]) != tuple(images.shape[-2:]) or maps.shape[1] not in (1, images.shape[1]):
        raise KdlibError(f"{where} of shape {tuple(maps.shape)} do not match images of shape {tuple(images.shape)}; "
                         f"valid: [{images.shape[0]}, 1 or {images.shape[1]}, {images.shape[-2]}, {images.shape[-1]}]")
    return maps


def check_labels(labels: torch.Tensor, n: int, num_classes: int, where: str = "labels") -> torch.Tensor:
    if labels.shape != (n,) or (n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)):
        raise KdlibError(f"{where} of shape {tuple(labels.shape)}; valid: {n} class indices in 0..{num_classes - 1}")
    return labels.long()
