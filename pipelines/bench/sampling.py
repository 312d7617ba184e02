"""AR sampling: wall time, LLM forwards and tokens, LLM/head split, by parallel_tokens and feed mode.

Cases: the `tiny` preset (4x4 latents) and a mid-size random model (Qwen2 LLM 256 wide x 6 layers,
head 384 x 6, 8x8 latents), 1 and 8 images, parallel_tokens 1 / 4 / 16, feed modes "pairs"
(default) and "parity" (reference), CFG 4.5. `speedup` is wall(parallel_tokens=1, same mode and
batch) / wall. Run with OMP_NUM_THREADS=1 on shared machines.

The real `internvl3-1b` latency on a GPU (bf16, 448 px, 1/4/16 tokens per step) is measured by
`vgt gpu-check` (vgt.gpucheck).
"""
from __future__ import annotations

import torch

from pipelines.bench import timeit

NAME = "sampling"
MID = ["ar.backbone.hf_config.text_config.hidden_size=256", "ar.backbone.hf_config.text_config.intermediate_size=1024",
       "ar.backbone.hf_config.text_config.num_hidden_layers=6",
       "ar.backbone.hf_config.text_config.num_attention_heads=8", "ar.head.width=384", "ar.head.depth=6",
       "ar.max_grid=16"]


def build(preset: str, overrides: list[str] | None = None, device: str = "cpu", dtype=torch.float32):
    from vgt.ar.model import VGTModel
    from vgt.presets import get_preset

    cfg = get_preset(preset, (overrides or []) + ["ar.backbone.pretrained=null"])
    torch.manual_seed(0)
    model = VGTModel(cfg.ar, latent_dim=cfg.ae.latent_channels)
    return model.to(device=device, dtype=dtype).eval()


def measure(model, grid, images: int, parallel: int, mode: str, num_steps: int, repeats: int) -> dict:
    from vgt.ar.sampling import image_generator, sample_latents
    from vgt.config import SampleConfig

    prompts = [f"a photo of object number {i} on a table" for i in range(images)]
    stats: dict = {}
    # the reference recipe (vgt.config defaults: CFG 4.5, linear, random order, SDE) with this case's knobs
    settings = SampleConfig().resolve(num_steps=num_steps, parallel_tokens=parallel, feed_mode=mode)

    def once():
        sample_latents(model, prompts, [image_generator(0, i) for i in range(images)], grid,
                       **settings.as_kwargs(), stats=stats)

    wall = timeit(once, repeats=repeats, warmup=1)
    busy = stats["llm_seconds"] + stats["head_seconds"]
    return {"images": images, "parallel": parallel, "mode": mode, "wall_s": wall,
            "llm_forwards": stats["llm_forwards"], "llm_tokens": stats["llm_tokens"],
            "llm_s": stats["llm_seconds"], "head_s": stats["head_seconds"], "llm_share": stats["llm_seconds"] / busy}


def run(quick: bool) -> list[dict]:
    cases = [("tiny", build("tiny"), (4, 4), 4)]
    if not quick:
        cases.append(("mid", build("tiny", MID), (8, 8), 10))
    rows = []
    for name, model, grid, steps in cases:
        for images in ((1,) if quick else (1, 8)):
            for mode in ("pairs", "parity"):
                group = [measure(model, grid, images, p, mode, steps, 1 if quick else 3) for p in (1, 4, 16)]
                rows += [{"model": name, "latents": f"{grid[0]}x{grid[1]}", **r,
                          "speedup": group[0]["wall_s"] / r["wall_s"]} for r in group]
    return rows


if __name__ == "__main__":
    import sys

    from pipelines.bench import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
