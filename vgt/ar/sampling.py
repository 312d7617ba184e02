"""Parallel autoregressive sampling with a KV cache (docs/reference.md §2.7, with the fixes of §6.6-6.8).

The L latent tokens are generated in G = max(1, L // parallel_tokens) groups along a per-image
order (random or raster). Per group: one LLM forward yields the group's conditions, the flow head
samples one latent per query (SDE or ODE, CFG by batch doubling), each latent is LayerNorm-ed over
its channels, and the latents are fed back before the next group's queries.

Feed modes (what enters the LLM; P = group size, n_{g-1} = size of the previous group):

* "pairs" (the presets'): the context always equals the training layout `... q e q e ...` with
  training positions. A group's queries are evaluated at the positions they will hold in that
  layout (`p, p+2, ...`); afterwards the P-1 queries after the first are cropped from the cache
  (they were computed without their group's latents) and `e_0, q_1, e_1, ..., q_{P-1}, e_{P-1}` are
  fed ahead of the next group's queries. LLM tokens per step g >= 1: (2 n_{g-1} - 1) + P; the
  cache ends at prompt + 2L tokens. At P = 1 this is the reference's `[e_prev, q_next]`.
* "parity": the reference scheme. Positions are contiguous; for P > 1 the previous group's
  queries are re-fed interleaved with their latents, `[q_0 e_0 ... q_{P-1} e_{P-1}, Q_next]`, and
  the prediction-pass queries stay in the cache (queries later attend to these latent-less copies).
  LLM tokens per step g >= 1: 2 n_{g-1} + P; the cache ends at prompt + 3L - P_last tokens.
  For P = 1 it is identical to "pairs". Unlike the reference, the padding mask is carried.

In both modes a group's queries attend causally to the earlier queries of the same group (as in
the reference). Prompts are right-padded and the mask is carried, so every row sees exactly its
own prompt and positions continue per row. Randomness comes from one generator per image (order,
then the head's noise group by group), so an image does not depend on the rest of the batch.
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Collection

import torch
import torch.nn.functional as F

from .flow import guidance_at, sample_tokens
from .model import grid_of, interleave, positions_of, take
from .queries import group_sizes, token_order

FEED_MODES = ("pairs", "parity")


def image_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of image `index` of a call with `seed` (a hash, so nearby seeds do not collide)."""
    digest = hashlib.blake2b(f"vgt-image:{seed}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def normalize_latents(z: torch.Tensor) -> torch.Tensor:
    """Per-token LayerNorm over channels (no affine, eps 1e-6): what the AE produces and the AR consumes."""
    return F.layer_norm(z, z.shape[-1:], eps=1e-6)


class LLMContext:
    """Everything the LLM has seen, per row. With `use_cache` the past is a KV cache; without it the
    past embeddings are kept and the whole sequence is recomputed each call (the no-cache check)."""

    def __init__(self, llm, use_cache: bool = True, timed: bool = False):
        self.llm, self.use_cache, self.timed = llm, use_cache, timed
        self.cache = self.embeds = self.positions = self.mask = None
        self.forwards, self.tokens, self.seconds = 0, 0, 0.0

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append tokens [R, n, D] at `positions` [R, n]; returns their last hidden states [R, n, D]."""
        start = _clock(self.timed, embeds)
        n = embeds.shape[1]
        self.mask = _cat(self.mask, mask)
        if self.use_cache:
            hidden, self.cache = self.llm(embeds, attention_mask=self.mask, position_ids=positions,
                                          past_key_values=self.cache, use_cache=True)
        else:
            self.embeds, self.positions = _cat(self.embeds, embeds), _cat(self.positions, positions)
            hidden, _ = self.llm(self.embeds, attention_mask=self.mask, position_ids=self.positions)
            hidden = hidden[:, -n:]
        self.forwards, self.tokens = self.forwards + 1, self.tokens + n
        self.seconds += _clock(self.timed, hidden) - start
        return hidden

    def crop(self, n: int) -> None:
        """Forget the last `n` tokens."""
        if n <= 0:
            return
        self.mask = self.mask[:, :-n]
        if self.use_cache:
            self.cache.crop(-n)
        else:
            self.embeds, self.positions = self.embeds[:, :-n], self.positions[:, :-n]


class Rollout:
    """Drives the LLM through the groups: `conditions()` for the current group, then `advance(latents)`."""

    def __init__(self, model, embeds: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                 orders: torch.Tensor, sizes: list[int], feed_mode: str, use_cache: bool = True,
                 timed: bool = False):
        if feed_mode not in FEED_MODES:
            raise ValueError(f"unknown feed mode {feed_mode!r}; expected one of {FEED_MODES}")
        self.model, self.sizes, self.feed_mode = model, sizes, feed_mode
        self.multi = max(sizes) > 1  # reference "multi mode": re-feed queries with their latents
        queries, pos = model.queries(*grid)
        orders = orders.to(model.device)
        self.q, self.pos = take(queries[None], orders), take(pos[None], orders)  # generation order
        self.ctx = LLMContext(model.llm, use_cache, timed)
        self.pending = (embeds, positions_of(mask), mask)  # fed ahead of the next queries
        self.next_pos = mask.long().sum(1, keepdim=True)  # [R, 1] first free position per row
        self.group, self.start = 0, 0

    @property
    def size(self) -> int:
        return self.sizes[self.group]

    def conditions(self) -> torch.Tensor:
        """Conditions [R, P, D] of the current group's queries."""
        size, (embeds, positions, mask) = self.size, self.pending
        q = self.q[:, self.start:self.start + size]
        stride = 2 if self.feed_mode == "pairs" else 1  # pairs: leave room for each query's latent
        q_pos = self.next_pos + stride * torch.arange(size, device=q.device)
        hidden = self.ctx(torch.cat([embeds, q], 1), torch.cat([positions, q_pos], 1),
                          torch.cat([mask, mask.new_ones(q.shape[:2])], 1))
        return self.model.out_proj(hidden[:, -size:])

    def advance(self, latents: torch.Tensor) -> None:
        """Feed back the current group's (normalised) latents [R, P, C]."""
        size, sl = self.size, slice(self.start, self.start + self.size)
        e = self.model.in_proj(latents.to(self.model.dtype)) + self.pos[:, sl]
        if self.feed_mode == "pairs":
            self.ctx.crop(size - 1)  # keep q_0 (its context was complete), drop q_1.. (stale)
            chunk, first = interleave(self.q[:, sl], e)[:, 1:], self.next_pos + 1
        else:
            chunk = interleave(self.q[:, sl], e) if self.multi else e
            first = self.next_pos + size
        positions = first + torch.arange(chunk.shape[1], device=chunk.device)
        self.pending = (chunk, positions, positions.new_ones(positions.shape))
        self.next_pos = positions[:, -1:] + 1
        self.group, self.start = self.group + 1, self.start + size


def sample_latents(model, prompts: list[str], generators: list[torch.Generator], grid: tuple[int, int], *,
                   guidance_scale: float, cfg_schedule: str, num_steps: int, parallel_tokens: int, order: str,
                   sampler: str, feed_mode: str, temperature: float, use_cache: bool = True,
                   progress: Callable[[int, int], None] | None = None, stats: dict | None = None,
                   preview: Callable[[int, torch.Tensor], None] | None = None,
                   preview_after: Collection[int] = ()) -> torch.Tensor:
    """Captions -> normalised latents [N, C, h, w] (fp32), one generator per caption.

    Every sampling setting is required (no defaults here): callers resolve them against a pipeline
    folder's `config.sample` with `SampleConfig.resolve(...)` and pass `.as_kwargs()`.
    `guidance_scale == 1` runs without the unconditional rows. `stats`, when given, receives
    llm_forwards, llm_tokens (per row), llm_seconds and head_seconds. `preview(g, latents)` is
    called after each group g (1-based) in `preview_after` with a copy of the latents so far
    [N, C, h, w] (zeros where not sampled yet): partial images for streaming clients.
    """
    _require(guidance_scale=guidance_scale, cfg_schedule=cfg_schedule, num_steps=num_steps,
             parallel_tokens=parallel_tokens, order=order, sampler=sampler, feed_mode=feed_mode,
             temperature=temperature)
    if len(prompts) != len(generators):
        raise ValueError(f"{len(prompts)} prompts but {len(generators)} generators (one per image)")
    h, w = grid
    n, num_tokens, guided = len(prompts), h * w, guidance_scale != 1
    sizes = group_sizes(num_tokens, parallel_tokens)
    orders = torch.stack([token_order(num_tokens, order, g) for g in generators])
    texts = model.prompt_texts(prompts) + ([model.config.uncond_prompt] * n if guided else [])
    with torch.no_grad():
        embeds, mask = model.embed_prompts(texts)
        roll = Rollout(model, embeds, mask, grid, orders.repeat(2 if guided else 1, 1), sizes, feed_mode,
                       use_cache, timed=stats is not None)
        out = torch.zeros(n, num_tokens, model.latent_dim, device=model.device)
        head_seconds = 0.0
        for g, size in enumerate(sizes):
            cond = roll.conditions().flatten(0, 1)  # [R*P, D], image-major
            start = _clock(stats is not None, cond)
            z = sample_tokens(model.head, cond[:n * size], _noise(generators, size, model.latent_dim, cond),
                              num_steps, sampler, cond[n * size:] if guided else None,
                              guidance_at(cfg_schedule, guidance_scale, g, len(sizes)), temperature)
            z = normalize_latents(z).view(n, size, -1)
            head_seconds += _clock(stats is not None, z) - start
            idx = orders[:, roll.start:roll.start + size].to(out.device)
            out.scatter_(1, idx[..., None].expand_as(z), z)
            if g + 1 < len(sizes):
                roll.advance(z.repeat(2, 1, 1) if guided else z)
            if preview is not None and g + 1 in preview_after:
                preview(g + 1, grid_of(out, h, w).float().clone())
            if progress is not None:
                progress(g + 1, len(sizes))
    if stats is not None:
        stats.update(llm_forwards=roll.ctx.forwards, llm_tokens=roll.ctx.tokens,
                     llm_seconds=roll.ctx.seconds, head_seconds=head_seconds)
    return grid_of(out, h, w)


def teacher_forced_conditions(model, prompts: list[str], latents: torch.Tensor, orders: torch.Tensor,
                              parallel_tokens: int, feed_mode: str, use_cache: bool = True) -> torch.Tensor:
    """The conditions [N, L, D] (raster order) the sampler computes when fed the given latents
    [N, C, h, w] in `orders` [N, L] instead of sampled ones (for checks against training)."""
    _require(parallel_tokens=parallel_tokens, feed_mode=feed_mode)
    h, w = latents.shape[-2:]
    sizes = group_sizes(h * w, parallel_tokens)
    tokens = latents.flatten(2).transpose(1, 2).to(model.device)
    embeds, mask = model.embed_prompts(model.prompt_texts(prompts))
    roll = Rollout(model, embeds, mask, (h, w), orders, sizes, feed_mode, use_cache)
    out = []
    for g, size in enumerate(sizes):
        out.append(roll.conditions())
        if g + 1 < len(sizes):
            roll.advance(take(tokens, orders[:, roll.start:roll.start + size].to(model.device)))
    cond = torch.cat(out, 1)
    idx = orders.to(cond.device)[..., None].expand_as(cond)
    return torch.zeros_like(cond).scatter(1, idx, cond)


def _require(**settings) -> None:
    """The sampler has no hidden defaults: a setting left as None is an error, not a fallback."""
    missing = [name for name, value in settings.items() if value is None]
    if missing:
        raise TypeError(f"sampling setting(s) {missing} missing: resolve them against the pipeline's "
                        "config.sample (SampleConfig.resolve) and pass every one")


def _noise(generators, size: int, channels: int, like: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Fresh [N*P, C] normals, image-major, each image's block from its own generator."""
    return lambda: torch.cat([torch.randn(size, channels, generator=g) for g in generators]).to(like.device)


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], 1)


def _clock(enabled: bool, like: torch.Tensor) -> float:
    """Wall time, after the device has finished (so LLM/head timings split correctly on GPUs)."""
    if enabled and like.is_cuda:
        torch.cuda.synchronize(like.device)
    return time.perf_counter()
