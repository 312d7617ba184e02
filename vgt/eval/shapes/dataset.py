"""Synthetic shapes datasets as WebDataset tar shards (local or s3://).

Each sample is `<key>.png` (the picture), `<key>.txt` (the caption) and `<key>.json` (the prompt
spec). A shard is a pure function of (seed, split, shard index), so shards can be written in
parallel, in any order, on any machine, and come out byte-identical.

Splits: `train` draws only combinations outside the held-out set; `heldout` draws only held-out
ones (ground-truth renders for measuring the autoencoder's own ceiling on the benchmark).
"""
from __future__ import annotations

import functools
import io as _io
import json

import numpy as np
import webdataset as wds

from vgt import io as vio

from .render import render
from .vocab import PromptSpec, caption, eval_prompts, train_specs

SPLITS = ("train", "heldout")


@functools.lru_cache(maxsize=None)
def _pool(split: str) -> tuple[list[PromptSpec], list[PromptSpec]]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    specs = train_specs() if split == "train" else eval_prompts()
    return [s for s in specs if s.kind == "single"], [s for s in specs if s.kind == "two"]


def draw_spec(rng: np.random.Generator, split: str, two_object_fraction: float) -> PromptSpec:
    """A uniformly drawn combination of `split`; two-object captions name the objects in random order."""
    singles, pairs = _pool(split)
    if rng.random() >= two_object_fraction:
        return singles[rng.integers(len(singles))]
    spec = pairs[rng.integers(len(pairs))]
    return PromptSpec(spec.objects[::-1]) if rng.random() < 0.5 else spec


def shard_name(split: str, index: int) -> str:
    return f"shapes-{split}-{index:05d}.tar"


def write_shard(out_uri: str, index: int, num_samples: int, seed: int, split: str = "train", size: int = 112,
                two_object_fraction: float = 0.4) -> str:
    """Write one shard `out_uri/shapes-<split>-<index>.tar`; returns its URI."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    uri = vio.join(out_uri, shard_name(split, index))
    with vio.open(uri, "wb") as stream, wds.TarWriter(stream, mtime=0) as tar:  # fixed mtime: identical bytes
        for i in range(num_samples):
            spec = draw_spec(rng, split, two_object_fraction)
            png = _io.BytesIO()
            render(spec, rng, size).save(png, format="PNG")
            tar.write({"__key__": f"{split}-{index:05d}-{i:05d}", "png": png.getvalue(),
                       "txt": caption(spec), "json": json.dumps(spec.to_dict()).encode()})
    return uri


def shard_sizes(total: int, per_shard: int) -> list[int]:
    """Split `total` samples into shards of `per_shard` (the last one smaller)."""
    if total < 1 or per_shard < 1:
        raise ValueError(f"need positive sample counts, got total={total}, per_shard={per_shard}")
    return [min(per_shard, total - start) for start in range(0, total, per_shard)]
