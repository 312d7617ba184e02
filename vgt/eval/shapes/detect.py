"""A deterministic shapes detector: background from the border, colour segmentation, connected
components, centroid.

Every pixel is explained as the background plus a fraction `alpha` of one palette colour's offset
from it (the way an anti-aliased or blurred edge mixes the two); a pixel belongs to colour k when
alpha >= 0.5 and colour k explains it best with a small residual. Same-colour 4-connected regions
are objects; tiny specks are dropped; the fill ratio of the bounding box names the shape (square 1,
circle pi/4, triangle 1/2). No learned weights, so scores are reproducible anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .vocab import COLOURS

BORDER = 0.02  # border band (fraction of the side) whose median is the background colour
MIN_ALPHA = 0.5  # at least half-way from the background to the colour
MAX_RESIDUAL = 0.4  # off-line residual, relative to |colour - background|
MIN_AREA = 0.004  # components below this fraction of the image are noise (an object is >= ~0.016)
# fill-ratio thresholds between the shapes: ideal square 1, circle 0.785, triangle 0.5; blur cuts a
# triangle's apex (up to ~0.68 at sigma 1.5 px) and rounds circles down to ~0.74
SQUARE_FILL, TRIANGLE_FILL = 0.88, 0.70

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    x: float  # centroid, fraction of the width (0 left .. 1 right)
    y: float  # centroid, fraction of the height (0 top .. 1 bottom)
    area: float  # fraction of the image
    fill: float  # area / bounding-box area


def as_array(image) -> np.ndarray:
    """PIL image or HxWx3 uint8/float array -> float32 HxWx3 in 0..255."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image HxWx3, got shape {arr.shape}")
    return arr


def background(arr: np.ndarray) -> np.ndarray:
    b = max(1, round(BORDER * min(arr.shape[:2])))
    border = np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3),
                             arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)])
    return np.median(border, axis=0)


def segment(arr: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-pixel labels: 0 background/unexplained, k+1 palette colour k."""
    offsets = _PALETTE - bg  # [K,3]
    v = arr - bg  # [H,W,3]
    alpha = np.einsum("hwc,kc->hwk", v, offsets) / (offsets**2).sum(-1)
    residual = np.linalg.norm(v[..., None, :] - np.clip(alpha, 0, 1)[..., None] * offsets, axis=-1)
    residual = residual / np.linalg.norm(offsets, axis=-1)
    residual = np.where(alpha >= MIN_ALPHA, residual, np.inf)
    best = residual.argmin(-1)
    ok = np.take_along_axis(residual, best[..., None], -1)[..., 0] <= MAX_RESIDUAL
    return np.where(ok, best + 1, 0)


def components(labels: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-zero labels (-1 elsewhere): every pixel repeatedly takes
    the smallest id among its same-label neighbours until nothing changes."""
    h, w = labels.shape
    fg = labels > 0
    ids = np.where(fg, np.arange(h * w).reshape(h, w), h * w)
    links = []  # (axis, shift, mask of pixels whose neighbour in that direction has the same label)
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        same = fg & (np.roll(labels, shift, axis) == labels)
        wrapped = [slice(None), slice(None)]  # np.roll wraps around: no links across the border
        wrapped[axis] = 0 if shift == 1 else -1
        same[tuple(wrapped)] = False
        links.append((axis, shift, same))
    while True:
        new = ids
        for axis, shift, same in links:
            new = np.where(same, np.minimum(new, np.roll(ids, shift, axis)), new)
        if np.array_equal(new, ids):
            return np.where(fg, ids, -1)
        ids = new


def shape_of(fill: float) -> str:
    if fill >= SQUARE_FILL:
        return "square"
    return "triangle" if fill <= TRIANGLE_FILL else "circle"


def detect(image) -> list[Detection]:
    """Objects in `image`, largest first."""
    arr = as_array(image)
    h, w = arr.shape[:2]
    labels = segment(arr, background(arr))
    comp = components(labels)
    found = []
    for cid in np.unique(comp[comp >= 0]):
        ys, xs = np.nonzero(comp == cid)
        area = len(xs)
        if area < MIN_AREA * h * w:
            continue
        fill = area / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
        found.append(Detection(colour=_NAMES[labels[ys[0], xs[0]] - 1], shape=shape_of(fill),
                               x=(xs.mean() + 0.5) / w, y=(ys.mean() + 0.5) / h, area=area / (h * w), fill=fill))
    return sorted(found, key=lambda d: -d.area)
