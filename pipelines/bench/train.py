"""AR training step: TorchTrainer (1 worker) vs the same loop in a plain process, and precomputed
latents vs on-the-fly AE encoding; tiny preset on CPU, side by side in one run.

Both runners execute `vgt.train.loop.run_loop` on the same prepared data with one torch
thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1). Per-step time is the smallest wall-clock gap
between consecutive steps of each run's metrics.jsonl (the first step left out): every step does
the same work, so the minimum is the least disturbed by neighbours on a shared machine. Ray's
start-up is excluded; its per-step costs (the process group, metric reports every 10 steps when a
report falls in the gap) are included. With a GPU, `python -m pipelines.bench.train
--gpu` measures the real internvl3-1b AR step (random weights, bf16, FSDP2 on one GPU): tokens/s
and MFU.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time

NAME = "train"
BATCH = 16
H200_BF16_FLOPS = 989e12  # dense bf16 peak of the GPU this was prepared for (H100/H200 SXM)


def run(quick: bool) -> list[dict]:
    import ray

    steps = 8 if quick else 30
    started = not ray.is_initialized()
    if started:
        # Nice 0 like this process: otherwise neighbours on a shared machine would skew the ratio.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    try:
        with tempfile.TemporaryDirectory(prefix="vgt-bench-train-") as root:
            plain, latents, ae = _datasets(root)
            rows = []
            for source, data in (("latents", latents), ("on-the-fly", plain)):
                for runner in ("plain process", "TorchTrainer 1 worker"):
                    ms = _step_ms(runner, data, ae, os.path.join(root, f"{source}-{runner[:5]}"), steps)
                    rows.append({"case": f"AR step, {runner}, {source}", "ms_per_step": ms})
            _ratios(rows)
            return rows
    finally:
        if started:
            ray.shutdown()


def _ratios(rows: list[dict]) -> None:
    ms = {r["case"]: r["ms_per_step"] for r in rows}
    for r in rows:
        runner, source = r["case"].split(", ")[1:]
        r["vs_plain_process"] = r["ms_per_step"] / ms[f"AR step, plain process, {source}"]
        r["vs_latents"] = r["ms_per_step"] / ms[f"AR step, {runner}, latents"]


def _datasets(root: str) -> tuple[str, str, str]:
    """(prepared dataset, the same with latents, AE folder): 32 random-gradient images, tiny AE."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from pipelines.prep.add_latents import run_prep_latents
    from pipelines.prep.dataset import run_prep
    from vgt.ae import VGTAutoencoder
    from vgt.presets import get_preset

    cfg = get_preset("tiny")
    rng = np.random.default_rng(0)
    images = []
    for _ in range(32):
        arr = (np.linspace(rng.integers(0, 256, 3), rng.integers(0, 256, 3), 140 * 112)
               .reshape(112, 140, 3).astype(np.uint8))
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"image": images, "caption": [f"gradient {i}" for i in range(32)]}),
                   os.path.join(root, "raw.parquet"))
    run_prep([os.path.join(root, "raw.parquet")], os.path.join(root, "prepared"), cfg)
    torch.manual_seed(0)
    VGTAutoencoder(cfg.ae).save_pretrained(os.path.join(root, "ae"))
    run_prep_latents(os.path.join(root, "prepared"), os.path.join(root, "ae"), output=os.path.join(root, "latents"))
    return os.path.join(root, "prepared"), os.path.join(root, "latents"), os.path.join(root, "ae")


