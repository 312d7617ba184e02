"""Reconstruction evaluation of an autoencoder, one batch at a time (Ray-free; `pipelines.eval.actors`
maps it over a dataset), in two conventions (docs/reference.md §4.2, §6.13):

| step                     | "standard"                          | "reference" (hustvl/VGT evaluator)          |
|--------------------------|-------------------------------------|---------------------------------------------|
| model input              | centre crop of the prepared image   | squash-resize to resolution x resolution    |
| metric resolution        | the model's                         | bilinear, no antialias, to 256/448 of it    |
| PSNR                     | data range 1                        | data range 1                                |
| SSIM                     | Gaussian 11x11, data range 1        | skimage 7x7 uniform, sample cov, range 2.0  |
| Fréchet features input   | uint8 by rounding                   | uint8 by truncation                         |

Reconstructions are clamped to [-1,1] in both. The Fréchet distance uses EfficientNet-Lite0
features (`vgt.eval.efficientnet_lite`): a proxy, NOT FID; its numbers are not comparable with
published rFID values.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vgt.data.images import center_crop, decode_image, to_pixels

from .efficientnet_lite import INPUT_SIZE
from .image_metrics import psnr, ssim

CONVENTIONS = ("standard", "reference")
REFERENCE_METRIC_FRACTION = 256 / 448  # the reference measures 448 px reconstructions at 256 px


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (known: {', '.join(CONVENTIONS)})")


def model_inputs(images: list[bytes], resolution: int, convention: str) -> torch.Tensor:
    """Stored image bytes -> [B,3,res,res] in [-1,1] as the convention feeds the AE."""
    _check(convention)
    decoded = [decode_image(b) for b in images]
    if convention == "standard":
        return to_pixels([center_crop(im, resolution) for im in decoded])
    from PIL import Image

    return to_pixels([im.resize((resolution, resolution), Image.Resampling.BILINEAR) for im in decoded])


def metric_images(real: torch.Tensor, recon: torch.Tensor, convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and reconstructions in [-1,1] -> both in [0,1] at the convention's metric size."""
    _check(convention)
    real, recon = real.float(), recon.float().clamp(-1, 1)
    if convention == "reference":
        size = round(real.shape[-1] * REFERENCE_METRIC_FRACTION)
        real = F.interpolate(real, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        recon = F.interpolate(recon, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return (real + 1) / 2, (recon + 1) / 2


def feature_inputs(x01: torch.Tensor, convention: str) -> torch.Tensor:
    """[0,1] images -> uint8-quantised (round or truncate) [0,1] images at the feature net's size."""
    q = (x01 * 255).floor() if convention == "reference" else (x01 * 255).round()
    q = q.clamp(0, 255) / 255
    return F.interpolate(q, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def evaluate_batch(ae, images: list[bytes], resolution: int, convention: str, features=None) -> dict[str, np.ndarray]:
    """Per-row psnr, ssim (and real/recon feature vectors when `features` is a feature network)."""
    real = model_inputs(images, resolution, convention)
    recon = ae(real.to(next(ae.parameters()).device)).float().cpu()  # a bf16 AE decodes to bf16
    a, b = metric_images(real, recon, convention)
    out = {"psnr": psnr(a, b).numpy(), "ssim": ssim(a, b, mode=convention).numpy()}
    if features is not None:
        out["real_features"] = features(feature_inputs(a, convention)).double().numpy()
        out["recon_features"] = features(feature_inputs(b, convention)).double().numpy()
    return out
