"""GenEval and DPG-Bench image folders from a pipeline folder (Ray Data generation, driver writes).

Score them with the official tools (README, "Evaluation"): GenEval's
`evaluation/evaluate_images.py OUT --outfile results.jsonl` + `summary_scores.py`, DPG-Bench's
`compute_dpg_bench.py --image-root-path OUT --resolution RES --pic-num 4`.
"""
from __future__ import annotations

from vgt.eval.formats import GRID, read_dpg_prompts, read_geneval_metadata, write_dpg_grid, write_geneval_prompt

from .actors import generate, grouped


def geneval_images(model: str, metadata: str, out: str, n: int = 4, seed: int = 0, sample: dict | None = None,
                   **ray_options) -> int:
    """OUT/<i:05d>/{metadata.jsonl, samples/<j:04d>.png} for every prompt line; returns the prompt count."""
    records = read_geneval_metadata(metadata)
    prompts = [r["prompt"] for r in records]
    for i, images in grouped(generate(model, prompts, n, seed, sample, **ray_options), n):
        write_geneval_prompt(out, i, records[i], images)
    return len(records)


def dpg_images(model: str, prompts_dir: str, out: str, seed: int = 0, sample: dict | None = None,
               **ray_options) -> int:
    """OUT/<prompt id>.png, a 2x2 grid of four samples per prompt; returns the prompt count."""
    items = read_dpg_prompts(prompts_dir)
    n = GRID * GRID
    for i, images in grouped(generate(model, [p for _, p in items], n, seed, sample, **ray_options), n):
        write_dpg_grid(out, items[i][0], images)
    return len(items)
