"""The two model deployments: `ARSampler` (prompt -> latents) and `AEDecoder` (latents -> images).

Both batch concurrent requests with `@serve.batch` and compute in one worker thread, so the
replica's event loop keeps accepting requests, answering health checks and noticing cancellations
while a batch runs. Requests that arrive while a batch computes are held in `_submit` and handed to
`@serve.batch` together when it ends, so they form the next batch: Serve's batcher forms a batch as
soon as its wait ends, not when the previous batch has finished, so with no wait each request
arriving during a computation became a batch of its own queued behind it (at 8 requests in flight
the sampler ran batches of one). A batch may mix requests whose sampling
settings differ: it is split into groups of equal settings (`SampleJob.key()`), one model call per
group, so each request gets exactly the computation it asked for. Per-image generators come from
(seed, image index), so an image does not depend on what else shares its batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from .api import Cancelled, SampleJob
from .metrics import metrics

log = logging.getLogger("ray.serve")

# No wait for company: a lone request starts at once; under load the requests held while a batch
# computes form the next one (`BatchingReplica._submit`), so batches fill by themselves.
DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.0}


class BatchingReplica:
    """Shared plumbing: a one-thread executor, batch settings from `user_config`, queue depth."""

    STAGE = ""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vgt-{self.STAGE}")
        self._waiting: set[int] = set()
        self._metrics = metrics()
        self.cancelled = self.aborted = self.running = 0  # for `stats()`
        self._running_jobs: list = []  # the batch on the worker thread now, for `stats()`
        self._computing = 0  # batches in `_execute` now (several when Serve splits one by model id)
        self._free: asyncio.Event | None = None  # set when they end: the jobs held meanwhile go on together

    def reconfigure(self, config: dict) -> None:
        """`user_config`: {max_batch_size, batch_wait_timeout_s} of this stage's @serve.batch."""
        config = {**DEFAULT_BATCH, **(config or {})}
        unknown = set(config) - set(DEFAULT_BATCH)
        if unknown:
            raise ValueError(f"{self.STAGE}: unknown user_config keys {sorted(unknown)}")
        self._batched.set_max_batch_size(int(config["max_batch_size"]))
        self._batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    async def _submit(self, job):
        """Queue `job` for the next batch; mark it cancelled if the caller goes away. While a batch
        computes, jobs wait here and are queued together when it ends (one batch, not one each)."""
        self._waiting.add(id(job))
        self._gauge()
        try:
            if self._computing:
                self._free = self._free or asyncio.Event()
                await self._free.wait()
            return await self._batched(job)
        except asyncio.CancelledError:
            job.cancelled = True
            self.cancelled += 1
            self._metrics["cancelled"].inc(tags={"stage": self.STAGE})
            raise
        finally:
            self._waiting.discard(id(job))
            self._gauge()

    async def _execute(self, fn, jobs: list, images: int):
        """Run `fn(jobs)` on the worker thread; record batch size and compute time."""
        for job in jobs:
            self._waiting.discard(id(job))
        self._gauge()
        tags = {"stage": self.STAGE}
        self._metrics["batch_images"].observe(images, tags=tags)
        self._metrics["batch_requests"].observe(len(jobs), tags=tags)
        start, self.running, self._running_jobs = time.perf_counter(), len(jobs), jobs
        self._computing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, jobs)
        finally:
            self.running, self._running_jobs = 0, []
            self._computing -= 1
            if not self._computing and self._free is not None:
                self._free.set()  # wakes every job held during this batch: they queue in one go
                self._free = None
            self._metrics["stage_seconds"].observe(time.perf_counter() - start, tags=tags)

    def _gauge(self) -> None:
        self._metrics["queue_depth"].set(len(self._waiting), tags={"stage": self.STAGE})

    def stats(self) -> dict:
        """Jobs cancelled by their callers, groups stopped mid-way, jobs waiting and running now;
        introspection for operators and tests (`handle.broadcast("stats")` asks every replica):
        `replica` is this replica's Serve tag (its actor is `SERVE_REPLICA::<app>#<deployment>#<tag>`)
        and `running_ids` the request ids of the jobs in the batch computing now (sampler only)."""
        return {"cancelled": self.cancelled, "aborted": self.aborted, "waiting": len(self._waiting),
                "running": self.running, "replica": serve.get_replica_context().replica_tag,
                "running_ids": [getattr(j, "request_id", "") for j in self._running_jobs]}


