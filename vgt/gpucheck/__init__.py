"""`vgt gpu-check` (`python -m vgt.gpucheck`): what a GPU does with vgt, measured in one run of a few minutes.

On one GPU, with random weights at a real preset's sizes (`internvl3-1b` by default; no hub, no
network): the AR training step (time, tokens/s, MFU, against the memory plan) as one process and as
FSDP2 in a 1-process group, bf16 against fp32 losses, the attention kernels' outputs side by side
(right-padded prompts, KV-cached steps, the gapped positions of the pairs feed mode), sampling latency
for 1 / 4 / 16 tokens per LLM step, and the AE's encode (the prep-latents path) and decode throughput.
Writes `gpu-check.json` and `gpu-check.md`.

It is part of the Ray-free library, not a Ray program: it runs in one process on the machine a user
or a lender hands over, with that machine's own torch, and needs only what `make gpu-bundle` packs
(transformers, tokenizers, safetensors, diffusers, numpy, pillow and their pure-Python dependencies).
Missing flash-attn or diffusers are said in the report, not fatal. Without CUDA it refuses (exit 2);
`--allow-cpu --preset tiny` runs every step on tiny models on the CPU (the test-suite's run).
"""
from __future__ import annotations

from .cli import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
