"""Images from a served endpoint (`vgt serve`, OpenAI Images API) for the shapes benchmark.

One POST /v1/images/generations per image (n=1) with an explicit seed, so a request's image is
reproducible and the request count is prompts x images per prompt. Standard library only
(urllib), a few requests in flight at once.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from vgt.errors import VGTError
from vgt.progress import Progress


class EndpointError(VGTError):
    """The endpoint refused or failed a request; the message carries its status and error text."""


@dataclass
class HttpStats:
    requests: int = 0
    ok: int = 0
    seconds: list[float] = field(default_factory=list)


def post_image(url: str, prompt: str, seed: int, sample: dict, timeout: float = 300.0) -> bytes:
    body = json.dumps({"prompt": prompt, "n": 1, "seed": seed, "response_format": "b64_json", **sample}).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/images/generations", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise EndpointError(f"{url}: HTTP {err.code}: {err.read().decode(errors='replace')[:500]}") from err
    except urllib.error.URLError as err:
        raise EndpointError(f"{url}: cannot reach the endpoint ({err.reason})") from err
    return base64.b64decode(payload["data"][0]["b64_json"])


def fetch_images(url: str, prompts: list[str], n: int, seed: int = 0, sample: dict | None = None,
                 parallel: int = 4, stats: HttpStats | None = None) -> dict[tuple[int, int], bytes]:
    """{(prompt index, sample index): PNG bytes}; image k of prompt i is requested with seed + i * n + k."""
    stats = stats if stats is not None else HttpStats()
    jobs = [(i, k) for i in range(len(prompts)) for k in range(n)]
    lock = threading.Lock()

    def one(job):
        i, k = job
        start = time.perf_counter()
        with lock:
            stats.requests += 1
        png = post_image(url, prompts[i], seed + i * n + k, sample or {})
        with lock:
            stats.ok += 1
            stats.seconds.append(time.perf_counter() - start)
        return job, png

    with ThreadPoolExecutor(max_workers=parallel) as pool, Progress("eval fetch", total=len(jobs), unit="image") as bar:
        images = {}
        for job, png in pool.map(one, jobs):
            images[job] = png
            bar.update(1)
        return images
