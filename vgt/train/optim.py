"""Optimiser pieces shared by the AE and AR stages: parameter groups, warm-up + cosine (EMA: vgt.train.ema)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

# docs/reference.md §1.5: no weight decay for 1-d tensors and for names containing any of these.
NO_DECAY_KEYWORDS = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")


def param_groups(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 lr_mult: dict[str, float] | None = None,
                 no_decay_keywords: tuple[str, ...] = ()) -> list[dict]:
    """AdamW groups: {prefix with its LR multiplier, rest} x {decay, no decay}; empty groups dropped.

    A parameter gets no decay when it has fewer than 2 dims or its name contains a keyword.
    `lr_mult` maps a name prefix (e.g. "encoder.") to an LR multiplier (0.5 for the encoder in
    docs/reference.md §1.5).
    """
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        mult = next((m for prefix, m in (lr_mult or {}).items() if name.startswith(prefix)), 1.0)
        decay = p.ndim >= 2 and not any(k in name for k in no_decay_keywords)
        buckets.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": lr * mult, "weight_decay": weight_decay if decay else 0.0}
            for (mult, decay), ps in sorted(buckets.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]


def warmup_cosine(warmup: int, total: int, end_ratio: float) -> Callable[[int], float]:
    """LR ratio for the (s+1)-th update: linear (s+1)/warmup, then half-cosine from 1 to `end_ratio`.

    A LambdaLR ratio, so groups with an LR multiplier follow the same shape scaled (docs/reference.md §1.5).
    Unlike the reference, the first update already has a non-zero LR.
    """
    def ratio(s: int) -> float:
        k = s + 1
        if k <= warmup:
            return k / warmup
        progress = min(1.0, (k - warmup) / max(1, total - warmup))
        return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return ratio


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def scheduler(opt: torch.optim.Optimizer, warmup: int, total: int, end_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, end_ratio))
