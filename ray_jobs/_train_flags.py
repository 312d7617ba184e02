"""Command-line flags shared by `vgt train-ae` and `vgt train-ar` (argparse only: `--help` stays fast)."""
from __future__ import annotations

import argparse


def add_common_arguments(parser: argparse.ArgumentParser, stages: tuple[str, ...]) -> None:
    parser.add_argument("--preset", required=True, help="preset name (see `vgt info`)")
    parser.add_argument("--stage", required=True, choices=stages, help="which training stage")
    parser.add_argument("--out", required=True, metavar="URI",
                        help="run folder, local or s3:// (checkpoints, metrics.jsonl, samples/, export/); "
                             "rerunning the same command resumes from its latest checkpoint")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="length of the LR schedule and of the run (default: the preset's stage steps)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="Ray Train workers (one per GPU on GPU clusters); a resumed run needs the same N")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.ae_stage1.lr=1e-4 train.checkpoint_every=1000 "
                             "train.cpus_per_worker=0.5 train.strategy=fsdp2 train.stop_at=500 "
                             "(every key and its meaning: vgt/config.py, TrainConfig / AEStageConfig / ARStageConfig)")
