"""Learning curves of the AR stage on the real engine: held-out and in-distribution shapes scores
against CPU-minutes and samples seen, for the preset and each candidate change, side by side.

Every variant trains the registered "ae" stage, then the "ar" stage on that AE's prepared latents
(what `vgt train-ae` / `vgt train-ar` run on each worker), in this process with one torch thread,
timed in process CPU time (`pipelines.bench.calibrate`). Variants that share their AE overrides
share one trained AE. A row per variant and mark: samples seen, samples per CPU-minute (the price
of a sample) and the scores. `--quick` runs the `tiny` preset for a few CPU-seconds (a smoke run).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

NAME = "learning"


@dataclass(frozen=True)
class Variant:
    ae: tuple[str, ...] = ()  # overrides for the AE stage
    ar: tuple[str, ...] = ()  # overrides for the AR stage


# One candidate cause each, measured against "preset" (README "Why the demo learns slowly").
VARIANTS: dict[str, Variant] = {
    "preset": Variant(),
    "4 flow draws per token": Variant(ar=("ar.head_batch_mul=4",)),
    "AR LR 2e-3": Variant(ar=("train.ar_pretrain.lr=2e-3",)),
    "no AE latent noise": Variant(ae=("train.ae_stage1.noise_gamma=0.0",)),
    "16 latent channels": Variant(ae=("ae.latent_channels=16", "ae.decoder.dc_config.latent_channels=16")),
    "flow-loss timeshift 1.4 (the reference)": Variant(ar=("ar.head.timeshift=1.4",)),
    "no chat template": Variant(ar=("ar.prompt_template={caption}", "ar.uncond_prompt=")),
    "EfficientNet feature loss": Variant(ae=("train.ae_stage1.effnet_weight=0.1",)),
}


@dataclass(frozen=True)
class Plan:
    preset: str
    ae_minutes: float
    marks: tuple[float, ...]
    train_images: int
    ae_steps: int | None  # the AE's LR schedule (None: the preset's stage steps)
    ar_steps: int | None = None  # the AR's LR schedule (None: the preset's stage steps)


# the schedule lengths of the README's calibration tables (the AE: what the default demo's AE share bought then)
FULL = Plan("demo", ae_minutes=6.0, marks=(2.0, 4.0, 6.0, 8.0), train_images=3000, ae_steps=1300, ar_steps=1500)
# the tiny preset's few steps would end a quick run before its marks
QUICK = Plan("tiny", ae_minutes=0.02, marks=(0.01, 0.02), train_images=64, ae_steps=10**5, ar_steps=10**5)
COLUMNS = ("colour", "count", "shape", "position", "two_object", "in_dist_colour", "in_dist_count",
           "in_dist_shape")


def run(quick: bool, variants: dict[str, Variant] | None = None, root: str | None = None) -> list[dict]:
    import torch

    from pipelines.bench import calibrate

    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="vgt-bench-learning-") as scratch:
            root = root or scratch
            common = ["--preset", plan.preset, "--train-images", str(plan.train_images)]
            aes: dict[tuple[str, ...], str] = {}
            rows = []
            for index, (name, variant) in enumerate((variants or VARIANTS).items()):
                if variant.ae not in aes:
                    aes[variant.ae] = out = os.path.join(root, f"ae-{len(aes)}")
                    calibrate.run_ae(_args(calibrate, "ae", common, plan.ae_steps, variant.ae,
                                           ["--minutes", str(plan.ae_minutes), "--out", out]), [plan.ae_minutes])
                args = _args(calibrate, "ar", common, plan.ar_steps, variant.ar,
                             ["--ae", os.path.join(aes[variant.ae], "export"), "--out", os.path.join(root, f"ar-{index}")])
                for record in calibrate.run_ar(args, list(plan.marks)):
                    rows.append({"variant": name, "cpu_min": record["cpu_min"], "steps": record["step"],
                                 "samples": record["images_seen"],
                                 "samples_per_cpu_min": record["images_seen"] / record["cpu_min"],
                                 **{c: record[c] for c in COLUMNS}})
            return rows
    finally:
        torch.set_num_threads(threads)


def _args(calibrate, stage: str, common: list[str], steps: int | None, overrides: tuple[str, ...], more: list[str]):
    argv = [stage, *common, *more, *(["--steps", str(steps)] if steps else []),
            *(["--set", *overrides] if overrides else [])]
    return calibrate.build_parser().parse_args(argv)