@serve.deployment(name="ARSampler")
class ARSampler(BatchingReplica):
    STAGE = "sampler"

    def __init__(self, model: str, model_name: str):
        from .model import SamplerModel

        super().__init__()
        self.model = SamplerModel(model, model_name)

    def info(self):
        """The served model's ModelInfo (a replica exists only once its weights are loaded)."""
        return self.model.info

    async def sample(self, job: SampleJob) -> dict:
        """One request -> {"latents": float32 [n, C, h, w], "batch_images": images in its batch}."""
        return await self._submit(job)

    async def sample_stream(self, job: SampleJob):
        """`sample` for a streaming request: yields {"type": "queued"} at once, {"type": "progress",
        "tokens", "of"} after each token group, {"type": "partial", "index", "latents"} for its
        previews, then `sample`'s dict with "type": "done". A caller that goes away cancels the job
        as in `sample`."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job.listener = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        result = asyncio.ensure_future(self._submit(job))
        try:
            yield {"type": "queued"}  # at once: the caller knows it was admitted (or gets back-pressure)
            while not result.done():
                event = asyncio.ensure_future(events.get())
                await asyncio.wait({event, result}, return_when=asyncio.FIRST_COMPLETED)
                if event.done():
                    yield event.result()
                else:
                    event.cancel()
            await asyncio.sleep(0)  # events the worker thread queued before it finished
            while not events.empty():
                yield events.get_nowait()
            yield {"type": "done", **result.result()}
        finally:
            result.cancel()  # no-op when done; else the caller left: the job is marked cancelled

    @serve.batch(**DEFAULT_BATCH)
    async def _batched(self, jobs: list[SampleJob]) -> list[dict]:
        images = sum(j.n for j in jobs)
        latents = await self._execute(self._sample_groups, jobs, images)
        return [{"latents": lat, "batch_images": images} for lat in latents]

    def _sample_groups(self, jobs: list[SampleJob]) -> list:
        """Per job its latents (None when its group was cancelled); one model call per settings group."""
        out: dict[int, object] = {}
        for group in group_jobs(jobs):
            try:
                latents = self.model.sample(group, stop=lambda g=group: all(j.cancelled for j in g))
            except Cancelled:
                self.aborted += 1
                log.info("sampler: stopped the group of requests %s: their clients all left",
                         [j.request_id for j in group])
                continue
            for job, lat in zip(group, split(latents, [j.n for j in group])):
                out[id(job)] = lat
        return [out.get(id(job)) for job in jobs]


@serve.deployment(name="AEDecoder")
class AEDecoder(BatchingReplica):
    STAGE = "decoder"

    def __init__(self, model: str):
        from .model import DecoderModel

        super().__init__()
        self.model = DecoderModel(model)

    def ready(self) -> str:
        """The AE fingerprint (a replica exists only once its weights are loaded)."""
        return self.model.fingerprint

    async def decode(self, job: dict) -> list[bytes]:
        """{"latents": [n, C, h, w], "output_format": "png", "output_compression": None} -> n encoded images."""
        return await self._submit(DecodeJob(job["latents"], job["output_format"], job.get("output_compression")))

    @serve.batch(**DEFAULT_BATCH)
    async def _batched(self, jobs: list["DecodeJob"]) -> list[list[bytes]]:
        return await self._execute(self._decode_groups, jobs, sum(len(j.latents) for j in jobs))

    def _decode_groups(self, jobs: list["DecodeJob"]) -> list[list[bytes]]:
        """Jobs with equal latent grids share one decoder call; images are encoded per job."""
        import numpy as np

        from .model import encode_image

        out: dict[int, list[bytes]] = {}
        for group in _groups(jobs, lambda j: j.latents.shape[1:]):
            pixels = self.model.decode(np.concatenate([j.latents for j in group]))
            for job, imgs in zip(group, split(pixels, [len(j.latents) for j in group])):
                out[id(job)] = [encode_image(img, job.output_format, job.output_compression) for img in imgs]
        return [out[id(job)] for job in jobs]


class DecodeJob:
    """One request's latents and wanted image format, as queued in a decoder replica."""

    def __init__(self, latents, output_format: str, output_compression: int | None = None):
        self.latents, self.output_format, self.output_compression = latents, output_format, output_compression
        self.cancelled = False


def group_jobs(jobs: list[SampleJob]) -> list[list[SampleJob]]:
    """Jobs grouped by sampling settings, in order of first appearance."""
    return _groups(jobs, SampleJob.key)


def split(array, sizes: list[int]) -> list:
    """Consecutive slices of `array` along dim 0 with the given sizes."""
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [array[a:b] for a, b in zip(bounds, bounds[1:])]


def _groups(items: list, key) -> list[list]:
    grouped: dict = {}
    for item in items:
        grouped.setdefault(key(item), []).append(item)
    return list(grouped.values())
