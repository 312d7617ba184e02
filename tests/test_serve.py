"""The image service on the session's local Ray cluster, over HTTP on 127.0.0.1.

One application is deployed for the module from cluster/serve.yaml (the production file) with
test overrides: a tiny random-weight pipeline, fractional CPUs, short autoscaling delays. Tests
run in file order and share it (one deployment instead of one per test keeps the module near two
minutes): the scaling tests follow one another (1 -> 2 sampler replicas, a kill, back to 1), and
the two that redeploy with other options come last.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

KEY = "test-key-1234"
PROMPT = "a red cube on a table"
# Short autoscaling delays; the ingress handle pushes its load metrics every 0.25 s (default 10 s).
AUTOSCALE = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 3,
             "look_back_period_s": 1, "metrics_interval_s": 0.25}
FAST_METRICS = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25"}
TEST_DEPLOYMENTS = {
    "ARSampler": {"autoscaling_config": {**AUTOSCALE, "target_ongoing_requests": 2},
                  "max_ongoing_requests": 8, "graceful_shutdown_timeout_s": 2},
    "AEDecoder": {"autoscaling_config": {**AUTOSCALE, "target_ongoing_requests": 16},
                  "graceful_shutdown_timeout_s": 2},
    "Ingress": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}, "graceful_shutdown_timeout_s": 2,
                "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {**FAST_METRICS,
                                                                                    "VGT_API_KEY": KEY}}}},
}


def write_tiny_pipeline(folder) -> None:
    """What `vgt init --preset tiny --out FOLDER` writes."""
    import torch

    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    torch.manual_seed(0)
    VGTPipeline.from_config(get_preset("tiny")).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    from ray import serve

    from pipelines.serve.config import (deploy, free_port, load_config, placement_overrides, serve_running,
                                        with_overrides)

    folder = tmp_path_factory.mktemp("pipe") / "tiny"
    write_tiny_pipeline(folder)
    started = not serve_running()
    config = with_overrides(load_config(), model=str(folder), host="127.0.0.1", port=free_port(),
                            args={"model_name": "tiny"}, deployments=placement_overrides("auto"))
    config = with_overrides(config, deployments=TEST_DEPLOYMENTS)
    url = deploy(config, timeout_s=240)
    yield {"url": url, "config": config, "folder": str(folder)}
    serve.delete("vgt")
    if started:
        serve.shutdown()


def post(url: str, body: dict | bytes, key: str | None = KEY, timeout: float = 120, **headers) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/images/generations", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json", **headers})


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


async def load(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    """POST every body, at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=180, headers={"Authorization": f"Bearer {KEY}"}) as client:
        async def one(body):
            async with gate:
                return await client.post(f"{url}/v1/images/generations", json=body)
        return await asyncio.gather(*(one(b) for b in bodies))


async def sustained(url: str, until, concurrency: int = 8) -> list[httpx.Response]:
    """Keep `concurrency` requests in flight until the coroutine `until()` returns; every request
    started is awaited (none is cancelled), and all responses are returned."""
    stop, responses = asyncio.Event(), []
    async with httpx.AsyncClient(timeout=180, headers={"Authorization": f"Bearer {KEY}"}) as client:
        async def worker(w: int):
            for i in range(10**6):
                if stop.is_set():
                    return
                body = {"prompt": PROMPT, "seed": w * 10**6 + i, "num_steps": 8}
                responses.append(await client.post(f"{url}/v1/images/generations", json=body))

        workers = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
        try:
            await until()
        finally:
            stop.set()
            await asyncio.gather(*workers)
    return responses


