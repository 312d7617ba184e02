"""Add AE latents to a prepared dataset (Ray Data actor pool), e.g.

  vgt prep-latents --data s3://data/prepared --ae runs/ae/export

Each row's image is centre-cropped to the dataset's resolution and encoded; the result is stored
as `latent` (float16 bytes) + `latent_shape` ([32, h, w]) columns, and the AE fingerprint goes into
manifest.json so that AR training refuses latents of another AE. Rerunning encodes only the parts
that lack latents; latents of a different AE are replaced only with --overwrite.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_address, at_least, hidden_alias

    parser.add_argument("--data", required=True, metavar="URI", help="prepared dataset (vgt prep output)")
    parser.add_argument("--ae", required=True, metavar="AE_DIR", help="AE folder (config.json + model.safetensors)")
    parser.add_argument("--out", default=None, metavar="URI",
                        help="write a new dataset here (parts with latents, manifest, rejects); default: in place")
    hidden_alias(parser, "--output", "--out")
    parser.add_argument("--batch-size", type=at_least(1), default=32, metavar="N",
                        help="images per AE forward pass (default 32)")
    parser.add_argument("--concurrency", type=at_least(1), default=1, metavar="N",
                        help="AE actors, each holds one AE copy and encodes whole parts (default 1)")
    parser.add_argument("--num-gpus", type=at_least(0, float), default=None, metavar="G",
                        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--num-cpus", type=at_least(0, float), default=1, metavar="C",
                        help="CPUs per actor: image decoding, torch threads on CPU (default 1)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder on GPU (stored as fp16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute every part (needed to replace latents of another AE)")
    add_address(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.prep.add_latents import run_prep_latents
    from ray_jobs._entry import defer_ray

    defer_ray(args.address)  # Ray starts only once there is work: input mistakes fail fast, without a cluster
    run_prep_latents(args.data, args.ae, args.out, batch_size=args.batch_size, concurrency=args.concurrency,
                     num_gpus=args.num_gpus, num_cpus=args.num_cpus, bf16=args.bf16, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
