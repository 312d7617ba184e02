"""The `latent` column: float16 [C, h, w] per row as bytes + shape, in plain pyarrow types."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

LATENT_DTYPE = np.dtype("<f2")  # little-endian float16, whatever the writing machine's byte order


def latents_to_columns(latents: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """[N, C, h, w] array -> (binary column, shape column) for N rows."""
    with np.errstate(over="ignore"):  # overflow is reported below, with a reason
        arr = np.ascontiguousarray(latents, dtype=LATENT_DTYPE)
    if arr.ndim != 4:
        raise ValueError(f"expected latents [N, C, h, w], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("latents overflow float16 (inf/nan after the cast); is the AE's encoder_norm off?")
    shape = list(arr.shape[1:])
    data = pa.array([row.tobytes() for row in arr], type=pa.binary())
    return data, pa.array([shape] * len(arr), type=pa.list_(pa.int32()))


def latents_from_columns(latent: pa.Array | pa.ChunkedArray, shape: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(binary column, shape column) -> float16 [N, C, h, w]; every row must have the same shape."""
    shapes = {tuple(s) for s in shape.to_pylist()}
    if len(shapes) > 1:
        raise ValueError(f"rows have different latent shapes {sorted(shapes)}")
    if not shapes:
        return np.zeros((0, 0, 0, 0), dtype=LATENT_DTYPE)
    (dims,) = shapes
    arr = latent.combine_chunks() if isinstance(latent, pa.ChunkedArray) else latent
    if arr.null_count:
        raise ValueError(f"{arr.null_count} row(s) have no latent")
    # A binary array is one offsets buffer + one contiguous values buffer: slice it, no per-row objects.
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1]
    values = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    expected = len(arr) * int(np.prod(dims)) * LATENT_DTYPE.itemsize
    if values.size != expected:
        raise ValueError(f"latent bytes ({values.size}) do not match {len(arr)} rows of shape {list(dims)}")
    return values.view(LATENT_DTYPE).reshape(len(arr), *dims).copy()  # writable, owns its memory
