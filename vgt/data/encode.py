"""Stored images -> AE latents of their centre crops (prep-latents; training's on-the-fly fallback)."""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from .images import center_crops, uint8_to_pixels


def center_crop_pixels(images: Sequence[bytes], resolution: int) -> torch.Tensor:
    """Prepared image bytes -> float32 [B, 3, resolution, resolution] in [-1, 1] (centre crops)."""
    return uint8_to_pixels(center_crops(images, resolution))


@torch.inference_mode()
def encode_pixels(ae: torch.nn.Module, pixels: torch.Tensor, bf16: bool = False) -> np.ndarray:
    """`ae.encode` on the AE's device -> float16 numpy [B, C, h, w]. `bf16` autocasts on CUDA only."""
    device = next(ae.parameters()).device
    use_bf16 = bf16 and device.type == "cuda"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with ctx:
        latents = ae.encode(pixels.to(device, non_blocking=True))
    return latents.float().cpu().numpy().astype(np.float16)
