"""Attention kernels compared by their outputs, not their speed.

The same weights in bf16 run each kernel (sdpa; eager, transformers' reference; flash_attention_2 where
flash-attn imports on CUDA) on the inputs where kernels can disagree: right-padded prompts of different
lengths (a training forward), KV-cached sampling steps with the pairs feed mode's gapped position ids,
and with the parity mode's contiguous ones. Each output is compared with the fp32 sdpa output of the same
weights; sdpa in bf16 sets the rounding floor, and another kernel passes when its error stays within
twice that floor (a kernel that drops the padding mask lands at 10-20x the floor on the tiny model:
tests/test_gpucheck.py).
"""
from __future__ import annotations

import copy

import torch

from vgt.ar.model import tokens_of
from vgt.ar.queries import token_order
from vgt.ar.sampling import teacher_forced_conditions
from vgt.backbones import apply_attn_implementation
from vgt.backbones.families import flash_attention_importable

from .context import Check, relative_error
from .train import batch_latents, build_model

PROMPTS = ["a red apple", "a photograph of a red bicycle leaning against a blue brick wall on a sunny street"]
FLOOR_FACTOR = 2.0
ABS_SLACK = 1e-3  # below this every kernel agrees (a floor of ~0 when bf16 rounds nothing away)


def kernels(check: Check) -> tuple[list[str], str]:
    """(kernels to compare, what was left out and why)."""
    ok, why = flash_attention_importable()
    if check.cuda and ok:
        return ["sdpa", "eager", "flash_attention_2"], f"flash_attention_2 compared ({why})"
    reason = why if check.cuda else "CPU run: flash-attention kernels run on CUDA only"
    return ["sdpa", "eager"], f"SDPA and eager only: flash_attention_2 not compared ({reason})"


def cases(check: Check, latents: torch.Tensor, orders: torch.Tensor) -> dict:
    """name -> fn(model) -> output tensor."""
    parallel = min(4, orders.shape[1])

    def training(model):
        embeds, mask = model.embed_prompts(model.prompt_texts(PROMPTS))
        return model.training_conditions(embeds, mask, tokens_of(latents), check.grid, orders)

    def cached(mode):
        return lambda model: teacher_forced_conditions(model, PROMPTS, latents, orders, parallel, mode)

    return {"training forward, right-padded prompts": training,
            f"KV-cached steps, pairs feed (gapped position_ids), {parallel} tokens/step": cached("pairs"),
            f"KV-cached steps, parity feed, {parallel} tokens/step": cached("parity")}


@torch.no_grad()
def run_kernels(check: Check, tokenizer) -> dict:
    names, note = kernels(check)
    reference = build_model(check, tokenizer).eval()
    reference.use_attention(check.device, torch.float32)  # sdpa (CPU choice / fp32 on CUDA)
    half = copy.deepcopy(reference).to(torch.bfloat16)
    latents = batch_latents(check, len(PROMPTS))
    g = torch.Generator().manual_seed(2)
    orders = torch.stack([token_order(check.grid[0] * check.grid[1], "random", g) for _ in PROMPTS])
    mask = reference.embed_prompts(reference.prompt_texts(PROMPTS))[1]
    out = {"kernels": names, "note": note, "prompt_tokens": mask.sum(1).tolist(), "cases": {}}
    for case, fn in cases(check, latents, orders).items():
        ref = fn(reference)
        errors = {}
        for kernel in names:
            apply_attn_implementation(half, kernel, check.device, torch.bfloat16, f"gpu-check {kernel}")
            errors[kernel] = relative_error(fn(half), ref)
        floor = errors["sdpa"]
        verdicts = {k: e <= FLOOR_FACTOR * floor + ABS_SLACK for k, e in errors.items()}
        out["cases"][case] = {"relative_error_vs_fp32_sdpa": errors, "ok": verdicts}
        for kernel in names:
            check.row("attention output", f"{case}: {kernel} bf16", round(errors[kernel], 5), "rel. error vs fp32",
                      None if kernel == "sdpa" else verdicts[kernel],
                      "the bf16 floor" if kernel == "sdpa" else f"limit {FLOOR_FACTOR:g} x floor + {ABS_SLACK:g}")
    del reference, half
    return out
