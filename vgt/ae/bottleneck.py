"""The VGT-AE bottleneck: projector features -> 32-channel latent grid (docs/reference.md §1.2 steps 6-9).

Parameter names follow the reference checkpoint (`down_blocks.{i}.mlp.{0,1,3}`, `down_mlp.{0,1,3}`)
so converted weights load without renaming.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LATENT_LN_EPS = 1e-6  # per-token channel LayerNorm (also re-applied by the AR sampler, docs/reference.md §1.7)


class ResidualMLPBlock(nn.Module):
    """x + Linear(GELU(Linear(LN(x)))) at projector width."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


def down_mlp(dim: int, latent_channels: int) -> nn.Sequential:
    """LN(eps 1e-5) -> Linear(D->C) -> GELU -> Linear(C->C): the projection to latent channels."""
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-5), nn.Linear(dim, latent_channels), nn.GELU(),
                         nn.Linear(latent_channels, latent_channels))


def init_new_layers(module: nn.Module) -> None:
    """Reference init of the layers VGT adds: trunc-normal(0.02) linears, zero biases, unit LN."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def tokens_to_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h*w, C] raster-order tokens -> [B, C, h, w]."""
    b, n, c = tokens.shape
    if n != height * width:
        raise ValueError(f"got {n} tokens for a {height}x{width} latent grid")
    return tokens.transpose(1, 2).reshape(b, c, height, width)


def channel_layer_norm(z: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of each spatial position, no affine: [B,C,h,w] -> same."""
    return F.layer_norm(z.movedim(1, -1), (z.shape[1],), eps=LATENT_LN_EPS).movedim(-1, 1)


def add_latent_noise(z: torch.Tensor, gamma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """z + a*eps with a ~ U[0, gamma] drawn once per sample and eps ~ N(0, I)."""
    a = torch.rand((z.shape[0], 1, 1, 1), generator=generator, device=z.device, dtype=z.dtype) * gamma
    eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return z + a * eps
