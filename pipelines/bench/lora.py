"""LoRA against full tuning on the shapes task, on the real engine: teach a trained generator a colour word it never saw.

The demo's LLM starts random, so there is nothing to adapt until something has been trained. So:

1. `base`: the preset's AR stage trained from scratch (full tuning) on the training renders whose captions do not
   name `--word` (one colour: the base learns the other colours, every shape, count and position);
2. from the base's export, the same stage teaches the word by LoRA (one run per `--lora` setting, exported as an
   adapter folder) and by full tuning (the preset's LR), for the same `--tune-steps`, on an equal mix of the renders
   that name the word and the others (which keeps the old vocabulary in the batches);
3. each model's EMA weights sample the held-out benchmark prompts (`vgt.eval.shapes.eval_prompts`: combinations no
   run trained on) that name the word (`new_*`, `--copies` images each) and those that do not (`old_*`, `--old-copies`
   each), scored by the shapes detector (`colour`: single-object prompts whose objects all have the named colour;
   `overall`: the benchmark's mean of its five tasks); and the teacher-forced flow loss on training rows that name
   the word (`new_loss`: CFG dropout off, fixed draws, as `vgt.eval.shapes.reliance` measures it).

Every run is `pipelines.bench.calibrate.train_marked` (`vgt.train.loop.run_loop` with the registered "ar" stage,
what `vgt train-ar` runs on each worker) in a process of its own with one torch thread and no Ray; the tuning runs
go `--jobs` at a time. Per model: trainable parameters, process CPU seconds per training step (stage build and
evaluation excluded only as far as calibrate excludes them), the export folder's size (LoRA: the adapter folder,
which loads onto the base; full and base: a whole pipeline folder, AE included), how many of the LLM's base weight
tensors the run changed (LoRA must change none), the scores; each LoRA row adds its new-part scores over full
tuning's (`*_vs_full`: the issue's bar is >= 0.8) and its old-part overall over the base's (`old_vs_base`).

    python -m pipelines.bench.lora --ae AE_DIR --out RUN [--preset demo] [--word green] [--train-images 3000]
        [--base-steps 1000] [--tune-steps 400] [--lora RANK[:ALPHA[:LR]] ...] [--copies 16] [--old-copies 4]
        [--jobs 2] [--seed 0] [--set KEY=VALUE ...]

A run folder holding a record.json (written when its run ends) is reused as it is: rerun with more `--lora` settings
to add them on the same base (delete a record to train that run again). The rows go to stdout (JSON lines, then a
table) and RUN/results.json. `vgt bench lora` runs FULL on an AE it trains first (`calibrate
ae`, about 3.5 CPU-minutes); `--quick` runs the `tiny` preset on a random AE for a few CPU-seconds: the machinery
(which weights train and change, the new word's loss falling in both tunings), not the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch

from pipelines.bench import calibrate, format_table

NAME = "lora"
STAGE_KEY = "ar_pretrain"
TUNE_WEIGHTS = [0.5, 0.5]  # renders naming the word, the others: half of every batch on average teaches the word
PROBE_ROWS = 64  # training rows naming the word for `new_loss`
FLOW_DRAWS = 2  # seeded forwards averaged per `new_loss`
NEVER = [math.inf]  # no CPU-minute mark: every run ends at its steps, where it is evaluated once
MB = 2**20


@dataclass(frozen=True)
class LoRASetting:
    rank: int
    alpha: float | None = None  # None: lora.alpha's default (2 x rank)
    lr: float | None = None  # None: the preset's stage LR

    @classmethod
    def parse(cls, text: str) -> "LoRASetting":
        """RANK[:ALPHA[:LR]], empty fields for the defaults ("16", "16:32", "16::3e-3")."""
        fields = text.split(":")
        try:
            if not 1 <= len(fields) <= 3 or int(fields[0]) <= 0:
                raise ValueError
            return cls(int(fields[0]), *(float(f) if f else None for f in fields[1:]))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected RANK[:ALPHA[:LR]] with a positive rank, got {text!r}") from None

    @property
    def label(self) -> str:
        return " ".join([f"lora r{self.rank}", *([f"a{self.alpha:g}"] if self.alpha is not None else []),
                         *([f"lr{self.lr:g}"] if self.lr is not None else [])])

    def overrides(self) -> list[str]:
        lora = f"train.{STAGE_KEY}.lora"
        return [f"{lora}.rank={self.rank}", f"{lora}.export=adapter",
                *([f"{lora}.alpha={self.alpha}"] if self.alpha is not None else []),
                *([f"train.{STAGE_KEY}.lr={self.lr}"] if self.lr is not None else [])]


@dataclass(frozen=True)
class Plan:
    preset: str
    word: str  # the colour the base never sees
    train_images: int
    base_steps: int  # the base's run (and LR schedule) length
    tune_steps: int  # every tuning run's length, LoRA and full alike
    lora: tuple[LoRASetting, ...]
    copies: int  # images per held-out prompt naming the word
    old_copies: int  # images per held-out prompt not naming it
    jobs: int  # tuning runs at a time (processes of one thread each)
    seed: int = 0
    overrides: tuple[str, ...] = ()  # for every run


# the README's comparison (LoRA: the rank `vgt info` shows, at the preset's LR and at 3x)
FULL = Plan("demo", "green", train_images=3000, base_steps=1000, tune_steps=500,
            lora=(LoRASetting(16), LoRASetting(16, lr=3e-3)), copies=16, old_copies=4, jobs=2)
# EMA off (ema_start past the end) so the few steps show in the evaluated weights
QUICK = Plan("tiny", "green", train_images=48, base_steps=2, tune_steps=3, lora=(LoRASetting(4, lr=1e-2),),
             copies=1, old_copies=1, jobs=1,
             overrides=(f"train.{STAGE_KEY}.lr=1e-2", f"train.{STAGE_KEY}.ema_start=1000"))


def run(quick: bool) -> list[dict]:
    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="vgt-bench-lora-") as root:
            ae = random_ae(plan, root) if quick else trained_ae(plan, root)
            return compare(plan, ae, root)
    finally:
        torch.set_num_threads(threads)


def random_ae(plan: Plan, root: str) -> str:
    from vgt.ae import VGTAutoencoder
    from vgt.presets import get_preset

    folder = os.path.join(root, "ae")
    torch.manual_seed(plan.seed)
    VGTAutoencoder.from_config(get_preset(plan.preset).ae).save_pretrained(folder)
    return folder


def trained_ae(plan: Plan, root: str) -> str:
    """The preset's AE stage for 1300 steps (the schedule of the README's calibration AEs)."""
    out = os.path.join(root, "ae")
    args = calibrate.build_parser().parse_args(["ae", "--preset", plan.preset, "--train-images", str(plan.train_images),
                                                "--steps", "1300", "--minutes", "30", "--seed", str(plan.seed),
                                                "--out", out])
    calibrate.run_ae(args, [args.minutes])
    return os.path.join(out, "export")


# -- data --------------------------------------------------------------------------------------------
def word_data(plan: Plan, cfg, ae: str, root: str) -> tuple[str, str]:
    """(renders naming the word, the others): the training split with `ae`'s latents, split by caption."""
    from pipelines.prep.add_latents import run_prep_latents

    prepared = calibrate.training_data(root, plan.train_images, plan.seed, cfg)
    latents = os.path.join(root, "latents")
    run_prep_latents(prepared, ae, latents, in_process=True)
    named, rest = os.path.join(root, f"with-{plan.word}"), os.path.join(root, f"without-{plan.word}")
    split_by_word(latents, plan.word, named, rest)
    return named, rest


