"""Ray Serve image service: latency p50/p95 and images/s at concurrency 1/4/8, with and without
@serve.batch; the per-request overhead of Serve over calling VGTPipeline in-process (target
< 20 ms at concurrency 1) and served images/s at concurrency 8 over the in-process pipeline at
batch 8 (target >= 0.8).

One run deploys cluster/serve.yaml (one replica per deployment, fractional CPUs) with a tiny
random-weight pipeline on a local Ray (or the one already initialised), switches batching through
the deployments' user_config (no replica restart) and measures everything side by side.
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

NAME = "serve"
PROMPT = "a red cube on a table"
CONCURRENCY = (1, 4, 8)
ONE_REPLICA = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}


def run(quick: bool) -> list[dict]:
    import ray
    import torch
    from ray import serve

    from pipelines.serve.config import APP_NAME, serve_running
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    requests = 16 if quick else 64
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(include_dashboard=False, log_to_driver=False)
    own_serve = not serve_running()
    with tempfile.TemporaryDirectory(prefix="vgt-bench-serve-") as folder:
        torch.manual_seed(0)
        VGTPipeline.from_config(get_preset("tiny")).save_pretrained(folder)
        try:
            return _rows(folder, requests)
        finally:  # remove only what this benchmark started
            if own_serve:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            if own_ray:
                ray.shutdown()


def _rows(folder: str, requests: int) -> list[dict]:
    from pipelines.serve.config import deploy, free_port, load_config, placement_overrides, with_overrides

    base = with_overrides(load_config(), model=folder, host="127.0.0.1", port=free_port(),
                          args={"model_name": "bench"}, deployments=placement_overrides("auto"))
    rows, served8 = [], None
    for batch in (1, 8):  # batch_wait_timeout_s: the shipped config's
        batching = {"user_config": {"max_batch_size": batch}}
        config = with_overrides(base, deployments={"ARSampler": {**ONE_REPLICA, **batching},
                                                   "AEDecoder": {**ONE_REPLICA, **batching},
                                                   "Ingress": ONE_REPLICA})
        url = deploy(config, timeout_s=600)
        asyncio.run(_load(url, 4, 4))  # warm-up: first batches, connection pools
        if batch == 8:  # the shipped settings: Serve's whole cost at concurrency 1
            rows += _overhead(url, folder, requests)
        for concurrency in CONCURRENCY:
            wall, latencies, batches = asyncio.run(_load(url, requests, concurrency))
            rows.append({"case": f"serve, batch {batch}" if batch > 1 else "serve, no batching",
                         "concurrency": concurrency, **_summary(latencies, wall),
                         "sampler_batch": statistics.mean(batches)})
            if (batch, concurrency) == (8, 8):
                served8 = rows[-1]["images_per_s"]
    inprocess = next(r["p50_ms"] for r in rows if r["case"].startswith("in-process"))
    for row in rows:
        if "p95_ms" in row:
            row["p50_vs_in_process"] = row["p50_ms"] / inprocess
    batch8 = _in_process_batch(folder, 8, max(2, requests // 8))
    rows += [batch8, {"case": "serve at concurrency 8 / in-process batch 8 (images/s; target >= 0.8)",
                      "concurrency": 8, "ratio": served8 / batch8["images_per_s"]}]
    return rows


def _in_process(pipe, prompts: list[str], seed: int) -> None:
    """What one request costs in process: sample, decode, PNG, base64 (as the service answers)."""
    import base64
    import io

    for image in pipe(prompts, seed=seed):  # the folder's config.sample, as the served request
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        base64.b64encode(buf.getvalue())


def _overhead(url: str, folder: str, requests: int) -> list[dict]:
    """The same request through VGTPipeline in this process (one torch thread, as a replica; PNG and
    base64 included) and through Serve, alternating, so both see the same machine load."""
    import httpx
    import torch

    from vgt.pipeline import VGTPipeline

    pipe, threads = VGTPipeline.from_pretrained(folder), torch.get_num_threads()
    local, served = [], []
    torch.set_num_threads(1)
    try:
        with httpx.Client(timeout=300) as client:  # one connection, as a client that keeps it alive
            for i in range(requests + 2):
                start = time.perf_counter()
                _in_process(pipe, [PROMPT], seed=i)
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                client.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "seed": i}).raise_for_status()
                served.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    local, served = local[2:], served[2:]  # warm-up
    gaps = [b - a for a, b in zip(local, served)]
    return [{"case": "in-process VGTPipeline + PNG + base64", "concurrency": 1, **_summary(local, sum(local))},
            {"case": "serve, same requests interleaved", "concurrency": 1, **_summary(served, sum(served))},
            {"case": "Serve overhead per request (median of paired differences; target < 20 ms)",
             "concurrency": 1, "p50_ms": 1000 * statistics.median(gaps)}]


def _in_process_batch(folder: str, batch: int, calls: int) -> dict:
    """images/s of VGTPipeline on `batch` prompts per call (one torch thread per stage as the two
    replicas have; PNG and base64 included)."""
    import torch

    from vgt.pipeline import VGTPipeline

    pipe, threads = VGTPipeline.from_pretrained(folder), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _in_process(pipe, [PROMPT] * batch, seed=0)  # warm-up
        start = time.perf_counter()
        for i in range(calls):
            _in_process(pipe, [PROMPT] * batch, seed=i)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"case": f"in-process VGTPipeline, batch {batch}", "concurrency": batch,
            "images_per_s": batch * calls / wall}


async def _load(url: str, requests: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    """(wall seconds, per-request latencies, the sampler batch each request ran in) of `requests`
    POSTs, `concurrency` in flight."""
    import httpx

    gate, latencies, batches = asyncio.Semaphore(concurrency), [], []
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(i: int):
            async with gate:
                start = time.perf_counter()
                r = await client.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "seed": i})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)
                batches.append(int(r.headers["x-vgt-sampler-batch"]))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
    return time.perf_counter() - start, latencies, batches


def _summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "images_per_s": len(ordered) / wall}

