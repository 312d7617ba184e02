"""Images for the training stages: prepared bytes -> crops -> [-1, 1] pixels, and preview grids."""
from __future__ import annotations

import torch
from PIL import Image

from vgt.data import decode_image, to_pixels, to_uint8


def random_crop_flip(img: Image.Image, size: int, generator: torch.Generator) -> Image.Image:
    """A `size` square at a uniform random offset, mirrored with probability 1/2.

    The AE stage's augmentation (docs/reference.md §1.5).
    """
    w, h = img.size
    if min(w, h) < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}; was it prepared at another resolution?")
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    img = img.crop((left, top, left + size, top + size))
    if bool(torch.rand((), generator=generator) < 0.5):
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def augmented_pixels(rows: list[dict], size: int, generator: torch.Generator) -> torch.Tensor:
    return to_pixels([random_crop_flip(decode_image(r["image"]), size, generator) for r in rows])


def image_grid(rows: list[torch.Tensor]) -> Image.Image:
    """Rows of [B, 3, H, W] images in [-1, 1] (same shapes) -> one RGB image, a row per tensor."""
    grid = torch.cat([torch.cat(list(r.detach().float().cpu()), dim=2) for r in rows], dim=1)
    return Image.fromarray(to_uint8(grid[None])[0])


def device_generator(device: torch.device, generator: torch.Generator) -> torch.Generator:
    """A generator on `device` seeded from a CPU one (CUDA ops refuse CPU generators)."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
