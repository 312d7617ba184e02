"""Render a `PromptSpec` as a picture: flat shapes on a flat background, anti-aliased.

Single-kind groups lie wholly inside the named half (left/right/top/bottom), two-object prompts
anywhere; objects never overlap (a gap of 5% of the side between bounding boxes), so the
detector's connected components are the objects.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .vocab import BACKGROUND, COLOURS, PromptSpec

SIZE_RANGE = (0.18, 0.24)  # object side as a fraction of the image side
GAP = 0.05  # minimum free space between two objects' boxes, fraction of the side
MARGIN = 0.03  # minimum free space to the region's edges
SUPERSAMPLE = 4  # draw at 4x and box-filter down: smooth edges like a real image


def _region(position: str | None, side: float) -> tuple[float, float, float, float]:
    half = side / 2
    return {None: (0, 0, side, side), "left": (0, 0, half, side), "right": (half, 0, side, side),
            "top": (0, 0, side, half), "bottom": (0, half, side, side)}[position]


def _disjoint(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    reach = (asz + bsz) / 2 + gap
    return abs(ax - bx) >= reach or abs(ay - by) >= reach


def layout(n: int, position: str | None, side: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """`n` non-overlapping (centre x, centre y, size) boxes inside the region; shrinks if crowded."""
    x0, y0, x1, y1 = _region(position, side)
    margin, gap = MARGIN * side, GAP * side
    lo, hi = SIZE_RANGE
    for _ in range(20):
        boxes: list[tuple[float, float, float]] = []
        for _ in range(400):
            size = rng.uniform(lo, hi) * side
            r = size / 2 + margin
            if x1 - x0 <= 2 * r or y1 - y0 <= 2 * r:
                break
            box = (rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r), size)
            if all(_disjoint(box, other, gap) for other in boxes):
                boxes.append(box)
                if len(boxes) == n:
                    return boxes
        lo, hi = lo * 0.9, hi * 0.9
    raise ValueError(f"cannot place {n} objects in region {position!r} of a {side} px image")


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, fill) -> None:
    h = size / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:  # triangle, apex up
        draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)


def render(spec: PromptSpec, seed: int | np.random.Generator, size: int = 112) -> Image.Image:
    """The picture of `spec` (RGB, `size` x `size`); the same seed gives the same pixels."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    items = [(o.colour, o.shape) for o in spec.objects for _ in range(o.count)]
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for (colour, shape), (cx, cy, sz) in zip(items, layout(len(items), spec.position, big, rng)):
        _draw(draw, shape, cx, cy, sz, COLOURS[colour])
    return canvas.resize((size, size), Image.Resampling.BOX)
