"""PSNR and SSIM per image, in two conventions (docs/reference.md §4.2, §6.13).

- "standard": Wang et al. (2004) SSIM, an 11x11 Gaussian window (sigma 1.5), population
  statistics, data range 1, valid positions only; PSNR with data range 1.
- "reference": what the reference evaluator computes with scikit-image's
  `structural_similarity(..., channel_axis=-1, data_range=2.0)` on images in [0,1]: a 7x7 uniform
  window, sample (N-1) covariance, constants from data range 2 (which inflates SSIM), the
  border of half a window excluded. PSNR is the same in both (skimage, data range 1).

Inputs are float tensors [B,C,H,W] in [0,1]; results are float64 tensors [B]. Computed in float64
so the two conventions differ only by definition, never by rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("standard", "reference")
K1, K2 = 0.01, 0.03


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two [B,C,H,W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """10 log10(range^2 / MSE) per image (inf for identical images, as scikit-image)."""
    _check(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _window(mode: str) -> tuple[torch.Tensor, float]:
    """The 2-D averaging window and the covariance normalisation of `mode`."""
    if mode == "standard":
        g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
        g = g / g.sum()
        return torch.outer(g, g), 1.0
    if mode == "reference":
        n = 7 * 7
        return torch.full((7, 7), 1.0 / n, dtype=torch.float64), n / (n - 1)
    raise ValueError(f"unknown SSIM mode {mode!r} (known: {', '.join(MODES)})")


def ssim(x: torch.Tensor, y: torch.Tensor, mode: str = "standard") -> torch.Tensor:
    """Mean SSIM per image over channels and valid window positions."""
    _check(x, y)
    window, cov_norm = _window(mode)
    data_range = 1.0 if mode == "standard" else 2.0
    if min(x.shape[-2:]) < window.shape[0]:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the {window.shape[0]}px SSIM window")
    c = x.shape[1]
    kernel = window.expand(c, 1, *window.shape)
    x, y = x.double(), y.double()

    def local(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)  # valid positions only

    ux, uy = local(x), local(y)
    vx = cov_norm * (local(x * x) - ux * ux)
    vy = cov_norm * (local(y * y) - uy * uy)
    vxy = cov_norm * (local(x * y) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)

