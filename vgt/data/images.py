"""Stored image bytes -> pixels: decode, centre crop, [-1, 1] tensors (prep-latents, training)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def decode_image(data: bytes) -> Image.Image:
    """Prepared-dataset image bytes (JPEG/PNG, already RGB) -> an RGB PIL image."""
    img = Image.open(io.BytesIO(data))
    return img if img.mode == "RGB" else img.convert("RGB")


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central `size` x `size` square (prep stores the shorter side at `size`)."""
    w, h = img.size
    if min(w, h) < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}; was it prepared at another resolution?")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (clamped, rounded): the inverse of `to_pixels`."""
    import torch

    return ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def center_crops(images: Sequence[bytes], size: int) -> np.ndarray:
    """Prepared image bytes -> uint8 [B, size, size, 3]: their decoded centre crops (no torch)."""
    return np.stack([np.asarray(center_crop(decode_image(b), size), dtype=np.uint8) for b in images])


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    """Same-size RGB images -> float32 [B, 3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    return uint8_to_pixels(np.stack([np.asarray(img, dtype=np.uint8) for img in images]))


def uint8_to_pixels(arr: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (x / 127.5 - 1): `to_uint8`'s inverse.
    `arr` may be read-only (a Ray object): the float copy is made by numpy."""
    import torch  # here, so prep workers that only clean rows never import torch

    return torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)
