"""Turn raw image-text files into a prepared dataset (Ray Data), e.g.

  vgt prep --input laion=s3://raw/laion/*.tar mj=s3://raw/mj/ --output s3://data/prepared --preset internvl3-1b

Inputs: WebDataset tar shards (KEY.jpg|png|webp + KEY.txt [+ KEY.json]), parquet files (image bytes
+ caption columns) or JSON/JSONL indexes next to an image folder; as files, folders, globs or
@LIST files, each optionally tagged TAG=URI (default tag: the folder name). One output part per
input file; rejected rows go to rejects/ with their reason; manifest.json holds the counts.
Rerunning skips complete parts; --overwrite rebuilds everything.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="[TAG=]URI",
                        help="input files/folders/globs/@lists, local or s3://; repeatable")
    parser.add_argument("--output", required=True, metavar="URI", help="prepared dataset folder (local or s3://)")
    parser.add_argument("--preset", required=True, help="preset whose `data` section applies (resolution, filters)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.image_format=png data.jpeg_quality=90 "
                             "data.min_side=128 data.image_column=jpg")
    parser.add_argument("--overwrite", action="store_true", help="delete the existing output and rebuild every part")
    parser.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="most parts built at once (default: as many as the cluster's CPUs)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")


def run(args: argparse.Namespace) -> int:
    import os

    from pipelines.prep.dataset import run_prep
    from vgt.data.plan import InputError
    from ray_jobs._entry import UserError
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    if args.concurrency is not None and args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")

    if args.address:  # Ray starts only once there is work: input mistakes fail fast, without a cluster
        os.environ["RAY_ADDRESS"] = args.address
    try:
        manifest = run_prep(args.input, args.output, cfg, overwrite=args.overwrite, concurrency=args.concurrency)
    except InputError as e:
        raise UserError(str(e)) from e
    return 0 if manifest["counts"]["rows_out"] else 1


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
