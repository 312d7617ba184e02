"""Folder layouts that the official benchmark scorers read (docs/reference.md §4.1).

GenEval (djghosh13/geneval `evaluation/evaluate_images.py`): for prompt line i of
`evaluation_metadata.jsonl`,

    <out>/<i:05d>/metadata.jsonl      that line's JSON object (the scorer `json.load`s it)
    <out>/<i:05d>/samples/<j:04d>.png one file per sample (the scorer takes every `\\d+.png`)

DPG-Bench (ELLA `dpg_bench/compute_dpg_bench.py`): prompts are `<id>.txt` files; for each id

    <out>/<id>.png                    a 2x2 grid of equal tiles, read in the order
                                      top-left, top-right, bottom-left, bottom-right
"""
from __future__ import annotations

import io as _io
import json

from PIL import Image

from vgt import io as vio

GRID = 2  # DPG-Bench tiles per side


def _png(image: Image.Image) -> bytes:
    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_geneval_metadata(uri: str) -> list[dict]:
    """The prompt records of a GenEval metadata JSONL file (each needs a "prompt")."""
    records = []
    for n, line in enumerate(vio.read_bytes(uri).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{uri}:{n}: not JSON ({err.msg})") from err
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{uri}:{n}: a GenEval record is a JSON object with a string 'prompt'")
        records.append(record)
    if not records:
        raise ValueError(f"{uri}: no prompts")
    return records


def write_geneval_prompt(out_uri: str, index: int, metadata: dict, images: list[Image.Image]) -> str:
    """Write one prompt's folder; returns its URI."""
    folder = vio.join(out_uri, f"{index:05d}")
    vio.write_bytes(vio.join(folder, "metadata.jsonl"), (json.dumps(metadata) + "\n").encode())
    for j, image in enumerate(images):
        vio.write_bytes(vio.join(folder, "samples", f"{j:04d}.png"), _png(image))
    return folder


def read_dpg_prompts(folder_uri: str) -> list[tuple[str, str]]:
    """(prompt id, prompt) for every `<id>.txt` in an ELLA-style DPG-Bench prompts folder, sorted by id."""
    files = vio.glob(vio.join(folder_uri, "*.txt"))
    if not files:
        raise ValueError(f"{folder_uri}: no <id>.txt prompt files")
    return [(f.rsplit("/", 1)[-1][: -len(".txt")], vio.read_bytes(f).decode("utf-8").strip()) for f in files]


def grid_2x2(images: list[Image.Image]) -> Image.Image:
    if len(images) != GRID * GRID or len({im.size for im in images}) != 1:
        raise ValueError(f"a DPG-Bench grid needs {GRID * GRID} images of one size, got "
                         f"{[im.size for im in images]}")
    w, h = images[0].size
    grid = Image.new("RGB", (GRID * w, GRID * h))
    for k, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((k % GRID) * w, (k // GRID) * h))
    return grid


def write_dpg_grid(out_uri: str, prompt_id: str, images: list[Image.Image]) -> str:
    uri = vio.join(out_uri, f"{prompt_id}.png")
    vio.write_bytes(uri, _png(grid_2x2(images)))
    return uri
