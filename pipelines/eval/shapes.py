"""The shapes benchmark end to end: the fixed held-out prompts -> images (a pipeline folder through
Ray Data, or a served endpoint over HTTP) -> the deterministic detector -> GenEval-style scores."""
from __future__ import annotations

import io
import json

from PIL import Image

from vgt import io as vio
from vgt import plots
from vgt.eval.shapes import caption, eval_prompts, score_images, summarize
from vgt.eval.shapes.score import SCORES

from .http import HttpStats, fetch_images
from .actors import generate


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def shapes_eval(model: str, n: int = 4, seed: int = 0, sample: dict | None = None, out: str | None = None,
                parallel: int = 4, batch_size: int = 8, concurrency: int = 1, num_gpus: float | None = None) -> dict:
    """Scores of `model` (pipeline folder or endpoint URL) on the held-out shapes prompts.

    A URL gets `parallel` HTTP requests in flight; a folder runs on `concurrency` Ray Data generator
    actors (`batch_size` images per batch, `num_gpus` each).

    With `out`: images as OUT/images/<prompt>-<sample>.png, OUT/shapes.json (summary + per image) and
    OUT/shapes.png (score bars per task).
    """
    specs = eval_prompts()
    prompts = [caption(s) for s in specs]
    stats = HttpStats()
    if is_url(model):
        pngs = fetch_images(model, prompts, n, seed, sample, parallel=parallel, stats=stats)
    else:
        pngs = {(i, k): png for i, k, png in generate(model, prompts, n, seed, sample, batch_size=batch_size,
                                                        concurrency=concurrency, num_gpus=num_gpus)}
    keys = sorted(pngs)
    images = [Image.open(io.BytesIO(pngs[key])).convert("RGB") for key in keys]
    records = score_images([specs[i] for i, _ in keys], images)
    for (i, k), record in zip(keys, records):
        record["image"] = f"images/{i:03d}-{k}.png"
    summary = summarize(records)
    summary.update(model=model, images_per_prompt=n, seed=seed, sample=sample or {})
    if is_url(model):
        summary["http"] = {"requests": stats.requests, "ok": stats.ok,
                           "mean_seconds": sum(stats.seconds) / max(1, len(stats.seconds))}
    if out:
        for key, record in zip(keys, records):
            vio.write_bytes(vio.join(out, record["image"]), pngs[key])
        vio.write_bytes(vio.join(out, "shapes.json"), json.dumps({"summary": summary, "images": records},
                                                                   indent=1).encode())
        bars = plots.score_bars({model: summary}, SCORES, f"Shapes scores, {len(records)} images")
        vio.write_bytes(vio.join(out, "shapes.png"), plots.png(bars))
    return summary
