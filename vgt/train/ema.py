"""Exponential moving average of a module's trainable parameters (the AR stage's EMA weights).

After update k: k <= start -> a copy of the weights; k > start -> d*ema + (1-d)*weights (the
reference's EMAHook with `begin_iter`). Under FSDP2 the shadows are sharded like the parameters.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, start: int):
        self.decay, self.start = decay, start
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self, updates_done: int) -> None:
        for name, p in self.params.items():
            if updates_done <= self.start:
                self.shadow[name].copy_(p.detach())
            else:
                self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """The EMA weights in the parameters inside the block, the training weights again after it."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        self._load(self.shadow)
        try:
            yield
        finally:
            self._load(backup)

    @torch.no_grad()
    def _load(self, values: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(values[name])
