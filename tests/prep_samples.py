"""Raw inputs for the prep tests: small images in every mode, damaged files, and the three source
formats written with their own tools (webdataset's TarWriter, pyarrow, json)."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(size=(120, 150), mode="RGB", fmt="JPEG", seed=0) -> bytes:
    """A random-noise image of `size` (w, h) in `mode`, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if mode == "P":
        img = rgb.quantize(16)
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L"))
    else:
        img = rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, followed by garbage pixel data (never decodable)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 16)


def write_wds(path: str, samples: list[dict]) -> str:
    """Samples {"__key__", "jpg"/"png"/..., "txt", ...} -> a tar shard via webdataset's TarWriter."""
    import webdataset as wds

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(path) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def good_wds_samples(n: int, prefix: str = "", seed: int = 0) -> list[dict]:
    return [{"__key__": f"{prefix}{i:04d}", "jpg": image_bytes(seed=seed + i), "txt": f"picture {i}"}
            for i in range(n)]


def write_parquet(path: str, images: list, captions: list, image_col="image", caption_col="caption") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({image_col: pa.array(images, pa.binary()), caption_col: captions}), path)
    return path


def write_index(folder: str, entries: list[tuple[str, bytes | None, str]], name="index.jsonl") -> str:
    """JSONL index + images/ folder; an entry with image None names a file that does not exist."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lines = []
    for file_name, data, caption in entries:
        if data is not None:
            with open(os.path.join(folder, "images", file_name), "wb") as f:
                f.write(data)
        lines.append(json.dumps({"image": f"images/{file_name}", "caption": caption}))
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
