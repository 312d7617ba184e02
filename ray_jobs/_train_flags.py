"""Command-line flags shared by `vgt train-ae` and `vgt train-ar`, and the one call they make."""
from __future__ import annotations

import argparse


def add_common_arguments(parser: argparse.ArgumentParser, stages: tuple[str, ...]) -> None:
    from ray_jobs._entry import add_address, add_overrides, hidden_alias

    parser.add_argument("--preset", required=True, help="preset name (see `vgt info`)")
    parser.add_argument("--stage", required=True, choices=stages, help="which training stage")
    parser.add_argument("--out", required=True, metavar="URI",
                        help="run folder, local or s3:// (checkpoints, metrics.jsonl, samples/, export/); "
                             "rerunning the same command resumes from its latest checkpoint")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimiser steps: length of the LR schedule and of the run (default: the preset's "
                             "train.<stage>.steps)")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="Ray Train workers, = --set ray.num_workers=N (one per GPU on GPU clusters; "
                             "a resumed run needs the same N; default 1)")
    hidden_alias(parser, "--workers", "--num-workers", type=int)
    add_address(parser)
    add_overrides(parser, "e.g. train.ae_stage1.lr=1e-4 train.checkpoint_every=1000 train.strategy=fsdp2 "
                          "train.stop_at=500 ray.cpus_per_worker=0.5 ray.max_failures=0 (`vgt config PRESET` "
                          "lists every key with its meaning)")


def run_training(args: argparse.Namespace, stage: str, stage_key: str, ae: str | None = None,
                 default_strategy_gpu: str = "ddp") -> dict:
    """Parsed flags -> `pipelines.train.launch.train`."""
    from pipelines.train.config import ray_train_config, split_overrides
    from pipelines.train.launch import train
    from ray_jobs._entry import defer_ray
    from vgt.config import flat_keys
    from vgt.presets import get_preset

    # `--data` takes several items, so trailing KEY=VALUE items land there: a known config key is an override.
    keys = set(flat_keys(get_preset(args.preset)))
    moved = [d for d in args.data if d.split("=", 1)[0] in keys or d.startswith("ray.")]
    model_overrides, ray_overrides = split_overrides(list(args.overrides) + moved)
    if args.num_workers is not None:
        ray_overrides.append(f"num_workers={args.num_workers}")
    cfg = get_preset(args.preset, model_overrides)
    if stage == "ar":
        check_lora(getattr(cfg.train, stage_key).lora, stage_key, getattr(args, "init", None))
    ray_cfg = ray_train_config(ray_overrides)
    defer_ray(args.address)  # Ray starts after the inputs are checked
    return train(stage, stage_key, cfg, [d for d in args.data if d not in moved], args.out, ray_cfg,
                 steps=args.steps, init=getattr(args, "init", None), ae=ae, default_strategy_gpu=default_strategy_gpu)


def check_lora(lora, stage_key: str, init: str | None) -> None:
    """LoRA settings a worker would refuse, refused here before Ray starts (one line)."""
    from ray_jobs._entry import UserError
    from vgt.ar.lora import peft_config

    if not lora.enabled:
        return
    try:
        peft_config(lora)
    except ValueError as err:
        raise UserError(f"train.{stage_key}.lora: {err}") from err
    if lora.export == "adapter" and init is None:
        raise UserError(f"train.{stage_key}.lora.export=adapter needs --init PIPELINE_DIR: the base pipeline "
                        "the adapter loads onto")
