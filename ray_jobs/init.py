"""Write a random-weight pipeline folder (tokenizer/, ar/, ae/, model_index.json) for a preset.

Backbones with `pretrained` set in the preset are loaded from there; everything else is randomly
initialised from `--seed`. The folder can be used at once by `vgt generate` and `vgt serve`.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_overrides

    parser.add_argument("--preset", required=True, help="preset name (see `vgt info`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write (local or s3://)")
    add_overrides(parser, "e.g. ar.head.depth=4 sample.num_steps=20 (sample.* become the folder's sampling "
                          "defaults)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pipeline folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from vgt import io as vio
    from vgt.errors import VGTError
    from vgt.pipeline import INDEX_FILE, VGTPipeline
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)  # flag mistakes first (exit 2), then refusals (exit 1)
    if vio.exists(vio.join(args.out, INDEX_FILE)) and not args.overwrite:
        raise VGTError(f"{args.out} already holds a pipeline; pass --overwrite to replace it")
    torch.manual_seed(args.seed)
    prints = VGTPipeline.from_config(cfg).save_pretrained(args.out)
    print(f"wrote {args.preset} pipeline to {args.out} (ar {prints['ar']}, ae {prints['ae']})")
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
