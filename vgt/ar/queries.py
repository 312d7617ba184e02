"""Position queries and the token-order schedule.

`PositionQueries` holds the reference's two learned max_grid x max_grid maps (docs/reference.md §2.2): a query
map and a 2-D position map, both centre-cropped to the latent grid and flattened row-major. The
query token of position k is `query_k + pos_k`; the latent token is `in_proj(z_k) + pos_k`.
"""
from __future__ import annotations

import torch
from torch import nn


class PositionQueries(nn.Module):
    def __init__(self, dim: int, max_grid: int = 64):
        super().__init__()
        self.max_grid = max_grid
        self.query_map = nn.Parameter(torch.empty(1, dim, max_grid, max_grid))
        self.pos_map = nn.Parameter(torch.empty(1, dim, max_grid, max_grid))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim = self.query_map.shape[1]
        nn.init.normal_(self.query_map, std=dim ** -0.5)
        nn.init.trunc_normal_(self.pos_map, std=0.02)

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (queries, pos), each [h*w, D] in raster order; queries already include pos."""
        pos = self._crop(self.pos_map, h, w)
        return self._crop(self.query_map, h, w) + pos, pos

    def _crop(self, grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not (1 <= h <= self.max_grid and 1 <= w <= self.max_grid):
            raise ValueError(f"latent grid {h}x{w} outside the learned {self.max_grid}x{self.max_grid} maps")
        top, left = (self.max_grid - h) // 2, (self.max_grid - w) // 2
        return grid[0, :, top:top + h, left:left + w].flatten(1).T


def token_order(num_tokens: int, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Generation order over raster indices: "raster" (0..L-1) or "random" (a permutation)."""
    if order == "raster":
        return torch.arange(num_tokens)
    if order == "random":
        return torch.randperm(num_tokens, generator=generator)
    raise ValueError(f"unknown token order {order!r}; expected 'random' or 'raster'")


def group_sizes(num_tokens: int, parallel_tokens: int) -> list[int]:
    """Split L tokens into G = max(1, L // parallel_tokens) near-equal groups, the first L mod G one larger."""
    if not 1 <= parallel_tokens <= num_tokens:
        raise ValueError(f"parallel_tokens must be in 1..{num_tokens} (latent tokens), got {parallel_tokens}")
    groups = max(1, num_tokens // parallel_tokens)
    base, extra = divmod(num_tokens, groups)
    return [base + 1] * extra + [base] * (groups - extra)
