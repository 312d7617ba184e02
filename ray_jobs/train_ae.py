"""Train the autoencoder (Ray Train), e.g.

  vgt train-ae --preset internvl3-1b --stage stage1 --data s3://data/prepared --out s3://runs/ae1 --num-workers 8
  vgt train-ae --preset internvl3-1b --stage stage2 --init s3://runs/ae1/export --data s3://data/prepared \\
      --out s3://runs/ae2 --num-workers 8

Stage 1 trains from the preset (pretrained vision tower + decoder, new bottleneck); stage 2 starts
from stage 1's export (--init) with the latent LayerNorm and noise on. OUT/export is an AE folder.
Rerun the same command to resume from the latest checkpoint in OUT.
"""
from __future__ import annotations

import argparse

STAGES = {"stage1": "ae_stage1", "stage2": "ae_stage2"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._train_flags import add_common_arguments

    add_common_arguments(parser, tuple(STAGES))
    parser.add_argument("--data", required=True, nargs="+", metavar="URI[=WEIGHT]",
                        help="prepared dataset(s) (vgt prep), mixed by weight (default 1 each)")
    parser.add_argument("--init", default=None, metavar="AE_DIR", help="AE folder to start from (required for stage2)")


def run(args: argparse.Namespace) -> int:
    from ray_jobs._train_flags import run_training
    from vgt.train.checkpoint import TrainInputError
    from ray_jobs._entry import UserError
    from vgt.artifacts import read_component_config

    if args.init is not None:
        read_component_config(args.init, "ae")  # a clear error before any worker starts
    if args.stage == "stage2" and args.init is None:
        raise UserError("--stage stage2 starts from --init AE_DIR (stage 1's export)")
    try:
        run_training(args, "ae", STAGES[args.stage])
    except TrainInputError as e:
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
