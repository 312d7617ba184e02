"""`vgt eval` as Ray Data programs: reconstruction metrics over a prepared dataset, and batch
generation for the shapes benchmark and the GenEval / DPG-Bench folder layouts.

Reconstruction: an actor pool, each actor holding the AE (+ the feature network); one prepared
part per call. Generation: one row per image (prompt index, sample index, image id), so every
image draws from its own generator, `image_generator(seed + image id, 0)`: exactly what a `vgt serve`
request with that seed and n=1 uses (pipelines.eval.http), so a folder and its endpoint give the same
images. The pictures do not depend on how Ray batches rows; the driver receives PNG bytes and
writes the layouts. Sampling settings not given come from the folder's config.sample.

Precision: on a GPU both actors run their models in bf16 (as the reference evaluates, and as `vgt serve`
samples), switching the attention kernel to match (flash-attention where it imports); on the CPU in fp32.
The feature network of the Fréchet proxy stays fp32.
"""
from __future__ import annotations

import io
import logging
import time
from typing import Iterator

import numpy as np

from vgt.data.reader import PreparedDataset
from vgt.eval.frechet import FeatureStats, frechet_from_stats
from vgt.progress import Progress

log = logging.getLogger(__name__)
FD_LABEL = "Fréchet distance on EfficientNet-Lite0 (ImageNet) pooled features: a proxy, NOT FID"


def _ray():
    import ray

    if not ray.is_initialized():  # RAY_ADDRESS (e.g. under `ray job submit`) or a local cluster
        ray.init()
    return ray


