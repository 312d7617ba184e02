"""prep-latents' decoding stage: parts -> blocks of their rows' centre crops (no torch).

Plain Python: `pipelines.prep.add_latents` runs `CropParts` as Ray Data actors that feed the
encoder actors; it lives here so that those processes import only light modules (no torch).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from . import layout
from .images import center_crops


def part_crops(name: str, uri: str, resolution: int, batch_size: int) -> Iterator[dict]:
    """{part, row, pixels (uint8 [n, r, r, 3] centre crops)} per `batch_size` rows of a part."""
    row = 0
    for batch in layout.open_parquet(uri).iter_batches(batch_size=batch_size, columns=["image"]):
        n = batch.num_rows
        yield {"part": np.full(n, name), "row": np.arange(row, row + n),
               "pixels": center_crops(batch.column("image").to_pylist(), resolution)}
        row += n


class CropParts:
    """Ray Data actor: the parts named in the batch ({name, uri}) -> blocks of crops, as decoded.
    An actor rather than a task so that Ray Data cannot fuse it into the encoder's actors."""

    def __init__(self, resolution: int, batch_size: int):
        self.resolution, self.batch_size = resolution, batch_size

    def __call__(self, batch: dict) -> Iterator[dict]:
        for name, uri in zip(batch["name"], batch["uri"]):
            yield from part_crops(str(name), str(uri), self.resolution, self.batch_size)