def split_by_word(dataset: str, word: str, named: str, rest: str) -> None:
    """Copy the prepared dataset `dataset` into two: the rows whose caption has the word `word`, and the others
    (same parts, latents and manifest, row counts updated)."""
    import copy

    import pyarrow.compute as pc

    from vgt.data.layout import open_parquet, part_uri, write_manifest, write_table_atomic
    from vgt.data.reader import PreparedDataset

    source = PreparedDataset(dataset)
    tables = {p.name: open_parquet(p.uri).read() for p in source.parts}
    for out, keep in ((named, True), (rest, False)):
        manifest = copy.deepcopy(source.manifest)
        for name, table in tables.items():
            has = pc.match_substring_regex(table.column("caption"), rf"\b{word}\b")
            kept = table.filter(has if keep else pc.invert(has))
            write_table_atomic(part_uri(out, name), kept)
            manifest["parts"][name]["rows_out"] = kept.num_rows
        write_manifest(out, manifest)


# -- evaluation --------------------------------------------------------------------------------------
def names_word(spec, word: str) -> bool:
    return any(o.colour == word for o in spec.objects)


@torch.no_grad()
def flow_loss(model, latents: torch.Tensor, captions: list[str], seed: int) -> float:
    """Teacher-forced flow loss, CFG dropout off, averaged over `FLOW_DRAWS` seeded forwards."""
    dropout, training = model.config.cfg_dropout, model.training
    model.config.cfg_dropout = 0.0
    model.eval()
    try:
        return sum(model(captions, latents=latents, generator=torch.Generator().manual_seed(seed + d))["flow_loss"].item()
                   for d in range(FLOW_DRAWS)) / FLOW_DRAWS
    finally:
        model.config.cfg_dropout = dropout
        model.train(training)


