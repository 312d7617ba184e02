"""Many tuned models behind one endpoint: Ray Serve model multiplexing (`vgt serve --model NAME=DIR ...`).

The served names map to pipeline folders or adapter folders (`vgt.adapter`). `model_table` reads their
indexes once at deploy time (an adapter whose base is not the pipeline it was trained on is refused
there, naming both fingerprints). The request's `model` picks one: the ingress calls the sampler with
`multiplexed_model_id=NAME`, so Serve routes it to a replica that holds that model when one does, and
`@serve.batch` never puts two models in one batch.

`MultiplexedSampler` loads models on demand (`serve.multiplexed`): at most `max_models_per_replica`
per replica, the least recently used one unloaded first. Adapters that share a base keep one copy of
the base resident and swap on it (their LoRA layers by peft adapter name, their head, queries and
projections by copy) before each batch; a base leaves when its last adapter does. `MultiplexedDecoder`
holds one AE per distinct AE fingerprint (folders that share an AE share its decoder), loaded on
first use. `stats()` counts loads, unloads and requests per model; Serve's own
`serve_multiplexed_models_load_counter` / `..._unload_counter` count the same on the metrics port.
"""
from __future__ import annotations

import asyncio
import logging

from ray import serve

from .metrics import metrics
from .workers import DEFAULT_BATCH, AEDecoder, ARSampler, BatchingReplica

log = logging.getLogger("ray.serve")
DEFAULT_MAX_MODELS = 3  # Serve's own default of max_num_models_per_replica


def model_table(models: dict[str, str]) -> dict[str, dict]:
    """{served name: {"uri", "base" (adapters: the base pipeline folder, else None), "ae" (AE fingerprint),
    "ae_uri" (the pipeline folder whose AE that is)}}; ArtifactError for a folder that is neither a
    pipeline nor an adapter, or an adapter whose base folder now holds another pipeline."""
    from vgt.adapter import adapter_base, is_adapter
    from vgt.artifacts import ArtifactError
    from vgt.pipeline import read_index

    if not models:
        raise ArtifactError("multiplexed serving needs at least one NAME=DIR model")
    table = {}
    for name, uri in models.items():
        index = read_index(uri)
        if not is_adapter(index):
            table[name] = {"uri": uri, "base": None, "ae": index["fingerprints"]["ae"], "ae_uri": uri}
            continue
        base = adapter_base(uri, index)
        base.check(base.path, read_index(base.path)["fingerprints"])
        table[name] = {"uri": uri, "base": base.path, "ae": base.fingerprints["ae"], "ae_uri": base.path}
    return table


class Served:
    """One loaded model of a replica: a pipeline's `SamplerModel`, or an adapter on a shared resident base.
    Serve's LRU eviction calls `__del__`, which hands the base back."""

    def __init__(self, replica: "MultiplexedSampler", name: str, entry: dict):
        from vgt.adapter import read_adapter

        from .model import SamplerModel

        self.replica, self.name, self.base_uri, self._released = replica, name, entry["base"], False
        if self.base_uri is None:
            self.sampler = SamplerModel(entry["uri"], name)
            self.info, self.adapter = self.sampler.info, None
            return
        self.sampler = replica.acquire_base(self.base_uri)
        self.adapter = read_adapter(entry["uri"])
        self.adapter.base.check(self.base_uri, {"ar": self.sampler.model.fingerprint, "ae": entry["ae"]})
        self.info = _adapter_info(self.sampler.info, self.adapter, name)

    def sample(self, jobs, stop):
        """On the replica's worker thread: swap this adapter in when another one is active on the base."""
        if self.adapter is None:
            return self.sampler.sample(jobs, stop)
        if self.replica.active.get(self.base_uri) != self.name:
            self.adapter.apply(self.sampler.model, self.name)
            self.sampler.model.to(self.sampler.device, self.sampler.model.dtype)
            self.replica.active[self.base_uri] = self.name
        return _with_config(self.sampler, self.adapter.config).sample(jobs, stop)

    def __del__(self):
        if self._released:  # Serve calls it on eviction, Python again when the object goes
            return
        self._released = True
        self.replica.unloaded(self)


