"""ConvNeXt-Small classifier in plain torch, torchvision's state-dict layout (`convnext_small`).

Frozen, eval-only (used for the perceptual logit loss), so stochastic depth is left out.
Unverified until real torchvision IMAGENET1K_V1 weights are tried.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SMALL_DEPTHS = (3, 3, 27, 3)
SMALL_DIMS = (96, 192, 384, 768)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B,C,H,W] tensor (torchvision's `LayerNorm2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """dwconv7x7 -> LN -> Linear(4x) -> GELU -> Linear -> layer scale, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim), Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
            Permute((0, 3, 1, 2)))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """`features` (stem, stages, downsamples) -> global average pool -> `classifier` logits."""

    def __init__(self, depths=SMALL_DEPTHS, dims=SMALL_DIMS, num_classes: int = 1000):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        layers: list[nn.Module] = [stem]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers.append(nn.Sequential(*(CNBlock(dim) for _ in range(depth))))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6),
                                            nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1),
                                        nn.Linear(dims[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))
