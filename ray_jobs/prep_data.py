"""Turn raw image-text files into a prepared dataset (Ray Data), e.g.

  vgt prep --input laion=s3://raw/laion/*.tar mj=s3://raw/mj/ --out s3://data/prepared --preset internvl3-1b

Inputs: WebDataset tar shards (KEY.jpg|png|webp + KEY.txt [+ KEY.json]), parquet files (image bytes
+ caption columns) or JSON/JSONL indexes next to an image folder; as files, folders, globs or
@LIST files, each optionally tagged TAG=URI (default tag: the folder name). One output part per
input file; rejected rows go to rejects/ with their reason; manifest.json holds the counts.
Rerunning skips complete parts; --overwrite rebuilds everything.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_address, add_overrides, at_least, hidden_alias

    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="[TAG=]URI",
                        help="input files/folders/globs/@lists, local or s3://; repeatable")
    out = parser.add_mutually_exclusive_group(required=True)  # so that the hidden alias satisfies "required"
    out.add_argument("--out", metavar="URI", help="prepared dataset folder (local or s3://)")
    hidden_alias(out, "--output", "--out")
    parser.add_argument("--preset", required=True, help="preset whose `data` section applies (resolution, filters)")
    add_overrides(parser, "e.g. data.image_format=png data.jpeg_quality=90 data.min_side=128 data.image_column=jpg")
    parser.add_argument("--overwrite", action="store_true", help="delete the existing output and rebuild every part")
    parser.add_argument("--concurrency", type=at_least(1), default=None, metavar="N",
                        help="most parts built at once (default: as many as the cluster's CPUs)")
    add_address(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.prep.dataset import run_prep
    from ray_jobs._entry import defer_ray
    from vgt.errors import VGTError
    from vgt.presets import get_preset

    cfg = get_preset(args.preset, args.overrides)
    defer_ray(args.address)  # Ray starts only once there is work: input mistakes fail fast, without a cluster
    manifest = run_prep(args.input, args.out, cfg, overwrite=args.overwrite, concurrency=args.concurrency)
    if not manifest["counts"]["rows_out"]:
        reasons = ", ".join(f"{k} {v}" for k, v in manifest["counts"].get("rejected_by_reason", {}).items())
        raise VGTError(f"no row was kept: every input row was rejected ({reasons or 'no rows read'}); "
                       f"details in {args.out}/rejects/")
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
