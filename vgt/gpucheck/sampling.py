"""Sampling latency of one image at the preset's resolution for 1, 4 and 16 latent tokens per LLM step, as
Serve's GPU replicas run it: bf16 weights, the kernel chosen for bf16, the preset's `config.sample`."""
from __future__ import annotations

import torch

from vgt.ar.sampling import image_generator, sample_latents

from .context import Check
from .train import build_model

PARALLEL = (1, 4, 16)
PROMPT = "a photograph of a red bicycle leaning against a blue brick wall on a sunny street"


def run_sampling(check: Check, tokenizer) -> dict:
    model = build_model(check, tokenizer).eval().to(check.compute_dtype)
    attention = model.use_attention(check.device, check.compute_dtype)
    tokens = check.grid[0] * check.grid[1]
    out = {"attention": attention, "weights": str(check.compute_dtype), "latent_tokens": tokens, "cases": []}
    for parallel in PARALLEL:
        settings = check.cfg.sample.resolve(num_tokens=tokens, parallel_tokens=parallel)
        stats: dict = {}

        def once():
            sample_latents(model, [PROMPT], [image_generator(0, 0)], check.grid, **settings.as_kwargs(), stats=stats)

        seconds = check.seconds(once, repeats=1, warmup=1)
        case = {"parallel_tokens": settings.parallel_tokens, "seconds": seconds, **settings.as_kwargs(),
                "llm_forwards": stats["llm_forwards"], "llm_tokens": stats["llm_tokens"],
                "llm_s": stats["llm_seconds"], "head_s": stats["head_seconds"]}
        out["cases"].append(case)
        check.row("sampling latency", f"1 image, {check.cfg.data.resolution} px, {settings.parallel_tokens} tokens/step "
                  f"({stats['llm_forwards']} LLM forwards, {settings.num_steps} flow steps, CFG "
                  f"{settings.guidance_scale:g}, {attention})", round(seconds, 3), "s",
                  note=f"LLM {stats['llm_seconds']:.2f} s, head {stats['head_seconds']:.2f} s")
    del model
    if check.cuda:
        torch.cuda.empty_cache()
    return out
