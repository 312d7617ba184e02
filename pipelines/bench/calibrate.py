"""Calibration: what the `demo` model learns per CPU-minute on synthetic shapes (plain PyTorch, no Ray).

    python -m pipelines.bench.calibrate ae [--preset demo] [--minutes 6] [--marks 1,2,4,6] [--train-images 3000]
                                          [--seed 0] --out AE_DIR [KEY=VALUE ...]
    python -m pipelines.bench.calibrate ar --ae AE_DIR [the same flags] --out PIPELINE_DIR [KEY=VALUE ...]

Time is the process CPU time spent in training steps (`time.process_time()`) with one torch thread.
On a shared machine wall time is meaningless (it depends on everything else running), while the
CPU time of one thread barely does; 2 free cores give about two such minutes per wall minute.
Rendering, encoding the training set and the evaluations are not counted. The stage trains until
its CPU time reaches each of `--marks` (clipped to `--minutes`, which is always the last mark) and
evaluates there.

Data: `--train-images` renders of the training split (`draw_spec(rng, "train", 0.4)`, rendered at
the preset resolution, `rng = np.random.default_rng(--seed)`), kept in memory and drawn uniformly
with replacement, no augmentation. Both stages use AdamW with one parameter group, the stage
config's batch_size, lr, betas, weight_decay and grad_clip, and a constant learning rate: no
warm-up and no decay (`warmup_steps`, `end_lr` and `encoder_lr_mult` are not used).

`ae`: a `VGTAutoencoder` from the preset's `ae` config with `train.ae_stage1`'s latent switches
(`encoder_norm`, `noise_gamma`: as the preset sets them, the demo's adds no noise), trained on the
MSE of [0,1] pixels only, whatever the stage's other loss weights. At each mark it reconstructs 96
held-out ground-truth renders (`eval_prompts()` x 2, rendered with `np.random.default_rng(7)`) and
reports their mean PSNR (data range 1, as `vgt eval recon`) and the shapes scores of the
reconstructions: the ceiling an AR model on this AE can reach. `--out`: the AE (`save_pretrained`).

`ar`: encodes the training renders once with the `--ae` folder's AE (what `vgt prep-latents`
stores: float16), then trains a `VGTModel` from the preset's `ar` config with `train.ar_pretrain`'s
settings and its EMA (`vgt.train.ema`: a copy up to `ema_start`, then decay `ema_decay`). At each mark the
EMA weights sample the 48 held-out prompts x 1 image through `VGTPipeline` (the preset's `sample`
guidance scale, CFG schedule, flow steps, parallel tokens and order; image i draws from
`image_generator(--seed, i)`), which are decoded and scored. `--out`: the pipeline folder with the
EMA weights, and `OUT-samples.png` next to it, the last mark's samples in prompt order.

Output: one JSON line per mark on stdout ({"stage", "cpu_min", "step", "images_seen", ["psnr",]
colour, count, shape, position, two_object, single_all, overall}), then the same marks as markdown
table rows (README tables); progress every 50 steps on stderr. Exit code 2 with one line on stderr
for a bad preset, override or AE folder.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from vgt.artifacts import ArtifactError
from vgt.config import ConfigError

TASKS = ("colour", "count", "shape", "position", "two_object", "single_all", "overall")
HEADERS = {"cpu_min": "CPU-min", "step": "steps", "images_seen": "images", "psnr": "PSNR",
           "two_object": "two-object", "single_all": "single all"}
TWO_OBJECT_FRACTION = 0.4
HELDOUT_SEED = 7
HELDOUT_COPIES = 2  # held-out renders per benchmark prompt (AE stage)
CHUNK = 48  # images per no-grad forward (encoding, reconstructions)
PROGRESS_EVERY = 50
GRID_COLUMNS = 12


# -- command line ------------------------------------------------------------------------------------
def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def mark_list(text: str) -> list[float]:
    try:
        marks = [float(m) for m in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated CPU-minutes, got {text!r}") from None
    if min(marks) <= 0:
        raise argparse.ArgumentTypeError(f"marks must be positive, got {text!r}")
    return marks


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--preset", default="demo", help="preset (default demo)")
    common.add_argument("--minutes", type=positive(float), default=6.0, help="CPU-minutes to train (default 6)")
    common.add_argument("--marks", type=mark_list, default=[1.0, 2.0, 4.0, 6.0],
                        help="CPU-minutes at which to evaluate, clipped to --minutes (default 1,2,4,6)")
    common.add_argument("--train-images", type=positive(int), default=3000, help="training renders (default 3000)")
    common.add_argument("--seed", type=int, default=0, help="data, initialisation and sampling seed (default 0)")
    common.add_argument("--out", required=True, help="folder for the trained AE (ae) or pipeline (ar)")
    common.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True)
    stages.add_parser("ae", parents=[common], help="train the autoencoder, score its reconstructions")
    ar = stages.add_parser("ar", parents=[common], help="train the generator on an AE, score its samples")
    ar.add_argument("--ae", required=True, help="an AE folder written by the ae subcommand")
    return parser


def clip_marks(marks: list[float], minutes: float) -> list[float]:
    """The marks below `minutes`, sorted, then `minutes` itself."""
    return sorted({m for m in marks if m < minutes}) + [minutes]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    run = run_ae if args.stage == "ae" else run_ar
    try:
        records = run(args, clip_marks(args.marks, args.minutes))
    except (ConfigError, ArtifactError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(records), flush=True)
    return 0


# -- data and scoring --------------------------------------------------------------------------------
def training_set(n: int, seed: int, size: int) -> tuple[list, list[Image.Image]]:
    """(prompt specs, renders) of `n` draws from the training split."""
    from vgt.eval.shapes import render
    from vgt.eval.shapes.dataset import draw_spec

    rng = np.random.default_rng(seed)
    specs = [draw_spec(rng, "train", TWO_OBJECT_FRACTION) for _ in range(n)]
    return specs, [render(s, rng, size) for s in specs]


def heldout_set(size: int) -> tuple[list, torch.Tensor]:
    """(prompt specs, [-1,1] pixels) of the benchmark prompts, `HELDOUT_COPIES` renders each."""
    from vgt.data import to_pixels
    from vgt.eval.shapes import eval_prompts, render

    rng = np.random.default_rng(HELDOUT_SEED)
    specs = [s for s in eval_prompts() for _ in range(HELDOUT_COPIES)]
    return specs, to_pixels([render(s, rng, size) for s in specs])


def batch_pixels(images: list[Image.Image], batch_size: int, generator: torch.Generator) -> torch.Tensor:
    from vgt.data import to_pixels

    return to_pixels([images[i] for i in torch.randint(len(images), (batch_size,), generator=generator)])


def shape_scores(specs: list, images: list) -> dict:
    from vgt.eval.shapes import score_images, summarize

    summary = summarize(score_images(specs, images))
    return {t: None if summary[t] is None else round(summary[t], 3) for t in TASKS}


# -- training ----------------------------------------------------------------------------------------
def adamw(params: list[torch.nn.Parameter], stage) -> torch.optim.AdamW:
    """One parameter group at the stage's constant learning rate."""
    return torch.optim.AdamW(params, lr=stage.lr, betas=tuple(stage.betas), weight_decay=stage.weight_decay)


