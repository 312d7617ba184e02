"""Prometheus metrics of the image service (through `ray.util.metrics`, next to Serve's own).

Ray exports them on every node's metrics port with a `ray_` prefix, e.g.
`ray_vgt_serve_stage_seconds_bucket{stage="sampler"}`. Serve's built-in metrics (request counts,
replica queue lengths, `serve_batch_*`) come on top.
"""
from __future__ import annotations

from functools import lru_cache

LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


@lru_cache(maxsize=None)
def metrics():
    """The metric objects of this process (created once per replica)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    return {
        "queue_depth": Gauge("vgt_serve_queue_depth", "Jobs waiting in a replica for a batch slot",
                             tag_keys=("stage",)),
        "batch_images": Histogram("vgt_serve_batch_images", "Images per executed batch",
                                  boundaries=BATCH_BUCKETS, tag_keys=("stage",)),
        "batch_requests": Histogram("vgt_serve_batch_requests", "Requests per executed batch",
                                    boundaries=BATCH_BUCKETS, tag_keys=("stage",)),
        "stage_seconds": Histogram("vgt_serve_stage_seconds", "Compute time of a batch per stage "
                                   "(sampler, decoder) and end-to-end request time (request)",
                                   boundaries=LATENCY_BUCKETS, tag_keys=("stage",)),
        "requests": Counter("vgt_serve_requests_total", "HTTP requests by status code", tag_keys=("status",)),
        "retries": Counter("vgt_serve_retries_total", "Stage calls retried after a replica died",
                           tag_keys=("stage",)),
        "cancelled": Counter("vgt_serve_cancelled_total", "Jobs dropped because their client went away",
                             tag_keys=("stage",)),
        "model_requests": Counter("vgt_serve_model_requests_total", "Sampler requests per served model "
                                  "(multiplexed serving; Serve counts the loads and unloads)", tag_keys=("model",)),
    }