def placement():
    """(device, dtype) an evaluation actor runs its model in: a visible GPU in bf16, else the CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def place(model, device, dtype):
    """`model` moved to `device` in `dtype`, its attention switched to what computes there (`use_attention`,
    for the models that have one; a VGTPipeline's `to` switches both of its models itself)."""
    model = model.to(device, dtype)
    if hasattr(model, "use_attention"):
        model.use_attention(device, dtype)
    return model


def _gpus(num_gpus: float | None) -> float:
    if num_gpus is not None:
        return num_gpus
    return 1 if _ray().cluster_resources().get("GPU", 0) > 0 else 0


class ReconActor:
    """Ray Data actor: the AE (+ feature net); `__call__` evaluates whole parts."""

    def __init__(self, data: str, ae: str, convention: str, fd: bool, batch_size: int, torch_threads: int):
        import torch

        from vgt.ae import VGTAutoencoder
        from vgt.eval.efficientnet_lite import load_pretrained

        torch.set_num_threads(torch_threads)
        device, dtype = placement()
        self.ae = place(VGTAutoencoder.from_pretrained(ae), device, dtype).eval()
        self.features = load_pretrained().to(device) if fd else None  # fp32: the metric's own precision
        self.data = PreparedDataset(data)
        self.convention, self.batch_size = convention, batch_size

    def __call__(self, batch: dict) -> dict:
        from vgt.eval.recon import evaluate_batch

        parts = {p.name: p for p in self.data.parts}
        out: dict[str, list] = {}
        for name in batch["name"]:
            for rows in self.data.iter_batches([parts[str(name)]], columns=["image"], batch_size=self.batch_size):
                got = evaluate_batch(self.ae, rows.column("image").to_pylist(), self.data.resolution,
                                     self.convention, self.features)
                for key, values in got.items():
                    out.setdefault(key, []).extend(list(values))
        return {k: np.stack(v) for k, v in out.items()}


def recon_eval(ae: str, data: str, convention: str = "standard", fd: bool = True, batch_size: int = 32,
               concurrency: int = 1, num_cpus: float = 1, num_gpus: float | None = None) -> dict:
    """Mean PSNR / SSIM (and the proxy Fréchet distance) of `ae`'s reconstructions of `data`."""
    start = time.time()
    src = PreparedDataset(data)
    ray = _ray()
    ds = ray.data.from_items([{"name": p.name} for p in src.parts], override_num_blocks=len(src.parts))
    ds = ds.map_batches(ReconActor, batch_size=1, concurrency=concurrency, num_cpus=num_cpus, num_gpus=_gpus(num_gpus),
                        fn_constructor_kwargs=dict(data=data, ae=ae, convention=convention, fd=fd,
                                                   batch_size=batch_size, torch_threads=max(1, int(num_cpus))))
    psnrs, ssims, real, recon = [], [], FeatureStats(), FeatureStats()
    progress = Progress("eval recon", total=len(src.parts), unit="part")
    for b in ds.iter_batches(batch_format="numpy", batch_size=None):  # one part per batch
        progress.update(1, images=len(psnrs) + len(b["psnr"]))
        psnrs.extend(b["psnr"].tolist())
        ssims.extend(b["ssim"].tolist())
        if fd:
            real, recon = real.add(b["real_features"]), recon.add(b["recon_features"])
    progress.close()
    finite = [p for p in psnrs if np.isfinite(p)]
    result = {"convention": convention, "images": len(psnrs), "psnr": float(np.mean(finite)) if finite else None,
              "identical_images": len(psnrs) - len(finite), "ssim": float(np.mean(ssims)) if ssims else None,
              "ae": ae, "data": data, "seconds": round(time.time() - start, 2)}
    if fd:
        result.update(frechet_proxy=frechet_from_stats(real, recon), frechet_proxy_label=FD_LABEL)
    return result


class GenerateActor:
    """Ray Data actor: a `VGTPipeline`; `__call__` turns rows (prompt, image id) into PNG bytes."""

    def __init__(self, model: str, seed: int, sample: dict, torch_threads: int):
        import torch

        from vgt.pipeline import VGTPipeline

        torch.set_num_threads(torch_threads)
        self.pipe = place(VGTPipeline.from_pretrained(model), *placement())
        self.seed, self.sample = seed, sample

    def __call__(self, batch: dict) -> dict:
        from vgt.ar.sampling import image_generator

        ids = [int(i) for i in batch["image_id"]]
        latents = self.pipe.sample_latents([str(p) for p in batch["prompt"]], 1,
                                           generators=[image_generator(self.seed + i, 0) for i in ids],
                                           **self.sample)
        pngs = []
        for image in self.pipe.decode(latents):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return {"prompt_index": batch["prompt_index"], "sample": batch["sample"], "png": np.array(pngs, dtype=object)}


def generate(model: str, prompts: list[str], n: int, seed: int = 0, sample: dict | None = None,
             batch_size: int = 8, concurrency: int = 1, num_cpus: float = 1,
             num_gpus: float | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(prompt index, sample index, PNG bytes) for `n` images of every prompt, as they finish.

    `sample`: VGTPipeline.sample_latents keywords (guidance_scale, num_steps, parallel_tokens, ...);
    those left out come from the folder's config.sample. Image k of prompt i has image id i * n + k
    and uses seed + id (as `fetch_images` asks an endpoint): its pixels depend only on (model, seed + id).
    """
    ray = _ray()
    rows = [{"prompt_index": i, "sample": k, "image_id": i * n + k, "prompt": p}
            for i, p in enumerate(prompts) for k in range(n)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 64)))
    ds = ds.map_batches(GenerateActor, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
                        num_gpus=_gpus(num_gpus),
                        fn_constructor_kwargs=dict(model=model, seed=seed, sample=sample or {},
                                                   torch_threads=max(1, int(num_cpus))))
    with Progress("eval generate", total=len(rows), unit="image") as progress:
        for b in ds.iter_batches(batch_format="numpy", batch_size=None):
            progress.update(len(b["png"]))
            for i, k, png in zip(b["prompt_index"], b["sample"], b["png"]):
                yield int(i), int(k), bytes(png)


def grouped(results: Iterator[tuple[int, int, bytes]], n: int) -> Iterator[tuple[int, list]]:
    """(prompt index, its n PIL images in sample order) as soon as a prompt is complete."""
    from PIL import Image

    pending: dict[int, dict[int, bytes]] = {}
    for i, k, png in results:
        pending.setdefault(i, {})[k] = png
        if len(pending[i]) == n:
            done = pending.pop(i)
            yield i, [Image.open(io.BytesIO(done[j])).convert("RGB") for j in range(n)]
