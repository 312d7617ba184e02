"""Multiplexed serving: three models behind one endpoint, at most two per sampler replica, one replica.

Models: two LoRA adapters ("x", "y") on one base pipeline (they share its resident copy and its AE) and
a pipeline of its own ("b", another AE). Every response equals that model's in-process `VGTPipeline`
for the same seed; loading a third model evicts the least recently used one, which the replica counts;
concurrent requests for different models all succeed; an unknown model is a 404 model_not_found; an
adapter whose base folder now holds another pipeline is refused before anything starts.
"""
from __future__ import annotations

import base64
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from vgt.presets import get_preset

pytestmark = pytest.mark.ray
BODY = {"prompt": "a red cube on a table", "num_steps": 2, "parallel_tokens": 4}
ONE_REPLICA = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}, "graceful_shutdown_timeout_s": 2,
               "ray_actor_options": {"num_cpus": 0.25}}


def write_pipeline(folder: str, seed: int) -> str:
    from vgt.pipeline import VGTPipeline

    torch.manual_seed(seed)
    VGTPipeline.from_config(get_preset("tiny")).save_pretrained(folder)
    return folder


def write_adapter(folder: str, base: str, seed: int) -> str:
    """An adapter folder as `train-ar --set train.ar_pretrain.lora.export=adapter` writes it, with random
    (non-zero) LoRA B and a perturbed flow head instead of training."""
    from vgt.adapter import save_adapter
    from vgt.ar import lora
    from vgt.pipeline import VGTPipeline

    pipe = VGTPipeline.from_pretrained(base)
    config = lora.peft_config(get_preset("tiny", {"train.ar_pretrain.lora.rank": 4}).train.ar_pretrain.lora)
    lora.inject(pipe.model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.model.named_parameters():
            if ".lora_B." in name or name.startswith("head."):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    save_adapter(folder, pipe.config, config, pipe.model.state_dict(), base=base)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multiplex")
    base = write_pipeline(str(root / "base"), seed=0)
    return {"x": write_adapter(str(root / "x"), base, seed=1), "y": write_adapter(str(root / "y"), base, seed=2),
            "b": write_pipeline(str(root / "b"), seed=3)}


@pytest.fixture(scope="module")
def service(ray_cluster, folders):
    from ray import serve

    from pipelines.serve.config import deploy, free_port, load_config, serve_running, with_overrides

    started = not serve_running()
    config = with_overrides(load_config(), host="127.0.0.1", port=free_port(),
                            args={"models": folders, "multiplexed": {"max_models_per_replica": 2}},
                            deployments={name: ONE_REPLICA for name in ("ARSampler", "AEDecoder")})
    config = with_overrides(config, deployments={"Ingress": {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}, "ray_actor_options": {"num_cpus": 0.1}}})
    url = deploy(config, timeout_s=240)
    yield url
    serve.delete("vgt")
    if started:
        serve.shutdown()


def generate(url: str, model: str, seed: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/images/generations", json={**BODY, "model": model, "seed": seed}, timeout=180)


def pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).convert("RGB"))


def reference(folder: str, seed: int) -> np.ndarray:
    from vgt.pipeline import VGTPipeline

    image = VGTPipeline.from_pretrained(folder)(BODY["prompt"], seed=seed, num_steps=BODY["num_steps"],
                                                parallel_tokens=BODY["parallel_tokens"])[0]
    return np.asarray(image.convert("RGB"))


def sampler_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("ARSampler", "vgt").stats.remote().result()


@pytest.mark.timeout(600)
def test_three_models_two_per_replica_match_their_pipelines_and_evict(service, folders):
    models = httpx.get(f"{service}/v1/models", timeout=30).json()
    assert sorted(m["id"] for m in models["data"]) == ["b", "x", "y"]
    health = httpx.get(f"{service}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["loading"] == "on demand"
    assert sampler_stats()["loads"] == {}  # nothing loads before its first request

    refs = {(name, seed): reference(folders[name], seed) for name, seed in (("x", 1), ("y", 2), ("b", 3))}
    assert not np.array_equal(refs["x", 1], reference(folders["y"], 1))  # the adapters differ
    # x, y load (sharing the base); b evicts x (least recently used); x again evicts y
    for name, seed in (("x", 1), ("y", 2), ("b", 3), ("x", 1)):
        got = pixels(generate(service, name, seed))
        # the same computation as in process (fp32 CPU, one request per batch): equal up to PNG rounding
        assert np.abs(got.astype(int) - refs[name, seed].astype(int)).max() <= 1, name
    stats = sampler_stats()
    assert stats["loads"] == {"x": 2, "y": 1, "b": 1} and stats["unloads"] == {"x": 1, "y": 1}
    assert stats["resident"] == ["b", "x"] and len(stats["bases"]) == 1
    assert stats["hits"] == {"x": 2, "y": 1, "b": 1}

    with ThreadPoolExecutor(3) as pool:  # concurrent requests for different models (one of them evicted)
        responses = list(pool.map(lambda ns: generate(service, *ns), [("b", 3), ("y", 2), ("x", 1)]))
    for (name, seed), response in zip([("b", 3), ("y", 2), ("x", 1)], responses):
        assert np.abs(pixels(response).astype(int) - refs[name, seed].astype(int)).max() <= 1, name

    missing = generate(service, "nope", 0)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "['b', 'x', 'y']" in missing.json()["error"]["message"]


def test_an_adapter_on_another_base_is_refused_before_serving(folders, tmp_path, capsys):
    from pipelines.serve.multiplex import model_table
    from ray_jobs.cli import main
    from vgt.artifacts import ArtifactError

    base = write_pipeline(str(tmp_path / "base"), seed=5)
    adapter = write_adapter(str(tmp_path / "z"), base, seed=6)
    write_pipeline(base, seed=7)  # the base folder now holds another pipeline
    with pytest.raises(ArtifactError, match="was trained on a base pipeline with AR fingerprint"):
        model_table({"z": adapter, "b": folders["b"]})
    assert main(["serve", "--model", f"z={adapter}", "--model", f"b={folders['b']}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: adapter") and "load it onto its own base" in err[0]
    assert json.loads(open(os.path.join(adapter, "model_index.json")).read())["base"]["path"] == base