def optimise(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def train(stage: str, step_fn: Callable[[], float], batch_size: int, marks: list[float],
          evaluate: Callable[[], dict]) -> list[dict]:
    """Call `step_fn` (one update, returns its loss) until the CPU time spent in it reaches each mark
    (minutes); evaluate there and print the record as a JSON line."""
    records, step, spent = [], 0, 0.0
    for mark in marks:
        while spent < mark * 60:
            start = time.process_time()
            loss = step_fn()
            spent += time.process_time() - start
            step += 1
            if step % PROGRESS_EVERY == 0:
                print(f"[{stage}] step {step} cpu_min {spent / 60:.2f} loss {loss:.5f}", file=sys.stderr, flush=True)
        record = {"stage": stage, "cpu_min": mark, "step": step, "images_seen": step * batch_size, **evaluate()}
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


# -- ae ----------------------------------------------------------------------------------------------
def run_ae(args: argparse.Namespace, marks: list[float]) -> list[dict]:
    from vgt.ae import VGTAutoencoder, apply_stage
    from vgt.ae.losses import reconstruction_mse
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    stage = cfg.train.ae_stage1
    torch.manual_seed(args.seed)
    ae = VGTAutoencoder(cfg.ae)
    apply_stage(ae, stage)
    _, images = training_set(args.train_images, args.seed, cfg.data.resolution)
    specs, heldout = heldout_set(cfg.data.resolution)
    params = [p for p in ae.parameters() if p.requires_grad]
    opt, generator = adamw(params, stage), torch.Generator().manual_seed(args.seed)
    ae.train()

    def step() -> float:
        pixels = batch_pixels(images, stage.batch_size, generator)
        loss = reconstruction_mse(pixels, ae(pixels, generator))
        optimise(opt, params, loss, stage.grad_clip)
        return loss.item()

    records = train("ae", step, stage.batch_size, marks, lambda: reconstruction_scores(ae, specs, heldout))
    ae.eval().save_pretrained(args.out)
    return records


def reconstruction_scores(ae, specs: list, pixels: torch.Tensor) -> dict:
    """Mean PSNR (data range 1) and shapes scores of the AE's reconstructions of `pixels`."""
    from vgt.data.images import to_uint8
    from vgt.eval.image_metrics import psnr
    from vgt.eval.recon import metric_images

    ae.eval()
    with torch.no_grad():
        recon = torch.cat([ae(pixels[i:i + CHUNK]) for i in range(0, len(pixels), CHUNK)])
    ae.train()
    real01, recon01 = metric_images(pixels, recon, "standard")
    return {"psnr": round(psnr(real01, recon01).mean().item(), 2), **shape_scores(specs, list(to_uint8(recon)))}


# -- ar ----------------------------------------------------------------------------------------------
def run_ar(args: argparse.Namespace, marks: list[float]) -> list[dict]:
    from vgt.ae import VGTAutoencoder
    from vgt.ar.model import VGTModel
    from vgt.backbones import load_tokenizer
    from vgt.train.ema import EMA
    from vgt.eval.shapes import caption, eval_prompts
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    stage = cfg.train.ar_pretrain
    ae = VGTAutoencoder.from_pretrained(args.ae)
    cfg.ae = ae.config  # the saved pipeline's config describes the AE it ships
    specs, images = training_set(args.train_images, args.seed, cfg.data.resolution)
    captions, latents = [caption(s) for s in specs], encode(ae, images)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(cfg.ar.backbone)
    model = VGTModel(cfg.ar, latent_dim=ae.config.latent_channels, tokenizer=tokenizer)
    pipe = VGTPipeline(cfg, model, ae, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, generator = adamw(params, stage), torch.Generator().manual_seed(args.seed)
    ema, updates = EMA(model, stage.ema_decay, stage.ema_start), itertools.count(1)
    prompts, samples = eval_prompts(), []
    model.train()

    def step() -> float:
        idx = torch.randint(len(captions), (stage.batch_size,), generator=generator)
        loss = model([captions[i] for i in idx], latents=latents[idx], generator=generator)["loss"]
        optimise(opt, params, loss, stage.grad_clip)
        ema.update(next(updates))
        return loss.item()

    def evaluate() -> dict:
        with ema.applied():
            samples[:] = generate(pipe, prompts, args.seed)
        return shape_scores(prompts, samples)

    records = train("ar", step, stage.batch_size, marks, evaluate)
    with ema.applied():
        pipe.save_pretrained(args.out)
    out = Path(args.out)
    contact_sheet(samples, GRID_COLUMNS).save(out.parent / f"{out.name}-samples.png")
    return records


def encode(ae, images: list[Image.Image]) -> torch.Tensor:
    """Latents of `images` as prep-latents stores them (float16), back in float32."""
    from vgt.data import to_pixels
    from vgt.data.encode import encode_pixels

    chunks = [encode_pixels(ae, to_pixels(images[i:i + CHUNK])) for i in range(0, len(images), CHUNK)]
    return torch.from_numpy(np.concatenate(chunks)).float()


def generate(pipe, specs: list, seed: int) -> list[Image.Image]:
    """One image per prompt spec with the preset's sampling settings, in eval mode."""
    from vgt.ar.sampling import image_generator
    from vgt.eval.shapes import caption

    s = pipe.config.sample
    pipe.model.eval()
    latents = pipe.sample_latents([caption(x) for x in specs], guidance_scale=s.guidance_scale,
                                  num_steps=s.num_steps, parallel_tokens=s.parallel_tokens, order=s.order,
                                  generators=[image_generator(seed, i) for i in range(len(specs))],
                                  cfg_schedule=s.cfg_schedule)
    pipe.model.train()
    return pipe.decode(latents)


def contact_sheet(images: list[Image.Image], columns: int) -> Image.Image:
    """Same-size images in rows of `columns`, left to right, top to bottom."""
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * w, math.ceil(len(images) / columns) * h), "white")
    for k, image in enumerate(images):
        sheet.paste(image, ((k % columns) * w, (k // columns) * h))
    return sheet


# -- report ------------------------------------------------------------------------------------------
def markdown_table(records: list[dict]) -> str:
    """The records as a markdown table (header, separator, one row per mark)."""
    columns = [c for c in ("cpu_min", "step", "images_seen", "psnr", *TASKS) if c in records[0]]
    lines = [[HEADERS.get(c, c) for c in columns], ["---"] * len(columns),
             *([cell(c, r[c]) for c in columns] for r in records)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "psnr":
        return f"{value:.1f}"
    if column in TASKS:
        return f"{value:.2f}"
    return f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