def _step_ms(runner: str, data: str, ae: str, out: str, steps: int) -> float:
    import torch

    from pipelines.train.config import ray_train_config
    from pipelines.train.launch import fit
    from vgt.config import to_dict
    from vgt.presets import get_preset
    from vgt.train.distributed import WorkerEnv
    from vgt.train.loop import LoopSpec, run_loop

    cfg = get_preset("tiny", {"train.ar_pretrain.batch_size": BATCH, "train.sample_every": 0, "train.log_every": 10,
                              "train.checkpoint_every": 10**6, "train.strategy": "ddp"})
    spec = LoopSpec(stage="ar", stage_key="ar_pretrain", config=to_dict(cfg), data=[data],
                    out=out, steps=steps, ae=ae)
    if runner == "plain process":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_loop(spec, WorkerEnv())
        finally:
            torch.set_num_threads(threads)
    else:
        fit(spec, ray_train_config({"num_workers": 1, "use_gpu": False}))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        times = [r["time"] for r in map(json.loads, f) if "loss" in r]
    return 1000 * min(b - a for a, b in zip(times[1:], times[2:]))


def gpu_rows(preset: str = "internvl3-1b", batch: int = 16, steps: int = 8, grid: int = 16) -> list[dict]:
    """The AR step of `preset` (random weights, real architecture) on one GPU: bf16 FSDP2, AdamW,
    precomputed-latent path (random unit-variance latents, grid x grid), prompts of ~20 tokens.
    MFU counts 6 x trainable parameters per token (attention score FLOPs left out)."""
    import torch
    import torch.distributed as dist

    from vgt.ar.model import VGTModel
    from vgt.presets import get_preset
    from vgt.train.data import seeded
    from vgt.train.distributed import WorkerEnv, accumulate, clip_and_step, distribute
    from vgt.train.optim import adamw, param_groups, scheduler

    cuda = torch.cuda.is_available()  # without CUDA (a smoke run, e.g. --preset tiny): CPU, gloo, fp32
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not dist.is_initialized():  # FSDP2 needs a process group, even of one
        dist.init_process_group("nccl" if cuda else "gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    cfg = get_preset(preset, {"ar.backbone.pretrained": None})
    if cfg.ar.backbone.tokenizer not in ("tiny-bpe", "qwen"):  # a hub id: use the offline Qwen2.5 vocabulary
        cfg.ar.backbone.tokenizer = "qwen"
    env = WorkerEnv(0, 1, device, "fsdp2")
    torch.manual_seed(0)
    model = VGTModel(cfg.ar, latent_dim=cfg.ae.latent_channels)
    wrapped = distribute(model, env, list(model.llm.model.layers))
    opt = adamw(param_groups(model.named_parameters(), 3e-4, 0.05), 3e-4, (0.9, 0.95))
    sched = scheduler(opt, 10, 1000, 0.3)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    captions = ["a photograph of a red bicycle leaning against a blue wall in the sun"] * batch
    latents = torch.randn(batch, cfg.ae.latent_channels, grid, grid, device=device)
    prompt = len(model.tokenizer(model.prompt_texts(captions[:1]))["input_ids"][0])
    tokens = batch * (prompt + 1 + 2 * grid * grid)
    times = []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for step in range(steps):
        sync()
        start = time.perf_counter()
        gen = seeded(0, step)
        accumulate(wrapped, env, [None], lambda _, __: (wrapped(captions, latents=latents, generator=gen)["loss"], {}))
        clip_and_step(list(wrapped.parameters()), opt, sched, 1.0)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[2:])
    row = {"case": f"AR step {preset} FSDP2 1 {'GPU bf16' if cuda else 'CPU fp32'}, batch {batch}",
           "ms_per_step": 1000 * seconds, "tokens_per_s": tokens / seconds, "params": params}
    if cuda:
        row.update(mfu=6 * params * tokens / seconds / H200_BF16_FLOPS,
                   peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
    return [row]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="the real-preset FSDP2 step (GPU; CPU smoke run without)")
    parser.add_argument("--preset", default="internvl3-1b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=16, help="latent grid side (16 = 448 px)")
    args = parser.parse_args()
    rows = gpu_rows(args.preset, args.batch, grid=args.grid) if args.gpu else run(quick=True)
    print(json.dumps(rows, indent=1))
