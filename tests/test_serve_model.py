"""The replicas' model side in-process (no Ray): loading local and s3:// folders, equivalence with
VGTPipeline, batching invariance, cancellation, image encoding."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.serve.api import Cancelled, Limits, parse_body, to_job
from pipelines.serve.model import DecoderModel, SamplerModel, encode_image

PROMPT = "a red cube on a table"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch

    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    path = tmp_path_factory.mktemp("pipe") / "tiny"
    torch.manual_seed(0)
    VGTPipeline.from_config(get_preset("tiny")).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(folder):
    return SamplerModel(folder, "tiny"), DecoderModel(folder)


def job(sampler, **body):
    return to_job(parse_body(json.dumps({"prompt": PROMPT, **body}).encode()), Limits(), sampler.info)


def test_sampler_and_decoder_reproduce_the_pipeline(folder, models):
    from vgt.pipeline import VGTPipeline

    sampler, decoder = models
    assert (sampler.info.native_size, sampler.info.stride, sampler.info.min_num_steps) == ((112, 112), 28, 2)
    j = job(sampler, n=2, seed=5, num_steps=3, guidance_scale=2.0, parallel_tokens=4)
    images = decoder.decode(sampler.sample([j], stop=lambda: False))
    expected = VGTPipeline.from_pretrained(folder)(PROMPT, num_images_per_prompt=2, seed=5, num_steps=3,
                                                   guidance_scale=2.0, parallel_tokens=4)
    assert images.shape == (2, 112, 112, 3)
    assert [np.array_equal(a, np.asarray(b)) for a, b in zip(images, expected)] == [True, True]


def test_a_job_in_a_batch_matches_the_job_alone(models):
    sampler, _ = models
    a, b = job(sampler, seed=1, num_steps=2), job(sampler, n=2, seed=2, num_steps=2)
    b.prompt = "a much longer prompt about a small blue ball on a wooden table"  # other padding
    together = sampler.sample([a, b], stop=lambda: False)
    alone = np.concatenate([sampler.sample([a], stop=lambda: False), sampler.sample([b], stop=lambda: False)])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)


def test_sampling_stops_when_every_client_is_gone(models):
    sampler, _ = models
    with pytest.raises(Cancelled, match="stopped after 1/4 groups"):  # tiny: 16 tokens, 4 per group
        sampler.sample([job(sampler, seed=1, num_steps=2)], stop=lambda: True)


def test_loads_from_s3_with_fingerprints_checked(folder, models, s3_bucket, tmp_path):
    from vgt import io as vio
    from vgt.artifacts import ArtifactError

    uri = f"s3://{s3_bucket}/tiny"
    vio.upload(folder, uri)
    assert SamplerModel(uri, "tiny").info.fingerprints == models[0].info.fingerprints
    assert DecoderModel(uri).fingerprint == models[1].fingerprint
    index = vio.read_json(f"{uri}/model_index.json")
    vio.write_json(f"{uri}/model_index.json", {**index, "fingerprints": {**index["fingerprints"], "ae": "0" * 32}})
    with pytest.raises(ArtifactError, match="ae fingerprint .* differs"):
        DecoderModel(uri)
    vio.write_json(f"{uri}/model_index.json", {**index, "format_version": 99})
    with pytest.raises(ArtifactError, match="format version 99"):
        SamplerModel(uri, "tiny")


def test_encodings_decode_back():
    image = np.random.default_rng(0).integers(0, 256, (28, 56, 3), dtype=np.uint8)
    png = encode_image(image, "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image) and png == encode_image(image, "png")
    assert encode_image(image, "jpeg")[:3] == b"\xff\xd8\xff"
    webp = encode_image(image, "webp")
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
