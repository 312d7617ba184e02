"""Model side of the Serve replicas: load a pipeline folder (local or s3://), sample, decode, encode.

Each replica loads only the components it runs (the sampler: tokenizer + AR model; the decoder:
the AE), from a local folder or from an s3:// folder downloaded to a private temporary directory.
The artifact loaders check format version and fingerprint; load time is logged.
"""
from __future__ import annotations

import io
import logging
import tempfile
import time
from typing import Callable

import numpy as np

from .api import Cancelled, ModelInfo, SampleJob, partial_groups

log = logging.getLogger("ray.serve")
STRIDE = 28  # pixels per latent token side: every backbone's vision tower (patch 14 x merge 2)


def fetch(uri: str, index: dict, components: tuple[str, ...], tmp: str) -> dict[str, str]:
    """Local folders of the named components; s3:// ones are downloaded under `tmp` first."""
    from vgt import io as vio

    return {c: vio.local_copy(vio.join(uri, index["components"][c]), f"{tmp}/{c}") for c in components}


def check_fingerprint(uri: str, index: dict, component: str, fingerprint: str) -> None:
    """The loaded component must be the one the index names (not a stray copy from another export)."""
    from vgt.artifacts import ArtifactError

    expected = index.get("fingerprints", {}).get(component)
    if expected != fingerprint:
        raise ArtifactError(f"{uri!r}: {component} fingerprint {fingerprint} differs from {expected} in its index")


def device_and_dtype():
    """cuda + bf16 weights when a GPU is visible to this replica (as `vgt generate --bf16`), else cpu + fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


class SamplerModel:
    """Tokenizer + AR model of a pipeline folder: prompts -> normalised latents, one generator per image."""

    def __init__(self, uri: str, model_name: str):
        from vgt.ar.model import VGTModel
        from vgt.ar.prompts import load_tokenizer_folder
        from vgt.config import VGTConfig, from_dict
        from vgt.pipeline import read_index

        start = time.perf_counter()
        index = read_index(uri)  # checks the pipeline format version
        self.config = from_dict(VGTConfig, index["config"])
        with tempfile.TemporaryDirectory(prefix="vgt-serve-") as tmp:
            local = fetch(uri, index, ("tokenizer", "ar"), tmp)
            model = VGTModel.from_pretrained(local["ar"], tokenizer=load_tokenizer_folder(local["tokenizer"]))
        check_fingerprint(uri, index, "ar", model.fingerprint)
        self.device, dtype = device_and_dtype()
        self.model = model.to(self.device, dtype).eval()
        self.attention = self.model.use_attention(self.device, dtype)
        self.info = ModelInfo(
            id=model_name, native_size=(self.config.data.resolution,) * 2, stride=STRIDE,
            max_grid=model.config.max_grid, sample=self.config.sample, fingerprints={"ar": model.fingerprint})
        log.info("sampler: loaded %s (ar %s) on %s, %s attention, in %.1fs", uri, model.fingerprint, self.device,
                 self.attention, time.perf_counter() - start)

    def sample(self, jobs: list[SampleJob], stop: Callable[[], bool]) -> np.ndarray:
        """Latents [sum n, C, h, w] (fp32) for jobs of equal settings; raises Cancelled once `stop()`.
        Image i of a job uses `image_generator(seed, i)`, as `VGTPipeline(..., seed=seed)` does; the
        settings a job does not carry come from the folder's config.sample, as in VGTPipeline."""
        from vgt.ar.queries import group_sizes
        from vgt.ar.sampling import image_generator, sample_latents

        first = jobs[0]
        tokens = first.grid[0] * first.grid[1]
        settings = self.config.sample.resolve(num_tokens=tokens, guidance_scale=first.guidance_scale,
                                              num_steps=first.num_steps, parallel_tokens=first.parallel_tokens)
        done_tokens = np.cumsum(group_sizes(tokens, settings.parallel_tokens)).tolist()
        groups = len(done_tokens)
        listening = [j for j in jobs if j.listener is not None]  # streaming requests
        previews = {id(j): partial_groups(groups, j.partial_images) for j in listening}
        starts = np.cumsum([0] + [j.n for j in jobs]).tolist()

        def progress(done: int, total: int) -> None:
            if stop():
                raise Cancelled(f"stopped after {done}/{total} groups")
            for job in listening:
                job.listener({"type": "progress", "tokens": done_tokens[done - 1], "of": tokens})

        def preview(done: int, latents) -> None:
            for k, job in enumerate(jobs):
                if done in previews.get(id(job), ()):
                    job.listener({"type": "partial", "index": previews[id(job)].index(done),
                                  "latents": latents[starts[k]:starts[k + 1]].cpu().numpy()})

        latents = sample_latents(
            self.model, [j.prompt for j in jobs for _ in range(j.n)],
            [image_generator(j.seed, i) for j in jobs for i in range(j.n)], first.grid, **settings.as_kwargs(),
            progress=progress, preview=preview, preview_after=set().union(*previews.values()))
        return latents.float().cpu().numpy()


class DecoderModel:
    """The AE of a pipeline folder: latents -> uint8 RGB images [B, H, W, 3]."""

    def __init__(self, uri: str):
        from vgt.ae import VGTAutoencoder
        from vgt.pipeline import read_index

        start = time.perf_counter()
        index = read_index(uri)
        with tempfile.TemporaryDirectory(prefix="vgt-serve-") as tmp:
            ae = VGTAutoencoder.from_pretrained(fetch(uri, index, ("ae",), tmp)["ae"])
        check_fingerprint(uri, index, "ae", ae.fingerprint)
        self.fingerprint = ae.fingerprint
        self.device, self.dtype = device_and_dtype()
        self.ae = ae.to(self.device, self.dtype).eval()
        log.info("decoder: loaded %s (ae %s) on %s in %.1fs", uri, self.fingerprint, self.device,
                 time.perf_counter() - start)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        import torch

        from vgt.data.images import to_uint8

        with torch.inference_mode():  # grad mode is per thread: set it in the worker thread itself
            pixels = self.ae.decode(torch.from_numpy(latents).to(self.device, self.dtype))
        return to_uint8(pixels)


def encode_image(image: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """uint8 [H, W, 3] -> PNG / JPEG / WebP bytes (deterministic for equal pixels); `quality` (0-100,
    the request's output_compression; default 95) applies to JPEG and WebP only."""
    from PIL import Image

    buf = io.BytesIO()
    lossy = {"quality": 95 if quality is None else quality}
    options = {"png": {}, "jpeg": lossy, "webp": lossy}[fmt]
    Image.fromarray(image).save(buf, format=fmt.upper(), **options)
    return buf.getvalue()