@serve.deployment(name="ARSampler")
class MultiplexedSampler(ARSampler.func_or_class):
    """The AR sampler of a multiplexed app: `multiplexed_model_id` (a served name) picks the model."""

    STAGE = "sampler"

    def __init__(self, table: dict[str, dict], max_models_per_replica: int = DEFAULT_MAX_MODELS):
        BatchingReplica.__init__(self)  # no model at start: each loads on demand
        self.table = table
        self.bases: dict[str, list] = {}  # base uri -> [SamplerModel, adapters using it]
        self.active: dict[str, str] = {}  # base uri -> the adapter applied to it now
        self.loads, self.unloads, self.hits = {}, {}, {}
        self.resident: list[str] = []  # loaded now, in load order

        async def load(name: str) -> Served:  # Serve's LRU cache of loaded models around this
            if name not in self.table:
                raise KeyError(f"unknown model {name!r}")
            served = await asyncio.get_running_loop().run_in_executor(self._pool, Served, self, name, table[name])
            self.loads[name] = self.loads.get(name, 0) + 1
            self.resident.append(name)
            log.info("sampler: loaded model %r (%s)", name, table[name]["uri"])
            return served

        self.model_for = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load)

    def acquire_base(self, uri: str):
        from .model import SamplerModel

        if uri not in self.bases:
            self.bases[uri] = [SamplerModel(uri, uri), 0]
        self.bases[uri][1] += 1
        return self.bases[uri][0]

    def unloaded(self, served: Served) -> None:
        self.unloads[served.name] = self.unloads.get(served.name, 0) + 1
        self.resident.remove(served.name)
        log.info("sampler: unloaded model %r", served.name)
        if served.base_uri is not None:
            entry = self.bases[served.base_uri]
            entry[1] -= 1
            if self.active.get(served.base_uri) == served.name:
                del self.active[served.base_uri]
            if entry[1] == 0:
                del self.bases[served.base_uri]

    async def info(self):
        """The ModelInfo of the request's model (loading it if needed)."""
        return (await self.model_for(serve.get_multiplexed_model_id())).info

    @serve.batch(**DEFAULT_BATCH)
    async def _batched(self, jobs: list) -> list[dict]:
        name = serve.get_multiplexed_model_id()  # one per batch: Serve splits batches by model id
        served = await self.model_for(name)
        self.hits[name] = self.hits.get(name, 0) + len(jobs)
        metrics()["model_requests"].inc(len(jobs), tags={"model": name})
        images = sum(j.n for j in jobs)
        self.model = served  # read by `_sample_groups` on the worker thread; batches run one at a time
        latents = await self._execute(self._sample_groups, jobs, images)
        return [{"latents": lat, "batch_images": images} for lat in latents]

    def stats(self) -> dict:
        """`ARSampler.stats` plus, per served name, loads, unloads and requests; the models and bases
        resident now."""
        return {**super().stats(), "loads": dict(self.loads), "unloads": dict(self.unloads), "hits": dict(self.hits),
                "resident": list(self.resident), "bases": sorted(self.bases)}


@serve.deployment(name="AEDecoder")
class MultiplexedDecoder(AEDecoder.func_or_class):
    """The AE decoder of a multiplexed app: `multiplexed_model_id` is the AE fingerprint; every distinct
    AE can stay resident (they are few: folders tuned from one base share it)."""

    STAGE = "decoder"

    def __init__(self, ae_uris: dict[str, str]):
        BatchingReplica.__init__(self)
        self.ae_uris = ae_uris

        async def load(fingerprint: str):
            from .model import DecoderModel

            model = await asyncio.get_running_loop().run_in_executor(self._pool, DecoderModel, ae_uris[fingerprint])
            if model.fingerprint != fingerprint:
                raise ValueError(f"{ae_uris[fingerprint]!r}: AE fingerprint {model.fingerprint}, expected {fingerprint}")
            return model

        self.model_for = serve.multiplexed(max_num_models_per_replica=len(ae_uris))(load)

    def ready(self) -> str:
        """The AE fingerprints this decoder serves (loaded on first use)."""
        return ",".join(sorted(self.ae_uris))

    @serve.batch(**DEFAULT_BATCH)
    async def _batched(self, jobs: list) -> list[list[bytes]]:
        self.model = await self.model_for(serve.get_multiplexed_model_id())
        return await self._execute(self._decode_groups, jobs, sum(len(j.latents) for j in jobs))


def _adapter_info(base_info, adapter, name: str):
    import dataclasses

    return dataclasses.replace(base_info, id=name, native_size=(adapter.config.data.resolution,) * 2,
                               sample=adapter.config.sample,
                               fingerprints={**base_info.fingerprints, "adapter": adapter.path})


class _with_config:
    """A SamplerModel seen with another run config (an adapter's sampling defaults)."""

    def __init__(self, sampler, config):
        self.model, self.config, self._sampler = sampler.model, config, sampler

    def sample(self, jobs, stop):
        return type(self._sampler).sample(self, jobs, stop)