class Scorer:
    """`train_marked`'s evaluation: the EMA weights' held-out scores on the new and the old part and the new word's
    flow loss, beside what trains and (from a base) which LLM base weights changed."""

    def __init__(self, plan: Plan, ae: str, named: str, base: str | None):
        from vgt.eval.shapes import eval_prompts

        held = eval_prompts()
        self.plan = plan
        self.new = [s for s in held if names_word(s, plan.word) for _ in range(plan.copies)]
        self.old = [s for s in held if not names_word(s, plan.word) for _ in range(plan.old_copies)]
        self.probe = calibrate.training_rows(named, ae, PROBE_ROWS)
        self.base = base_llm(base) if base else None

    def __call__(self, stage) -> dict:
        from vgt.pipeline import VGTPipeline

        pipe, seed = VGTPipeline(stage.cfg, stage.model, stage.ae, stage.model.tokenizer), self.plan.seed
        with stage.trainables.emas["model"].applied():
            new = calibrate.shape_scores(self.new, calibrate.generate(pipe, self.new, seed))
            old = calibrate.shape_scores(self.old, calibrate.generate(pipe, self.old, seed + 1))
            loss = flow_loss(stage.model, *self.probe, seed)
        named = dict(stage.model.named_parameters())
        record = {"trainable": sum(p.numel() for p in named.values() if p.requires_grad),
                  **{f"new_{t}": new[t] for t in ("colour", "two_object", "overall")},
                  **{f"old_{t}": old[t] for t in ("colour", "two_object", "overall")}, "new_loss": round(loss, 4)}
        if self.base is not None:
            live = {k.replace(".base_layer.", "."): p for k, p in named.items()
                    if k.startswith("llm.") and ".lora_" not in k}
            assert sorted(live) == sorted(self.base), "the tuned model's LLM is not the base's"
            record["llm_changed"] = sum(not torch.equal(live[k], self.base[k]) for k in live)
        return record


def base_llm(pipeline: str) -> dict[str, torch.Tensor]:
    """The LLM tensors of a pipeline folder's AR component."""
    from vgt.ar.model import KIND
    from vgt.artifacts import load_component
    from vgt.pipeline import read_index

    _, state, _ = load_component(os.path.join(pipeline, read_index(pipeline)["components"]["ar"]), kind=KIND)
    return {k: v for k, v in state.items() if k.startswith("llm.")}


