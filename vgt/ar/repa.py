"""REPA teachers: callables `(pixels [B,3,H,W] in [-1,1], (h, w)) -> features [B, h*w, dim]`.

The model only needs such a callable (`VGTModel.attach_repa_teacher`) or precomputed
`teacher_features`. The reference teacher is DINOv3 ViT-B/16 from timm (docs/reference.md §2.6); timm is an
optional dependency (it pulls torchvision and a CUDA torch), so it is imported only when asked for.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DINOV3 = "vit_base_patch16_dinov3.lvd1689m"


def patch_tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Square row-major patch tokens [B, s*s, C] -> [B, h*w, C], bilinearly resized when s*s != h*w grid."""
    batch, n, dim = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"teacher returned {n} patch tokens, not a square grid")
    x = tokens.transpose(1, 2).reshape(batch, dim, side, side)
    if (side, side) != tuple(grid):
        x = F.interpolate(x.float(), size=grid, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


class TimmTeacher(nn.Module):
    """A frozen timm ViT: [-1,1] pixels -> [0,1] -> timm eval resize/centre-crop + normalisation ->
    patch tokens without the class/register tokens -> the latent grid."""

    def __init__(self, vit: nn.Module, input_size: tuple[int, int], mean, std, crop_pct: float = 1.0):
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self.input_size, self.crop_pct = tuple(input_size), crop_pct
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = (pixels.float() + 1) / 2
        scaled = [round(s / self.crop_pct) for s in self.input_size]
        x = F.interpolate(x, size=scaled, mode="bicubic", align_corners=False, antialias=True)
        top, left = (scaled[0] - self.input_size[0]) // 2, (scaled[1] - self.input_size[1]) // 2
        x = x[..., top:top + self.input_size[0], left:left + self.input_size[1]]
        tokens = self.vit.forward_features((x - self.mean) / self.std)
        return patch_tokens_to_grid(tokens[:, getattr(self.vit, "num_prefix_tokens", 1):], grid)


def dinov3_teacher(name: str = DINOV3) -> TimmTeacher:
    """The reference REPA teacher (pretrained weights through timm's hub download)."""
    try:
        import timm
    except ImportError as err:
        raise ImportError("the DINOv3 REPA teacher needs timm (pip install timm); alternatively pass "
                          "teacher_features to VGTModel.forward or attach another teacher") from err
    vit = timm.create_model(name, pretrained=True, num_classes=0)
    data = timm.data.resolve_model_data_config(vit)
    return TimmTeacher(vit, data["input_size"][-2:], data["mean"], data["std"], data.get("crop_pct", 1.0))
