"""Train the autoregressive generator (Ray Train) on a frozen autoencoder, e.g.

  vgt train-ar --preset internvl3-2b --stage pretrain --data s3://data/prepared-latents \\
      --ae s3://runs/ae2/export --out s3://runs/ar-pretrain --num-workers 8
  vgt train-ar --preset internvl3-2b --stage sft --init s3://runs/ar-pretrain/export \\
      --data s3://data/sft=3 s3://data/prepared-latents=1 --ae s3://runs/ae2/export --out s3://runs/ar-sft

Datasets whose latent column was made by this AE (vgt prep-latents) are read as latents, others are
encoded on the fly. OUT/export is a pipeline folder (VGTPipeline.from_pretrained, vgt serve).
Rerun the same command to resume from the latest checkpoint in OUT.
"""
from __future__ import annotations

import argparse

STAGES = {"pretrain": "ar_pretrain", "sft": "ar_sft"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._train_flags import add_common_arguments

    add_common_arguments(parser, tuple(STAGES))
    parser.add_argument("--data", required=True, nargs="+", metavar="URI[=WEIGHT]",
                        help="prepared dataset(s), mixed per sample by weight (default 1 each); "
                             "an item KEY=VALUE whose KEY is a config key is taken as an override")
    parser.add_argument("--ae", required=True, metavar="AE_DIR",
                        help="the frozen autoencoder folder, or a Hugging Face Hub repo id owner/name[@revision] "
                             "(resolved here; the workers read the local snapshot)")
    parser.add_argument("--init", default=None, metavar="PIPELINE_DIR",
                        help="pipeline folder to start from (required for sft)")


def run(args: argparse.Namespace) -> int:
    from ray_jobs._train_flags import run_training
    from vgt.train.checkpoint import TrainInputError
    from ray_jobs._entry import UserError
    from vgt.artifacts import read_component_config
    from vgt.pipeline import read_index

    from vgt.hub import resolve

    args.ae = resolve(args.ae)  # a Hub repo id -> its local snapshot, downloaded once, in the driver
    read_component_config(args.ae, "ae")  # clear errors before any worker starts
    if args.init is not None:
        read_index(args.init)
    if args.stage == "sft" and args.init is None:
        raise UserError("--stage sft starts from --init PIPELINE_DIR (pretrain's export)")
    try:
        run_training(args, "ar", STAGES[args.stage], ae=args.ae, default_strategy_gpu="fsdp2")
    except TrainInputError as e:
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
