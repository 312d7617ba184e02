"""Synthetic coloured shapes: captions with a structured spec, a renderer, WebDataset shards with
a fixed held-out set of attribute combinations, and a deterministic detector + GenEval-style scorer."""
from .detect import Detection, detect
from .render import render
from .score import score_images, summarize
from .vocab import ObjectSpec, PromptSpec, caption, eval_prompts, heldout, spec_of, train_specs

__all__ = ["Detection", "ObjectSpec", "PromptSpec", "caption", "detect", "eval_prompts", "heldout", "render",
           "score_images", "spec_of", "summarize", "train_specs"]