async def behind_a_long_request(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST `bodies` together while the sampler computes a long request, so they queue and share its
    next batch by construction (batches take what is queued; no wait for company)."""
    from ray import serve

    sampler = serve.get_deployment_handle("ARSampler", "vgt")
    async with httpx.AsyncClient(timeout=180, headers={"Authorization": f"Bearer {KEY}"}) as client:
        long = asyncio.ensure_future(client.post(f"{url}/v1/images/generations",
                                                 json={"prompt": PROMPT, "n": 4, "num_steps": 100}))
        while (await asyncio.to_thread(lambda: sampler.stats.remote().result()))["running"] == 0:
            assert not long.done(), "the long request finished before the others were sent"
            await asyncio.sleep(0.02)
        responses = await asyncio.gather(*(client.post(f"{url}/v1/images/generations", json=b) for b in bodies))
        assert (await long).status_code == 200
    return list(responses)


def replicas(deployment: str) -> int:
    from ray import serve

    states = serve.status().applications["vgt"].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


# -- API ----------------------------------------------------------------------------------------
def test_openai_client_generates_images_and_seeds_repeat_bytes(service):
    import openai

    from vgt.pipeline import VGTPipeline

    client = openai.OpenAI(base_url=f"{service['url']}/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(model="tiny", prompt=PROMPT, n=2, size="112x112",
                                    response_format="b64_json", extra_body={"seed": 11})
    images = [pixels(d.b64_json) for d in result.data]
    assert len(images) == 2 and all(im.shape == (112, 112, 3) for im in images)
    assert not np.array_equal(images[0], images[1])  # two images of one request differ
    again = client.images.generate(model="tiny", prompt=PROMPT, n=2, size="112x112",
                                   response_format="b64_json", extra_body={"seed": 11})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in result.data]
    assert client.models.list().data[0].id == "tiny"
    # The same images as the pipeline in this process, at the served defaults (the preset's sample
    # config); other thread counts than the replica's: +-1 level at most.
    pipe = VGTPipeline.from_pretrained(service["folder"])
    s = pipe.config.sample
    local = pipe(PROMPT, num_images_per_prompt=2, seed=11, guidance_scale=s.guidance_scale, num_steps=s.num_steps,
                 parallel_tokens=s.parallel_tokens)
    assert max(np.abs(im.astype(int) - np.asarray(ref)).max() for im, ref in zip(images, local)) <= 1


def test_response_carries_request_id_and_assigned_seed(service):
    r = post(service["url"], {"prompt": PROMPT, "output_format": "jpeg"}, **{"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    body = r.json()
    assert body["seed"] == int(r.headers["x-vgt-seed"]) and body["output_format"] == "jpeg"
    assert base64.b64decode(body["data"][0]["b64_json"])[:3] == b"\xff\xd8\xff"  # a JPEG
    # The returned seed reproduces the unseeded request exactly.
    seeded = post(service["url"], {"prompt": PROMPT, "output_format": "jpeg", "seed": body["seed"]})
    assert seeded.json()["data"] == body["data"]
    assert httpx.get(f"{service['url']}/healthz").json()["status"] == "ok"


@pytest.mark.parametrize("body, status, words", [
    (b"{oops", 400, "not valid JSON"),
    ({"prompt": ""}, 400, "at least 1 character"),
    ({"prompt": "x" * 2001}, 400, "limit is 2000"),
    ({"prompt": "x", "n": 99}, 400, "less than or equal to 10"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "supported sizes: ['112x112', 'auto']"),
    ({"prompt": "x", "n": "two"}, 400, "invalid type for n"),
    ({"prompt": "x", "num_steps": 1}, 400, "num_steps must be between 2 and 100"),
    ({"prompt": "x", "guidance_scale": 1e9}, 400, "guidance_scale must be between"),
    ({"prompt": "x", "stile": "vivid"}, 400, "unrecognized request argument supplied: stile"),
])
def test_bad_input_gets_status_and_message_and_service_keeps_answering(service, body, status, words):
    r = post(service["url"], body)
    assert r.status_code == status
    assert words in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"
    assert post(service["url"], {"prompt": PROMPT, "seed": 1, "num_steps": 2}).status_code == 200


def test_auth_is_required_when_the_key_is_set(service):
    assert post(service["url"], {"prompt": PROMPT}, key=None).status_code == 401
    wrong = post(service["url"], {"prompt": PROMPT}, key="test-key-1235")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{service['url']}/v1/models").status_code == 401
    assert httpx.get(f"{service['url']}/healthz").status_code == 200  # probes need no key


def test_client_disconnect_stops_the_running_sampler_group(service):
    from ray import serve

    sampler = serve.get_deployment_handle("ARSampler", "vgt")

    def stats() -> dict:
        return sampler.stats.remote().result()

    async def leave_mid_generation():
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as client:
            request = asyncio.ensure_future(client.post(f"{service['url']}/v1/images/generations",
                                                        json={"prompt": PROMPT, "n": 4, "num_steps": 100}))
            while (await asyncio.to_thread(stats))["running"] == 0:
                assert not request.done(), "the request finished before it could be cancelled"
                await asyncio.sleep(0.05)
            request.cancel()  # closes the connection, as a client going away does

    before = stats()
    asyncio.run(leave_mid_generation())
    _wait(lambda: stats()["aborted"] > before["aborted"], 20, "the sampler never stopped the group")
    assert stats()["cancelled"] > before["cancelled"]
    assert post(service["url"], {"prompt": PROMPT, "seed": 1}).status_code == 200


# -- batching -----------------------------------------------------------------------------------
def test_requests_with_different_settings_share_a_batch_correctly(service):
    url = service["url"]
    a, b = {"prompt": PROMPT, "seed": 3, "num_steps": 2}, {"prompt": "a blue ball", "seed": 4, "num_steps": 6}
    alone = [post(url, a).json()["data"], post(url, b).json()["data"]]
    together = asyncio.run(behind_a_long_request(url, [a, b]))
    assert [r.headers["x-vgt-sampler-batch"] for r in together] == ["2", "2"]
    # Each group samples exactly as alone; the decoder may then batch the two images together or
    # not (timing), and CPU convolutions are not batch-invariant: within one uint8 level (README
    # tolerance policy), not bytes.
    for response, expected in zip(together, alone):
        (got,), (want,) = response.json()["data"], expected
        diff = np.abs(pixels(got["b64_json"]).astype(int) - pixels(want["b64_json"]).astype(int))
        assert diff.max() <= 1, f"{(diff > 1).sum()} pixels differ by more than one level"


def test_sampler_autoscales_up_while_decoder_stays(service):
    decoder_seen: set[int] = set()

    async def until_two_samplers():
        deadline = time.monotonic() + 90
        while replicas("ARSampler") < 2:
            decoder_seen.add(replicas("AEDecoder"))
            assert time.monotonic() < deadline, "the sampler did not scale to 2 replicas"
            await asyncio.sleep(0.25)

    assert replicas("ARSampler") == 1
    responses = asyncio.run(sustained(service["url"], until_two_samplers))
    assert decoder_seen == {1} and {r.status_code for r in responses} == {200}


def test_killing_a_sampler_replica_during_load_fails_no_request(service):
    """Under load, with two sampler replicas, one request is followed until a replica reports it
    computing (`stats()["running_ids"]`, asked of every replica with `broadcast`), and exactly that
    replica is killed: the request was in flight by construction, and it and every other request
    succeed through the ingress's one retry on the surviving replica. (Its batch computes for about
    a second under this load; a poll answers in ~20 ms and is repeated at once, so the kill lands
    long before the batch could end.)"""
    import uuid

    import ray
    from ray import serve

    sampler = serve.get_deployment_handle("ARSampler", "vgt")
    rid = f"kill-{uuid.uuid4().hex[:12]}"
    tracked: dict = {}

    def replica_computing(request_id: str) -> str | None:
        """The tag of the sampler replica whose running batch holds the request, if any."""
        for s in sampler.broadcast("stats").results(timeout_s=10, return_exceptions=True):
            if isinstance(s, dict) and request_id in s["running_ids"]:
                return s["replica"]
        return None

    async def kill_the_replica_computing_one_request():
        deadline = time.monotonic() + 90
        while replicas("ARSampler") < 2:  # a replica to retry on: the load scales the sampler up
            assert time.monotonic() < deadline, "the sampler did not scale to 2 replicas"
            await asyncio.sleep(0.25)
        async with httpx.AsyncClient(timeout=180, headers={"Authorization": f"Bearer {KEY}"}) as client:
            # The longest request the limits allow (4 images x 100 steps).
            request = asyncio.ensure_future(client.post(
                f"{service['url']}/v1/images/generations", headers={"X-Request-ID": rid},
                json={"prompt": PROMPT, "seed": 7, "n": 4, "num_steps": 100}))
            while (tag := await asyncio.to_thread(replica_computing, rid)) is None:
                assert not request.done(), f"request {rid} finished before a replica reported it computing"
            (victim,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].startswith("SERVE_REPLICA") and a["name"].endswith(f"#ARSampler#{tag}")]
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            tracked["response"] = await request  # the load stays on while the router notices

    responses = asyncio.run(sustained(service["url"], kill_the_replica_computing_one_request))
    killed = tracked["response"]
    assert killed.status_code == 200 and killed.headers["x-request-id"] == rid
    assert killed.headers["x-vgt-retries"] == "1"  # it was computing on the killed replica
    assert [r.status_code for r in responses] == [200] * len(responses)


def test_bounded_load_has_no_errors_and_batches(service):
    url = service["url"]
    bodies = [{"prompt": f"{PROMPT} {i % 5}", "seed": i, "num_steps": 2} for i in range(64)]
    responses = asyncio.run(load(url, bodies, concurrency=8))
    assert [r.status_code for r in responses] == [200] * 64
    batches = [int(r.headers["x-vgt-sampler-batch"]) for r in responses]
    assert max(batches) > 1
    # Results inside a batch match the same request sent alone (fp32, other batch shapes: +-1 level).
    for i in (0, 63):
        solo = pixels(post(url, bodies[i]).json()["data"][0]["b64_json"]).astype(int)
        assert np.abs(pixels(responses[i].json()["data"][0]["b64_json"]) - solo).max() <= 1


def test_prometheus_metrics_show_batches_queues_and_stage_latency(service):
    """Our ray.util.metrics as Prometheus exports them on the node's metrics port (every few s)."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]

    def scrape() -> dict[tuple[str, str], float]:
        """(metric name, stage/status/le labels) -> value summed over replicas."""
        totals: dict[tuple[str, str], float] = {}
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            match = re.match(r'(ray_vgt_serve_\w+)\{(.*)\} (\S+)$', line)
            if match:
                labels = ",".join(sorted(re.findall(r'(?:le|stage|status)="[^"]*"', match.group(2))))
                key = (match.group(1), labels)
                totals[key] = totals.get(key, 0.0) + float(match.group(3))
        return totals

    def batched(m) -> bool:  # some sampler batch held more than one image
        return m.get(("ray_vgt_serve_batch_images_count", 'stage="sampler"'), 0) > \
            m.get(("ray_vgt_serve_batch_images_bucket", 'le="1.0",stage="sampler"'), 0)

    _wait(lambda: batched(scrape()), 60, "no sampler batch > 1 in the exported metrics")
    m = scrape()
    assert m[("ray_vgt_serve_requests_total", 'status="200"')] >= 64
    assert m[("ray_vgt_serve_requests_total", 'status="400"')] >= 1
    for stage in ("sampler", "decoder", "request"):
        assert m[("ray_vgt_serve_stage_seconds_count", f'stage="{stage}"')] > 0
    assert ("ray_vgt_serve_queue_depth", 'stage="sampler"') in m


