"""How much a trained generator uses each word of its prompt, measured on its own training data.

For single-kind training captions, one attribute at a time (colour, count, shape, position) is
replaced by another value of the vocabulary ("two red circles on the left" -> "three red circles
on the left") and the teacher-forced flow loss is taken again with the same randomness (orders,
timesteps, noise). `reliance[attribute]` = loss with the wrong word / loss with the right one:
1.0 means the model ignores that word, larger means the word shapes its predictions. `empty` does
the same with the empty (CFG-null) prompt. Every swap keeps the caption's word count, so with the
word tokenizer the two prompts differ in exactly one token.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .vocab import COLOURS, COUNTS, POSITIONS, SHAPES, PromptSpec, caption, spec_of

ATTRIBUTES = ("colour", "count", "shape", "position")


def swap_attribute(spec: PromptSpec, attribute: str, rng: np.random.Generator) -> PromptSpec:
    """`spec` (single kind) with `attribute` set to another value, drawn by `rng`."""
    if spec.kind != "single" or attribute not in ATTRIBUTES:
        raise ValueError(f"can swap {ATTRIBUTES} of a single-kind spec, not {attribute!r} of {spec}")
    obj = spec.objects[0]
    current = spec.position if attribute == "position" else getattr(obj, attribute)
    values = {"colour": list(COLOURS), "count": list(COUNTS), "shape": list(SHAPES), "position": list(POSITIONS)}
    other = rng.choice([v for v in values[attribute] if v != current]).item()
    if attribute == "position":
        return PromptSpec(spec.objects, other)
    return PromptSpec((dataclasses.replace(obj, **{attribute: other}),), spec.position)


@torch.no_grad()
def word_reliance(model, latents: torch.Tensor, captions: list[str], draws: int = 2, seed: int = 0) -> dict:
    """{attribute: loss ratio, "empty": loss ratio, "rows": single-kind rows used} for a VGT AR `model`
    on normalised training `latents` [N, C, h, w] and their `captions` (two-object rows are skipped).
    Each loss averages `draws` seeded forwards; CFG dropout is off while measuring."""
    singles = [i for i, text in enumerate(captions) if spec_of(text).kind == "single"]
    if not singles:
        raise ValueError("word_reliance needs single-kind shapes captions")
    right = [captions[i] for i in singles]
    rows = latents[singles]
    rng = np.random.default_rng(seed)
    variants = {a: [caption(swap_attribute(spec_of(text), a, rng)) for text in right] for a in ATTRIBUTES}
    variants["empty"] = [""] * len(right)

    def loss(texts: list[str]) -> float:
        values = [model(texts, latents=rows, generator=torch.Generator().manual_seed(seed + d))["flow_loss"].item()
                  for d in range(draws)]
        return float(np.mean(values))

    dropout, training = model.config.cfg_dropout, model.training
    model.config.cfg_dropout = 0.0
    model.eval()
    try:
        base = loss(right)
        ratios = {name: loss(texts) / base for name, texts in variants.items()}
    finally:
        model.config.cfg_dropout = dropout
        model.train(training)
    return {**ratios, "rows": len(singles)}
