"""Calibration: what a preset learns per CPU-minute on synthetic shapes, on the training engine itself.

    python -m pipelines.bench.calibrate ae [--preset demo] [--minutes 6] [--marks 1,2,4,6] [--train-images 3000]
                                          [--steps N] [--seed 0] --out RUN [--set KEY=VALUE ...]
    python -m pipelines.bench.calibrate ar --ae AE_DIR [the same flags] --out RUN [--set KEY=VALUE ...]

The stage runs exactly what `vgt train-ae --stage stage1` / `vgt train-ar --stage pretrain` run on
each worker (`vgt.train.loop.run_loop` with the registered "ae" / "ar" stage: the same data feed,
augmentation, losses, optimiser groups, warm-up + cosine schedule over `--steps` (default: the
preset's stage steps), EMA and export), in this process with one torch thread and no Ray. So the
figures describe `vgt train-*` minus Ray Train's own per-step costs (measured by `vgt bench train`).

Time is the process CPU time (`time.process_time()`) spent training, evaluations excluded: on a
shared machine wall time depends on everything else running, the CPU time of one thread barely
does; 2 free cores give about two such minutes per wall minute. The run evaluates when its CPU
time reaches each of `--marks` (clipped to `--minutes`, which is always the last mark) and ends
there, or earlier at `--steps` (then the last record is taken at the end).

Data: `--train-images` renders of the training split (`write_shard(..., split="train")`, seed
`--seed`, at the preset resolution), prepared in this process (`run_prep(in_process=True)`; the AR
stage adds `--ae`'s latents with `run_prep_latents(in_process=True)`), under OUT/data.

`ae`: at each mark the AE reconstructs 96 held-out ground-truth renders (`eval_prompts()` x 2,
rendered with `np.random.default_rng(7)`) and reports their mean PSNR (data range 1, as
`vgt eval recon`) and the shapes scores of the reconstructions: the ceiling an AR model on this AE
can reach. `ar`: at each mark the EMA weights (the live ones before `ema_start`) sample the 48
held-out prompts x 1 image with the preset's `sample` settings (image i draws from
`image_generator(--seed, i)`), which are decoded and scored; OUT/samples.png holds the last mark's
samples in prompt order. The AR stage also scores as many in-distribution prompts (training-split
combinations of the same kinds, a fixed draw; seed `--seed` + 1), reported as `in_dist_*`: the gap
between the two says whether the generator under-fits (both low) or fails to generalise. It also
probes how much the EMA model relies on each word (`vgt.eval.shapes.reliance` on the first 128
training rows: the flow loss with one colour / count / shape / position word swapped, or the empty
prompt, over the loss with the right caption), reported as `reliance_*`. OUT is a run folder (metrics.jsonl, export/: the AE or pipeline folder).

Output: one JSON line per mark on stdout ({"stage", "cpu_min", "step", "images_seen", ["psnr",]
colour, count, shape, position, two_object, single_all, overall}), then the same marks as markdown
table rows (README tables); progress every 50 steps on stderr. Exit code 2 with one line on stderr
for a bad preset or override, 1 for a missing or unusable AE folder.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from vgt.errors import VGTError

TASKS = ("colour", "count", "shape", "position", "two_object", "single_all", "overall")
IN_DIST_TASKS = ("colour", "count", "shape", "overall")  # reported for the AR stage beside the held-out scores
RELIANCE_COLUMNS = ("colour", "count", "shape", "position", "empty")  # vgt.eval.shapes.reliance, AR stage
RELIANCE_ROWS = 128  # training rows the word-reliance probe reads (its single-kind ones are used)
HEADERS = {"cpu_min": "CPU-min", "step": "steps", "images_seen": "images", "psnr": "PSNR",
           "two_object": "two-object", "single_all": "single all", **{f"in_dist_{t}": f"in-dist {t}" for t in IN_DIST_TASKS},
           **{f"reliance_{a}": f"{a} reliance" for a in RELIANCE_COLUMNS}}
TWO_OBJECT_FRACTION = 0.4
HELDOUT_SEED = 7
IN_DIST_SEED = 11
HELDOUT_COPIES = 2  # held-out renders per benchmark prompt (AE stage)
CHUNK = 48  # images per no-grad forward (reconstructions)
SHARD_SIZE = 500
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
    common.add_argument("--steps", type=positive(int), default=None,
                        help="length of the LR schedule and most steps (default: the preset's stage steps)")
    common.add_argument("--out", required=True,
                        help="run folder: data/, metrics.jsonl, export/ (the AE or pipeline folder)")
    common.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides")
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
    except VGTError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    print(markdown_table(records), flush=True)
    return 0


# -- data and scoring --------------------------------------------------------------------------------
def training_data(root: str, n: int, seed: int, cfg) -> str:
    """`n` training-split renders written as shards and prepared in this process; the dataset URI."""
    from pipelines.prep.dataset import run_prep
    from vgt.eval.shapes.dataset import shard_sizes, write_shard

    shards, prepared = os.path.join(root, "shards"), os.path.join(root, "prepared")
    if not os.path.exists(os.path.join(prepared, "manifest.json")):
        for i, size in enumerate(shard_sizes(n, SHARD_SIZE)):
            write_shard(shards, i, size, seed, "train", cfg.data.resolution, TWO_OBJECT_FRACTION)
        run_prep([os.path.join(shards, "*.tar")], prepared, cfg, in_process=True)
    return prepared


def heldout_set(size: int) -> tuple[list, torch.Tensor]:
    """(prompt specs, [-1,1] pixels) of the benchmark prompts, `HELDOUT_COPIES` renders each."""
    from vgt.data import to_pixels
    from vgt.eval.shapes import eval_prompts, render

    rng = np.random.default_rng(HELDOUT_SEED)
    specs = [s for s in eval_prompts() for _ in range(HELDOUT_COPIES)]
    return specs, to_pixels([render(s, rng, size) for s in specs])


def in_distribution_prompts() -> list:
    """As many training-split combinations as the held-out benchmark has, of the same kinds (fixed
    draw): what the generator should do best, since it trained on exactly these."""
    from vgt.eval.shapes import eval_prompts
    from vgt.eval.shapes.vocab import train_specs

    rng = np.random.default_rng(IN_DIST_SEED)
    picked = []
    for kind in ("single", "two"):
        pool = [s for s in train_specs() if s.kind == kind]
        count = sum(s.kind == kind for s in eval_prompts())
        picked += [pool[i] for i in rng.choice(len(pool), count, replace=False)]
    return picked


def shape_scores(specs: list, images: list) -> dict:
    from vgt.eval.shapes import score_images, summarize

    summary = summarize(score_images(specs, images))
    return {t: None if summary[t] is None else round(summary[t], 3) for t in TASKS}


# -- training ----------------------------------------------------------------------------------------
class MarkedRun:
    """`run_loop`'s after_step hook: evaluates at each CPU-minute mark (evaluation time excluded)
    and asks the loop to end at the last one."""

    def __init__(self, name: str, marks: list[float], batch_size: int, evaluate: Callable[[object], dict]):
        self.name, self.marks, self.batch_size, self.evaluate = name, list(marks), batch_size, evaluate
        self.records: list[dict] = []
        self.started, self.excluded = time.process_time(), 0.0
        self.last_step, self.stage = 0, None  # the latest step and the engine's stage object

    def spent(self) -> float:
        return time.process_time() - self.started - self.excluded

    def __call__(self, step: int, stage) -> bool:
        self.last_step, self.stage = step, stage
        if step % PROGRESS_EVERY == 0:
            print(f"[{self.name}] step {step} cpu_min {self.spent() / 60:.2f}", file=sys.stderr, flush=True)
        if self.spent() >= self.marks[len(self.records)] * 60:
            self.record(self.marks[len(self.records)], step, stage)
        return len(self.records) == len(self.marks)

    def record(self, mark: float, step: int, stage) -> None:
        began = time.process_time()
        record = {"stage": self.name, "cpu_min": mark, "step": step, "images_seen": step * self.batch_size,
                  **self.evaluate(stage)}
        self.excluded += time.process_time() - began
        print(json.dumps(record), flush=True)
        self.records.append(record)


def train_marked(stage: str, stage_key: str, cfg, data: str | list[str], out: str, marks: list[float],
                 steps: int | None, evaluate: Callable[[object], dict], ae: str | None = None,
                 init: str | None = None, weights: list[float] | None = None) -> list[dict]:
    """Run the engine's `stage` in this process until the last mark (or `steps`); one record per mark.
    `data` is one prepared dataset or several mixed by `weights` (default equal); `init` a pipeline folder
    to start from (as `--init`)."""
    from vgt.config import to_dict
    from vgt.train.distributed import WorkerEnv
    from vgt.train.loop import LoopSpec, run_loop

    stage_cfg = getattr(cfg.train, stage_key)
    spec = LoopSpec(stage=stage, stage_key=stage_key, config=to_dict(cfg), out=out, steps=steps or stage_cfg.steps,
                    data=[data] if isinstance(data, str) else data, weights=weights or [], init=init, ae=ae)
    hook = MarkedRun(stage, marks, stage_cfg.batch_size * getattr(stage_cfg, "grad_accum", 1), evaluate)
    run_loop(spec, WorkerEnv(), after_step=hook)
    if len(hook.records) < len(marks):  # --steps ran out first: one record at the end
        hook.record(round(hook.spent() / 60, 3), hook.last_step, hook.stage)
    return hook.records


def run_ae(args: argparse.Namespace, marks: list[float]) -> list[dict]:
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    data = training_data(os.path.join(args.out, "data"), args.train_images, args.seed, cfg)
    specs, heldout = heldout_set(cfg.data.resolution)
    return train_marked("ae", "ae_stage1", cfg, data, args.out, marks, args.steps,
                        lambda stage: reconstruction_scores(stage.ae, specs, heldout))


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


def run_ar(args: argparse.Namespace, marks: list[float]) -> list[dict]:
    from pipelines.prep.add_latents import run_prep_latents
    from vgt.eval.shapes import eval_prompts
    from vgt.eval.shapes.reliance import word_reliance
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    prepared = training_data(os.path.join(args.out, "data"), args.train_images, args.seed, cfg)
    latents = os.path.join(args.out, "data", "latents")
    run_prep_latents(prepared, args.ae, latents, in_process=True)
    prompts, in_dist, samples = eval_prompts(), in_distribution_prompts(), []
    probe_latents, probe_captions = training_rows(latents, args.ae, RELIANCE_ROWS)

    def evaluate(stage) -> dict:
        pipe = VGTPipeline(stage.cfg, stage.model, stage.ae, stage.model.tokenizer)
        with stage.trainables.emas["model"].applied():
            samples[:] = generate(pipe, prompts, args.seed)
            seen = generate(pipe, in_dist, args.seed + 1)
            reliance = word_reliance(stage.model, probe_latents, probe_captions, seed=args.seed)
        in_dist_scores = shape_scores(in_dist, seen)
        return {**shape_scores(prompts, samples), **{f"in_dist_{t}": in_dist_scores[t] for t in IN_DIST_TASKS},
                **{f"reliance_{a}": reliance[a] for a in RELIANCE_COLUMNS}}

    records = train_marked("ar", "ar_pretrain", cfg, latents, args.out, marks, args.steps, evaluate, ae=args.ae)
    contact_sheet(samples, GRID_COLUMNS).save(os.path.join(args.out, "samples.png"))
    return records


def training_rows(latents: str, ae: str, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first `n` rows of the prepared training set: latents [n, C, h, w] (float32) and captions."""
    from vgt.artifacts import read_component_config
    from vgt.data.reader import PreparedDataset, read_latents

    dataset = PreparedDataset(latents)
    fingerprint = read_component_config(ae, "ae")["fingerprint"]
    table = dataset.read_part(dataset.parts[0], ["caption", "latent", "latent_shape"], fingerprint).slice(0, n)
    return torch.from_numpy(read_latents(table).astype(np.float32)), table.column("caption").to_pylist()


def generate(pipe, specs: list, seed: int) -> list[Image.Image]:
    """One image per prompt spec with the pipeline's own sampling settings, in eval mode."""
    from vgt.ar.sampling import image_generator
    from vgt.eval.shapes import caption

    pipe.model.eval()
    latents = pipe.sample_latents([caption(x) for x in specs],
                                  generators=[image_generator(seed, i) for i in range(len(specs))])
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
    in_dist = tuple(f"in_dist_{t}" for t in IN_DIST_TASKS)
    reliance = tuple(f"reliance_{a}" for a in RELIANCE_COLUMNS)
    columns = [c for c in ("cpu_min", "step", "images_seen", "psnr", *TASKS, *in_dist, *reliance) if c in records[0]]
    lines = [[HEADERS.get(c, c) for c in columns], ["---"] * len(columns),
             *([cell(c, r[c]) for c in columns] for r in records)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "psnr":
        return f"{value:.1f}"
    if column in TASKS or column.startswith(("in_dist_", "reliance_")):
        return f"{value:.2f}"
    return f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
