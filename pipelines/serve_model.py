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

from .serve_api import Cancelled, ModelInfo, SampleJob

log = logging.getLogger("ray.serve")
STRIDE = 28  # pixels per latent token side (the VLM vision towers' patch x merge)


def fetch(uri: str, component: str) -> tuple[str, object]:
    """(local folder of `component`, handle keeping a temporary download alive)."""
    from vgt import io as vio

    source = vio.join(uri, component)
    if not vio.is_s3(uri):
        return source, None
    tmp = tempfile.TemporaryDirectory(prefix=f"vgt-serve-{component}-")
    return vio.local_copy(source, tmp.name), tmp


def device_and_dtype():
    """cuda + bf16 autocast when a GPU is visible to this replica, else cpu + fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), None


class SamplerModel:
    """Tokenizer + AR model: prompts -> normalised latents, one generator per image."""

    def __init__(self, uri: str, model_name: str):
        import torch

        from vgt.ar.model import VGTModel

        start = time.perf_counter()
        folder, self._tmp = fetch(uri, "ar")
        self.device, self.dtype = device_and_dtype()
        self.model = VGTModel.from_pretrained(folder).to(self.device).eval()
        cfg = pipeline_config(uri)
        self.sample_cfg = cfg.sample
        torch.set_grad_enabled(False)
        self.info = ModelInfo(
            id=model_name, native_size=(cfg.data.resolution,) * 2, stride=STRIDE,
            max_grid=self.model.config.max_grid, guidance_scale=self.sample_cfg.guidance_scale,
            num_steps=self.sample_cfg.num_steps, parallel_tokens=self.sample_cfg.parallel_tokens,
            min_num_steps=2 if self.sample_cfg.sampler == "sde" else 1,
            fingerprints={"ar": self.model.fingerprint})
        log.info("sampler: loaded %s (ar fingerprint %s) on %s in %.1fs", uri, self.model.fingerprint,
                 self.device, time.perf_counter() - start)

    def sample(self, jobs: list[SampleJob], stop: Callable[[], bool]) -> np.ndarray:
        """Latents [sum n, C, h, w] (fp32) for jobs of equal settings; raises Cancelled when `stop()`."""
        from vgt.ar.sampling import image_generator, sample_latents

        first, cfg = jobs[0], self.sample_cfg

        def progress(done: int, total: int) -> None:
            if stop():
                raise Cancelled(f"stopped after {done}/{total} groups")

        with _autocast(self.device, self.dtype):
            latents = sample_latents(
                self.model, [j.prompt for j in jobs for _ in range(j.n)],
                [image_generator(j.seed, i) for j in jobs for i in range(j.n)], first.grid,
                guidance_scale=first.guidance_scale, cfg_schedule=cfg.cfg_schedule, num_steps=first.num_steps,
                parallel_tokens=first.parallel_tokens, order=cfg.order, method=cfg.sampler,
                feed_mode=cfg.feed_mode, progress=progress)
        return latents.float().cpu().numpy()


class DecoderModel:
    """The AE decoder: latents -> uint8 RGB images [B, H, W, 3]."""

    def __init__(self, uri: str):
        import torch

        from vgt.ae.model import VGTAutoencoder

        start = time.perf_counter()
        folder, self._tmp = fetch(uri, "ae")
        self.device, self.dtype = device_and_dtype()
        self.ae = VGTAutoencoder.from_pretrained(folder).to(self.device).eval()
        self.fingerprint = self.ae.fingerprint
        torch.set_grad_enabled(False)
        log.info("decoder: loaded %s (ae fingerprint %s) on %s in %.1fs", uri, self.fingerprint, self.device,
                 time.perf_counter() - start)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        import torch

        with _autocast(self.device, self.dtype):
            pixels = self.ae.decode(torch.from_numpy(latents).to(self.device))
        return to_uint8(pixels)


def to_uint8(pixels) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8) \
        .permute(0, 2, 3, 1).cpu().numpy()


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """uint8 [H, W, 3] -> PNG / JPEG / WebP bytes (deterministic for equal pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    options = {"png": {}, "jpeg": {"quality": 95}, "webp": {"quality": 95}}[fmt]
    Image.fromarray(image).save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def _autocast(device, dtype):
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def pipeline_config(uri: str):
    """The VGTConfig recorded in the pipeline folder's index."""
    from vgt import io as vio
    from vgt.config import VGTConfig, from_dict

    return from_dict(VGTConfig, vio.read_json(vio.join(uri, "model_index.json"))["config"])
