"""Flow matching for the per-token head: timesteps, velocity loss, samplers, guidance schedules.

Convention (docs/reference.md §2.5): t = 0 is noise, t = 1 is data; `x_t = t x1 + (1 - t) eps`, the head
regresses the velocity `u = x1 - eps`. All randomness comes from explicit `torch.Generator`s,
drawn on the CPU and moved to the tensors' device, so results do not depend on the device RNG.
"""
from __future__ import annotations

from typing import Callable

import torch

SDE_LAST_STEP = 0.04  # the reference SDE stops at t = 0.96 and finishes with one Euler step


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """`1 - k t / (1 + (k - 1) t)`: for k > 1 pushes timesteps toward the noisy end (t = 0)."""
    return 1 - shift * t / (1 + (shift - 1) * t)


def sample_timesteps(n: int, generator: torch.Generator, shift: float | None = None) -> torch.Tensor:
    """Logit-normal t in (0, 1), fp32 on the CPU, optionally shifted."""
    t = torch.sigmoid(torch.randn(n, generator=generator))
    return time_shift(t, shift) if shift is not None else t


def randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal drawn from a CPU generator, placed on `like`'s device (fp32)."""
    return torch.randn(shape, generator=generator).to(like.device)


def flow_loss(head, x1: torch.Tensor, cond: torch.Tensor, generator: torch.Generator,
              shift: float | None = None, fp32: bool = True, return_repa: bool = False, batch_mul: int = 1):
    """Velocity-MSE over N tokens: x1 [N, C] targets, cond [N, D]. Returns (loss, repa features or None).

    fp32=True keeps t, noise, x_t and the target velocity in fp32 (the reference casts t and the
    targets to the bf16 model dtype, `fp32=False`); the squared error is always taken in fp32.
    batch_mul > 1 scores every token at that many independent (t, noise) draws (MAR's diffusion
    batch multiplier): more head signal per backbone forward; REPA features are of the first draw.
    """
    if batch_mul < 1:
        raise ValueError(f"batch_mul must be >= 1, got {batch_mul}")
    x1, cond = x1.repeat(batch_mul, 1), cond.repeat(batch_mul, 1)
    n = x1.shape[0]
    t = sample_timesteps(n, generator, shift).to(x1.device)
    eps = randn(x1.shape, generator, x1)
    x1 = x1.float()
    if not fp32:
        t, x1, eps = t.to(cond.dtype), x1.to(cond.dtype), eps.to(cond.dtype)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * eps
    out = head(x_t.to(cond.dtype), t, cond, return_repa=return_repa)
    v, repa = out if return_repa else (out, None)
    loss = (v.float() - (x1 - eps).float()).pow(2).mean(dim=-1).mean()
    return loss, (repa[: n // batch_mul] if repa is not None else None)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return v_uncond + scale * (v_cond - v_uncond)


def guidance_at(schedule: str, scale: float, group: int, num_groups: int) -> float:
    """Guidance for AR group `group` of `num_groups`.

    "constant": `scale` everywhere. "linear" (reference default): `1 + (scale - 1) (G - g) / G`,
    i.e. full guidance for the first group, decaying toward 1 over the generation order.
    """
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1 + (scale - 1) * (num_groups - group) / num_groups
    raise ValueError(f"unknown cfg schedule {schedule!r}; expected 'linear' or 'constant'")


def sample_tokens(head, cond: torch.Tensor, noise: Callable[[], torch.Tensor], num_steps: int,
                  method: str, uncond: torch.Tensor | None = None, scale: float = 1.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """Draw one latent per condition row: cond [N, D] -> x [N, C] (fp32).

    `noise()` returns a fresh [N, C] standard normal each call (the caller derives it from per-image
    generators). With `uncond` [N, D] the head runs on the doubled batch and the velocities are
    combined with guidance `scale` (classifier-free guidance).
    method "sde": the reference Euler-Maruyama sampler (grid linspace(0, 0.96, num_steps), drift
    (1 + t) v - x, diffusion sqrt(2 (1 - t)), then one Euler step of 0.04): `num_steps` head calls;
    `temperature` multiplies every noise draw, the start's and the SDE's diffusion term's (MAR's
    temperature on its diffusion sampler's noise).
    method "ode": deterministic Euler on linspace(0, 1, num_steps + 1): `num_steps` head calls.
    """
    if num_steps < (2 if method == "sde" else 1):
        raise ValueError(f"num_steps must be >= 2 for the SDE sampler and >= 1 for the ODE, got {num_steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    velocity = _velocity_fn(head, cond, uncond, scale)
    x = temperature * noise()
    if method == "ode":
        grid = torch.linspace(0, 1, num_steps + 1)
        for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + velocity(x, t0) * (t1 - t0)
        return x
    if method != "sde":
        raise ValueError(f"unknown sampler {method!r}; expected 'sde' or 'ode'")
    grid = torch.linspace(0, 1 - SDE_LAST_STEP, num_steps)
    for t0, t1 in zip(grid[:-1].tolist(), grid[1:].tolist()):
        dt = t1 - t0
        drift = (1 + t0) * velocity(x, t0) - x  # v + (1 - t) * score, score = (t v - x) / (1 - t)
        x = x + drift * dt + temperature * (2 * (1 - t0) * dt) ** 0.5 * noise()
    return x + velocity(x, grid[-1].item()) * SDE_LAST_STEP


def _velocity_fn(head, cond, uncond, scale):
    n = cond.shape[0]
    both = cond if uncond is None else torch.cat([cond, uncond])

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        xs = x if uncond is None else torch.cat([x, x])
        ts = torch.full((both.shape[0],), t, device=cond.device)
        v = head(xs.to(cond.dtype), ts, both).float()
        return v if uncond is None else cfg_combine(v[:n], v[n:], scale)

    return velocity
