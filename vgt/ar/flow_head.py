"""The per-token flow-matching head: an AdaLN residual MLP (docs/reference.md §2.5, NextStep-1's SimpleMLPAdaLN).

Each latent token is denoised independently: `v = head(x_t, t, c)` with `x_t` the noisy token
[N, 32], `t` its time [N] in [0, 1] (0 = noise, 1 = data) and `c` the LLM condition [N, D].
Submodule names follow the reference's `image_head.net.*` so checkpoints map one to one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

FREQ_DIM = 256  # sinusoidal time features before the time MLP


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (the reference: raw t in [0, 1], not t*1000): dim/2 cosines, then dim/2 sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbed(nn.Module):
    def __init__(self, width: int, time_scale: float = 1.0):
        super().__init__()
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t * self.time_scale).to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x <- x + gate * MLP(LN(x) * (1 + scale) + shift), (shift, scale, gate) from the condition y."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


REPA_HIDDEN = 2048  # the reference's fixed REPA projector width


class FlowHead(nn.Module):
    """Velocity predictor. `repa_dim > 0` adds the REPA projector read after block depth // 2."""

    def __init__(self, latent_dim: int, cond_dim: int, width: int = 1536, depth: int = 12, repa_dim: int = 0,
                 time_scale: float = 1.0):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"flow head needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        self.latent_dim = latent_dim
        self.time_embed = TimeEmbed(width, time_scale)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(latent_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, latent_dim)
        # Reference: features after block `repa_encoder_depth` = 6 of 12, i.e. after depth // 2 blocks.
        self.repa_depth = max(1, depth // 2)
        self.repa_projector = None
        if repa_dim:
            self.repa_projector = nn.Sequential(
                nn.Linear(width, REPA_HIDDEN), nn.SiLU(), nn.Linear(REPA_HIDDEN, REPA_HIDDEN), nn.SiLU(),
                nn.Linear(REPA_HIDDEN, repa_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # Zero modulation and output: the head starts as the zero velocity, blocks as identities.
        zeroed = [b.adaLN_modulation[-1] for b in self.res_blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, return_repa: bool = False):
        """x [N, latent_dim], t [N], c [N, cond_dim] -> v [N, latent_dim] (and REPA features [N, repa_dim])."""
        y = self.time_embed(t) + self.cond_embed(c)
        h = self.input_proj(x)
        repa = None
        for i, block in enumerate(self.res_blocks):
            h = block(h, y)
            if return_repa and i + 1 == self.repa_depth:
                if self.repa_projector is None:
                    raise ValueError("REPA features requested but the head has no projector (ar.head.repa_dim=0)")
                repa = self.repa_projector(h)
        v = self.final_layer(h, y)
        return (v, repa) if return_repa else v
