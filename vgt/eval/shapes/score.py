"""GenEval-style scoring of shapes images against their prompt specs.

Single-kind prompts are scored per attribute: colour (every object has the colour), shape (every
object has the shape), count (exactly that many objects), position (every centroid in the named
half); each needs at least one object. A two-object prompt is right when both named objects (colour
and shape) are present, GenEval's two-object/colour-attribute rule. `overall` is the mean of the
five task accuracies, as GenEval averages its tasks.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .detect import Detection, detect
from .vocab import PromptSpec, caption

ATTRIBUTES = ("colour", "count", "shape", "position")
TASKS = ATTRIBUTES + ("two_object",)
SCORES = [*TASKS, "single_all", "overall"]  # what `summarize` reports, in the order tables and plots show it


def _in_half(d: Detection, position: str) -> bool:
    return {"left": d.x < 0.5, "right": d.x > 0.5, "top": d.y < 0.5, "bottom": d.y > 0.5}[position]


def score_detections(spec: PromptSpec, found: list[Detection]) -> dict[str, bool]:
    if spec.kind == "two":
        ok = all(any(d.colour == o.colour and d.shape == o.shape for d in found) for o in spec.objects)
        return {"two_object": ok, "correct": ok}
    o, any_found = spec.objects[0], bool(found)
    result = {"colour": any_found and all(d.colour == o.colour for d in found),
              "count": len(found) == o.count,
              "shape": any_found and all(d.shape == o.shape for d in found),
              "position": any_found and all(_in_half(d, spec.position) for d in found)}
    result["correct"] = all(result.values())
    return result


def score_images(specs: list[PromptSpec], images: list) -> list[dict]:
    """One record per image: prompt, kind, the detections and the per-task booleans."""
    if len(specs) != len(images):
        raise ValueError(f"{len(specs)} prompt specs for {len(images)} images")
    records = []
    for spec, image in zip(specs, images):
        found = detect(image)
        records.append({"prompt": caption(spec), "kind": spec.kind, **score_detections(spec, found),
                        "detections": [f"{d.colour} {d.shape} @({d.x:.2f},{d.y:.2f})" for d in found]})
    return records


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return float(np.mean(values)) if values else None


def summarize(records: list[dict]) -> dict:
    """Task accuracies, the single-prompt all-correct rate, `overall`, and per-prompt accuracies."""
    singles = [r for r in records if r["kind"] == "single"]
    summary = {task: _mean(records, task) for task in TASKS}
    summary["single_all"] = _mean(singles, "correct")
    present = [summary[t] for t in TASKS if summary[t] is not None]
    summary["overall"] = float(np.mean(present)) if present else None
    summary["n_images"] = len(records)
    by_prompt = defaultdict(list)
    for r in records:
        by_prompt[r["prompt"]].append(r)
    summary["per_prompt"] = [{"prompt": p, "kind": rs[0]["kind"], "n": len(rs), "correct": _mean(rs, "correct"),
                              **{t: _mean(rs, t) for t in TASKS if t in rs[0]}} for p, rs in by_prompt.items()]
    return summary
