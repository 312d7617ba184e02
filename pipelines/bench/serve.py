"""Ray Serve image service: latency p50/p95 and images/s at concurrency 1/4/8, with and without
@serve.batch, and the per-request overhead of Serve over calling VGTPipeline in-process.

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
    rows = []
    for batch in (1, 8):
        batching = {"user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.02}}
        config = with_overrides(base, deployments={"ARSampler": {**ONE_REPLICA, **batching},
                                                   "AEDecoder": {**ONE_REPLICA, **batching},
                                                   "Ingress": ONE_REPLICA})
        url = deploy(config, timeout_s=600)
        asyncio.run(_load(url, 4, 4))  # warm-up: first batches, connection pools
        if batch == 1:  # Serve's own cost, without the batching wait (<= batch_wait_timeout_s per stage)
            rows += _overhead(url, folder, requests)
        for concurrency in CONCURRENCY:
            wall, latencies = asyncio.run(_load(url, requests, concurrency))
            rows.append({"case": f"serve, batch {batch}" if batch > 1 else "serve, no batching",
                         "concurrency": concurrency, **_summary(latencies, wall)})
    inprocess = next(r["p50_ms"] for r in rows if r["case"].startswith("in-process"))
    for row in rows:
        if "p95_ms" in row:
            row["p50_vs_in_process"] = row["p50_ms"] / inprocess
    return rows


def _overhead(url: str, folder: str, requests: int) -> list[dict]:
    """The same request through VGTPipeline in this process (one torch thread, as a replica; PNG
    encoding included) and through Serve, alternating, so both see the same machine load."""
    import io

    import httpx
    import torch

    from vgt.pipeline import VGTPipeline

    pipe, threads = VGTPipeline.from_pretrained(folder), torch.get_num_threads()
    local, served = [], []
    torch.set_num_threads(1)
    try:
        for i in range(requests + 2):
            start = time.perf_counter()
            image = pipe(PROMPT, seed=i)[0]  # the folder's config.sample, as the served request
            image.save(io.BytesIO(), format="PNG")
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "seed": i}, timeout=300) \
                .raise_for_status()
            served.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    local, served = local[2:], served[2:]  # warm-up
    gaps = [b - a for a, b in zip(local, served)]
    return [{"case": "in-process VGTPipeline", "concurrency": 1, **_summary(local, sum(local))},
            {"case": "serve, same requests interleaved", "concurrency": 1, **_summary(served, sum(served))},
            {"case": "Serve overhead per request (median of paired differences)", "concurrency": 1,
             "p50_ms": 1000 * statistics.median(gaps)}]


async def _load(url: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of `requests` POSTs, `concurrency` in flight."""
    import httpx

    gate, latencies = asyncio.Semaphore(concurrency), []
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(i: int):
            async with gate:
                start = time.perf_counter()
                r = await client.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "seed": i})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
    return time.perf_counter() - start, latencies


def _summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "images_per_s": len(ordered) / wall}