def test_sampler_scales_back_and_the_service_recovers(service):
    from ray import serve

    def settled() -> bool:
        app = serve.status().applications["vgt"]
        states = {name: d.replica_states for name, d in app.deployments.items()}
        return app.status == "RUNNING" and states["ARSampler"] == {"RUNNING": 1} == states["AEDecoder"]

    _wait(settled, 90, "the sampler did not scale back to one healthy replica")
    assert post(service["url"], {"prompt": PROMPT, "seed": 1}).status_code == 200


def test_backpressure_returns_503_quickly(service):
    from pipelines.serve.config import deploy, with_overrides

    tight = with_overrides(service["config"], deployments={"ARSampler": {
        "max_ongoing_requests": 1, "max_queued_requests": 1,
        "autoscaling_config": {**AUTOSCALE, "max_replicas": 1, "target_ongoing_requests": 2}}})
    deploy(tight, timeout_s=60)
    bodies = [{"prompt": PROMPT, "seed": i, "num_steps": 100, "n": 4} for i in range(12)]
    responses = asyncio.run(load(service["url"], bodies, concurrency=12))
    admitted = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code == 503]
    assert len(admitted) + len(rejected) == 12 and len(rejected) >= 6  # 1 running + 1 queued fit
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded" for r in rejected)
    # Refused at once, while the admitted requests were still computing.
    assert max(r.elapsed for r in rejected) < min(r.elapsed for r in admitted)


def test_auth_off_without_the_key(service):
    from pipelines.serve.config import deploy, with_overrides

    open_config = with_overrides(service["config"], deployments={"Ingress": {
        "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": FAST_METRICS}}}})
    deploy(open_config, timeout_s=60)
    assert post(service["url"], {"prompt": PROMPT, "seed": 2}, key=None).status_code == 200
    assert httpx.get(f"{service['url']}/v1/models").json()["data"][0]["id"] == "tiny"


def _wait(condition, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.25)
