"""AR training step: TorchTrainer (1 worker) vs the same loop in a plain process, and precomputed
latents vs on-the-fly AE encoding; tiny preset on CPU, side by side in one run.

Both runners execute `vgt.train.loop.run_loop` on the same prepared data with one torch
thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1). Per-step time is the smallest wall-clock gap
between consecutive steps of each run's metrics.jsonl (the first step left out): every step does
the same work, so the minimum is the least disturbed by neighbours on a shared machine. Ray's
start-up is excluded; its per-step costs (the process group, metric reports every 10 steps when a
report falls in the gap) are included. The real internvl3-1b AR step on a GPU (tokens/s, MFU, one
process and FSDP2) is measured by `vgt gpu-check` (vgt.gpucheck).
"""
from __future__ import annotations

import io
import json
import os
import tempfile

NAME = "train"
BATCH = 16


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


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=1))