# -- runs --------------------------------------------------------------------------------------------
def train_one(plan: Plan, label: str, overrides: list[str], ae: str, data: list[str], named: str, out: str,
              steps: int, init: str | None = None) -> dict:
    """One AR run of `steps` on `data` in this process (from the pipeline `init`, else from scratch), evaluated at
    its end (`named`: the renders naming the word); its record with cost figures, also kept as OUT/record.json,
    which a later call returns instead of training again."""
    from vgt.presets import get_preset

    saved = os.path.join(out, "record.json")
    if os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    torch.set_num_threads(1)
    cfg = get_preset(plan.preset, [*plan.overrides, *overrides])
    scorer = Scorer(plan, ae, named, init)
    (record,) = calibrate.train_marked("ar", STAGE_KEY, cfg, data, out, NEVER, steps, scorer, ae=ae, init=init,
                                       weights=TUNE_WEIGHTS if len(data) > 1 else None)
    export = os.path.join(out, "export")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(export) for f in files)
    row = {"model": label, "steps": record["step"], "trainable": record["trainable"],
           "cpu_s_per_step": round(record["cpu_min"] * 60 / record["step"], 3), "folder_mb": round(size / MB, 2),
           **{k: v for k, v in record.items() if k.startswith(("new_", "old_", "llm_"))}}
    with open(saved, "w") as f:
        json.dump(row, f)
    return row


def compare(plan: Plan, ae: str, root: str) -> list[dict]:
    """Base, then LoRA (each setting) and full tuning from it; the rows, LoRA's ratios added."""
    from vgt.presets import get_preset

    named, rest = word_data(plan, get_preset(plan.preset, list(plan.overrides)), ae, os.path.join(root, "data"))
    base_out = os.path.join(root, "base")
    base = train_one(plan, "base", [], ae, [rest], named, base_out, plan.base_steps)
    print(json.dumps(base), flush=True)
    runs = [("full", []), *((s.label, s.overrides()) for s in plan.lora)]
    init = os.path.join(base_out, "export")
    jobs = [(plan, label, sets, ae, [named, rest], named, os.path.join(root, label.replace(" ", "-")), plan.tune_steps,
             init) for label, sets in runs]
    if plan.jobs > 1:
        with ProcessPoolExecutor(plan.jobs, mp_context=get_context("spawn")) as pool:
            tuned = list(pool.map(train_one, *zip(*jobs)))
    else:
        tuned = [train_one(*job) for job in jobs]
    full = tuned[0]
    for row in tuned[1:]:
        row.update({f"{k}_vs_full": ratio(row[k], full[k]) for k in ("new_colour", "new_overall")},
                   old_vs_base=ratio(row["old_overall"], base["old_overall"]))
    for row in tuned:
        print(json.dumps(row), flush=True)
    return [base, *tuned]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


# -- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench.lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    positive = calibrate.positive
    parser.add_argument("--ae", required=True, help="an AE folder of the preset (e.g. `calibrate ae`'s export)")
    parser.add_argument("--out", required=True, help="run folder: data/, base/, one folder per tuning run")
    parser.add_argument("--preset", default=FULL.preset)
    parser.add_argument("--word", default=FULL.word, help=f"the colour the base never sees (default {FULL.word})")
    parser.add_argument("--train-images", type=positive(int), default=FULL.train_images)
    parser.add_argument("--base-steps", type=positive(int), default=FULL.base_steps)
    parser.add_argument("--tune-steps", type=positive(int), default=FULL.tune_steps)
    parser.add_argument("--lora", type=LoRASetting.parse, nargs="+", default=list(FULL.lora),
                        metavar="RANK[:ALPHA[:LR]]", help="LoRA settings, one run each (default 16 16::3e-3)")
    parser.add_argument("--copies", type=positive(int), default=FULL.copies)
    parser.add_argument("--old-copies", type=positive(int), default=FULL.old_copies)
    parser.add_argument("--jobs", type=positive(int), default=FULL.jobs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides for every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    from vgt.errors import VGTError
    from vgt.eval.shapes.vocab import COLOURS

    args = build_parser().parse_args(argv)
    if args.word not in COLOURS:
        print(f"error: --word must be one of the shapes colours {list(COLOURS)}, got {args.word!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    plan = Plan(args.preset, args.word, args.train_images, args.base_steps, args.tune_steps, tuple(args.lora),
                args.copies, args.old_copies, args.jobs, args.seed, tuple(args.overrides))
    try:
        rows = compare(plan, args.ae, args.out)
    except VGTError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"plan": {**plan.__dict__, "lora": [s.__dict__ for s in plan.lora]}, "rows": rows}, f, indent=2)
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
