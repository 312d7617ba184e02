"""`vgt`: the one command line for the whole pipeline.

Every subcommand lives in its own module `ray_jobs/<module>.py` (the same module that
`ray job submit -- python -m ray_jobs.<module>` runs) and is imported only when called, so
`vgt --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under ray_jobs, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "list presets with parameter counts and training memory estimates"),
    "config": ("config", "print a preset's resolved config: every key, its value and its meaning"),
    "convert": ("convert", "convert reference (hustvl/VGT) checkpoints into vgt folders"),
    "init": ("init", "write a random-weight pipeline folder for a preset"),
    "generate": ("generate", "generate images from prompts with a pipeline folder"),
    "push": ("push", "upload a pipeline or AE folder to a Hugging Face Hub repo"),
    "prep": ("prep_data", "turn raw image-text shards into a prepared dataset (Ray Data)"),
    "prep-latents": ("prep_latents", "add AE latents to a prepared dataset (Ray Data actors)"),
    "train-ae": ("train_ae", "train the autoencoder stage (Ray Train)"),
    "train-ar": ("train_ar", "train the autoregressive stage (Ray Train)"),
    "serve": ("serve", "serve a pipeline over HTTP (Ray Serve)"),
    "eval": ("evaluate", "evaluate: reconstruction, shapes benchmark, GenEval/DPG outputs"),
    "demo": ("demo", "run the whole pipeline locally on synthetic data"),
    "bench": ("bench", "run the benchmarks and print one table of ratios"),
    "gpu-check": ("gpu_check", "check a GPU: training, kernels, sampling and AE speed at real sizes (no Ray)"),
}


def top_level_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {n:<14}{h}" for n, (_, h) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="vgt", description=__doc__, epilog=epilog + "\n\nRun `vgt COMMAND --help` for its flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top_level_parser().parse_args(argv[:1] or ["--help"])
    from ray_jobs._entry import build_parser, execute

    module = importlib.import_module(f"ray_jobs.{COMMANDS[argv[0]][0]}")
    args = build_parser(module, f"vgt {argv[0]}").parse_args(argv[1:])
    return execute(module, args)


if __name__ == "__main__":
    raise SystemExit(main())
