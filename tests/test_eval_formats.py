"""GenEval / DPG-Bench writers produce exactly the layouts their official scorers read."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from vgt.eval.formats import grid_2x2, read_dpg_prompts, read_geneval_metadata, write_dpg_grid, write_geneval_prompt


def solid(rgb, size=8) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


def official_geneval_reader(imagedir: str) -> list[tuple[dict, str]]:
    """What djghosh13/geneval evaluation/evaluate_images.py main() walks: digit folders, json.load of
    metadata.jsonl, every samples/\\d+.png."""
    found = []
    for sub in os.listdir(imagedir):
        folder = os.path.join(imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        with open(os.path.join(folder, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for name in os.listdir(os.path.join(folder, "samples")):
            if re.match(r"\d+\.png", name):
                found.append((metadata, os.path.join(folder, "samples", name)))
    return found


def test_geneval_layout(tmp_path):
    records = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
               {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}]
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    assert read_geneval_metadata(str(meta)) == records
    out = tmp_path / "out"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, record in enumerate(read_geneval_metadata(str(meta))):
        write_geneval_prompt(str(out), i, record, [solid(c) for c in colours])
    assert tree(out) == {f"{i:05d}/{f}" for i in range(2) for f in
                         ["metadata.jsonl", "samples/0000.png", "samples/0001.png", "samples/0002.png"]}
    found = official_geneval_reader(str(out))
    assert len(found) == 6 and sorted(m["prompt"] for m, _ in found) == sorted([r["prompt"] for r in records] * 3)
    pixel = np.asarray(Image.open(out / "00001" / "samples" / "0002.png"))[0, 0]
    assert tuple(pixel) == colours[2]


def test_geneval_metadata_errors_name_the_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"tag": "x"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: .*'prompt'"):
        read_geneval_metadata(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: not JSON"):
        read_geneval_metadata(str(bad))


def test_dpg_layout_and_tile_order(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "partiprompts7.txt").write_text("A cat on a mat.\n")
    (prompts / "countbench3.txt").write_text("Three apples.")
    assert read_dpg_prompts(str(prompts)) == [("countbench3", "Three apples."), ("partiprompts7", "A cat on a mat.")]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    out = tmp_path / "out"
    write_dpg_grid(str(out), "countbench3", [solid(c, 6) for c in colours])
    assert tree(out) == {"countbench3.png"}
    grid = Image.open(out / "countbench3.png")
    assert grid.size == (12, 12)
    res = 6  # the scorer's crops, in its order: top-left, top-right, bottom-left, bottom-right
    crops = [(0, 0, res, res), (res, 0, 2 * res, res), (0, res, res, 2 * res), (res, res, 2 * res, 2 * res)]
    for box, colour in zip(crops, colours):
        tile = np.asarray(grid.crop(box))
        assert (tile == colour).all()


def test_dpg_grid_needs_four_equal_images(tmp_path):
    with pytest.raises(ValueError, match="needs 4 images"):
        grid_2x2([solid((0, 0, 0))] * 3)
    with pytest.raises(ValueError, match="of one size"):
        grid_2x2([solid((0, 0, 0), 6)] * 3 + [solid((0, 0, 0), 8)])
    with pytest.raises(ValueError, match="no <id>.txt"):
        read_dpg_prompts(str(tmp_path))
