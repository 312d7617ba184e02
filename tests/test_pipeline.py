"""VGTPipeline folders (local and s3://), deterministic images, and the `vgt init` / `vgt generate` CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_ar import PRESETS, randomize_head, single_thread  # noqa: F401 (autouse)
from vgt import VGTPipeline, get_preset
from vgt.artifacts import ArtifactError

CALL = dict(num_steps=3, parallel_tokens=4, seed=3)


def tiny_pipeline(preset: str) -> VGTPipeline:
    torch.manual_seed(0)
    pipe = VGTPipeline.from_config(get_preset(preset))
    randomize_head(pipe.model.head)  # a zero head would ignore the model entirely
    return pipe


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_round_trip_gives_identical_images(preset, tmp_path):
    pipe = tiny_pipeline(preset)
    before = pixels(pipe(["a red apple", "two cats"], num_images_per_prompt=2, **CALL))
    assert before.shape == (4, 112, 112, 3) and before.dtype == np.uint8
    assert np.array_equal(before, pixels(pipe(["a red apple", "two cats"], num_images_per_prompt=2, **CALL)))
    prints = pipe.save_pretrained(str(tmp_path / "pipe"))
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["components"] == {"tokenizer": "tokenizer", "ar": "ar", "ae": "ae"}
    assert index["fingerprints"] == prints and index["config"]["name"] == preset
    loaded = VGTPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert loaded.tokenizer("Generate an image: x")["input_ids"] == pipe.tokenizer("Generate an image: x")["input_ids"]
    after = pixels(loaded(["a red apple", "two cats"], num_images_per_prompt=2, **CALL))
    assert np.array_equal(before, after)
    assert not np.array_equal(after[0], after[1])  # two images of one prompt differ


def test_s3_round_trip_and_sampler_decoder_split(s3_bucket, tmp_path):
    pipe = tiny_pipeline("tiny")
    uri = f"s3://{s3_bucket}/pipes/tiny"
    pipe.save_pretrained(uri)
    loaded = VGTPipeline.from_pretrained(uri)
    latents = loaded.sample_latents("a red apple", **CALL)
    assert latents.shape == (1, 32, 4, 4)
    assert torch.equal(latents, pipe.sample_latents("a red apple", **CALL))
    assert np.array_equal(pixels(loaded.decode(latents)), pixels(pipe("a red apple", **CALL)))


def test_other_sizes_resize_and_bad_input_is_clear():
    pipe = tiny_pipeline("tiny")
    assert pipe("a dog", height=84, width=60, **CALL)[0].size == (60, 84)  # grid 3x2, resized from 84x56
    with pytest.raises(ValueError, match="at least 28"):
        pipe("a dog", height=20, **CALL)
    with pytest.raises(ValueError, match="prompt"):
        pipe([], **CALL)


def test_missing_or_foreign_folder_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="model_index.json"):
        VGTPipeline.from_pretrained(str(tmp_path))


def test_cli_init_then_generate_writes_pngs(tmp_path):
    from ray_jobs.cli import main

    folder, out = tmp_path / "pipe", tmp_path / "images"
    assert main(["init", "--preset", "tiny-qwen", "--out", str(folder), "--set", "sample.num_steps=2"]) == 0
    assert main(["init", "--preset", "tiny-qwen", "--out", str(folder)]) == 1  # exists, no --overwrite: refused
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\n\ntwo cats on a sofa\n")
    args = ["generate", "--model", str(folder), "--prompt", "a lighthouse", "--prompts", str(prompts),
            "--out", str(out), "--n", "2", "--seed", "5", "--parallel-tokens", "16", "--batch-size", "4"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a lighthouse"] * 2 + ["a red apple"] * 2 + ["two cats on a sofa"] * 2
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"{k:05d}.png" for k in range(6)]
    assert Image.open(out / "00005.png").size == (112, 112)
    assert main(["generate", "--model", str(folder), "--out", str(out)]) == 2  # no prompts: one-line error
