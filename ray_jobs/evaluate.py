"""Evaluate models: reconstruction metrics, the shapes benchmark, GenEval / DPG-Bench image folders.

  vgt eval recon --ae AE_DIR --data PREPARED [--convention standard|reference] [--no-fd] [--out FILE]
  vgt eval shapes --model PIPELINE_DIR_OR_URL [--n 4] [--guidance-scale 3] [--out DIR]
  vgt eval geneval-images --model PIPELINE_DIR --prompts evaluation_metadata.jsonl --out DIR [--protocol geneval]
  vgt eval dpg-images --model PIPELINE_DIR --prompts ELLA_PROMPTS_DIR --out DIR [--protocol dpg]

recon: PSNR and SSIM per image (standard definitions, data range 1; or the reference evaluator's
conventions with --convention reference: squash resize, 256/448 bilinear downsample, SSIM data
range 2) and a Fréchet distance on EfficientNet-Lite0 features (a proxy, NOT FID).
shapes: the fixed held-out shapes prompts, scored by a deterministic detector (colour, count,
shape, position, two-object; GenEval-style overall); --model is a pipeline folder (Ray Data) or a
`vgt serve` URL (one HTTP request per image). Both sample with the model's config.sample unless
told otherwise, and image k of prompt i uses seed + i * n + k, so a folder and its endpoint give the
same images. geneval-images and dpg-images take `--protocol geneval|dpg`: the reference's benchmark
sampling (guidance 4.5, linear schedule, random order, one token per LLM step, SDE; 30 flow-head
steps for GenEval, 100 for DPG; docs/reference.md §4.1), single flags overriding it. Evaluation actors
on a GPU run their models in bf16 (the attention kernel follows), on the CPU in fp32.
Everything but the URL case runs as Ray Data batch inference (--address, else RAY_ADDRESS, else a
local cluster).
"""
from __future__ import annotations

import argparse


def _sampling(p: argparse.ArgumentParser, n: int | None = 4, http: bool = False, protocol: bool = False) -> None:
    from ray_jobs._entry import add_address, at_least

    if protocol:
        p.add_argument("--protocol", choices=["geneval", "dpg"], default=None,
                       help="sample as the reference ran the benchmark: guidance 4.5, linear schedule, random "
                            "order, 1 token per LLM step, SDE with 30 (geneval) or 100 (dpg) flow-head steps; "
                            "the flags below override single settings (default: the model's config.sample)")
    if n is not None:
        p.add_argument("--n", type=at_least(1), default=n, help=f"images per prompt (default {n})")
    p.add_argument("--seed", type=int, default=0, help="image k of prompt i uses seed + its index (default 0)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="CFG scale (default: the model's config.sample, folder or URL alike)")
    p.add_argument("--num-steps", type=at_least(1), default=None,
                   help="flow-head steps per token (default: config.sample)")
    p.add_argument("--parallel-tokens", type=at_least(1), default=None,
                   help="tokens per LLM step (default: config.sample)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="images per Ray Data batch (default 8)")
    if http:
        p.add_argument("--concurrency", type=at_least(1), default=None,
                       help="generator actors for a folder (default 1); HTTP requests in flight for a URL (default 4)")
    else:
        p.add_argument("--concurrency", type=at_least(1), default=1, help="generator actors (default 1)")
    p.add_argument("--num-gpus", type=at_least(0, float), default=None,
                   help="GPUs per actor (default: 1 if the cluster has any, else 0)")
    add_address(p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_address, at_least, hidden_alias, renamed_flag

    sub = parser.add_subparsers(dest="what", required=True, metavar="{recon,shapes,geneval-images,dpg-images}")
    r = sub.add_parser("recon", help="PSNR / SSIM / proxy Fréchet distance of an AE on a prepared dataset")
    r.add_argument("--ae", required=True, help="AE folder (local or s3://)")
    r.add_argument("--data", required=True, help="prepared dataset (vgt prep output)")
    r.add_argument("--convention", choices=["standard", "reference"], default="standard",
                   help="metric conventions (default standard; reference = hustvl/VGT's evaluator)")
    r.add_argument("--no-fd", action="store_true", help="skip the Fréchet distance (no feature network)")
    r.add_argument("--batch-size", type=at_least(1), default=32, help="images per AE forward (default 32)")
    r.add_argument("--concurrency", type=at_least(1), default=1, help="AE actors (default 1)")
    r.add_argument("--num-gpus", type=at_least(0, float), default=None,
                   help="GPUs per actor (default: 1 if the cluster has any, else 0)")
    r.add_argument("--out", metavar="FILE", help="also write the result as JSON to FILE (local or s3://)")
    hidden_alias(r, "--json", "--out")
    add_address(r)
    s = sub.add_parser("shapes", help="the held-out shapes benchmark on a pipeline folder or endpoint URL")
    s.add_argument("--model", required=True, help="pipeline folder (local or s3://) or http(s)://host:port")
    s.add_argument("--out", default=None, help="folder for the images and shapes.json (local or s3://)")
    renamed_flag(s, "--parallel", "--concurrency", "HTTP requests in flight; --parallel-tokens is tokens per LLM step")
    _sampling(s, http=True)
    g = sub.add_parser("geneval-images", help="GenEval's folder layout for its official scorer")
    g.add_argument("--model", required=True, help="pipeline folder (local or s3://)")
    g.add_argument("--prompts", required=True, help="GenEval evaluation_metadata.jsonl")
    g.add_argument("--out", required=True, help="output folder (local or s3://)")
    _sampling(g, protocol=True)
    d = sub.add_parser("dpg-images", help="DPG-Bench 2x2 grids named by prompt id")
    d.add_argument("--model", required=True, help="pipeline folder (local or s3://)")
    d.add_argument("--prompts", required=True, help="folder of <id>.txt prompt files (ELLA dpg_bench/prompts)")
    d.add_argument("--out", required=True, help="output folder (local or s3://)")
    _sampling(d, n=None, protocol=True)


def sample_options(args) -> dict:
    """Sampling settings for the model: the `--protocol`'s, then the explicit flags over them; the rest
    come from the pipeline folder's config.sample."""
    from vgt.eval.protocols import protocol_settings

    keys = {"guidance_scale": args.guidance_scale, "num_steps": args.num_steps,
            "parallel_tokens": args.parallel_tokens}
    protocol = getattr(args, "protocol", None)
    return {**(protocol_settings(protocol) if protocol else {}), **{k: v for k, v in keys.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    import json

    from ray_jobs._entry import UserError, defer_ray
    from vgt import io as vio
    from vgt.errors import VGTError

    inputs = [getattr(args, "ae", None) or args.model, getattr(args, "data", None), getattr(args, "prompts", None)]
    for uri in filter(None, inputs):  # missing inputs are refused before Ray starts (exit 1)
        if not uri.startswith(("http://", "https://")) and not vio.exists(uri):
            raise VGTError(f"{uri!r} does not exist")
    check_folders(args)
    defer_ray(args.address)
    try:
        result = _dispatch(args)
    except VGTError:
        raise
    except ValueError as err:  # malformed prompt files, specs, sampling values: the user's to fix
        raise UserError(str(err)) from err
    print(json.dumps(result, indent=1), flush=True)
    if args.what == "recon" and args.out:
        vio.write_bytes(args.out, json.dumps(result, indent=1).encode())
    return 0


def check_folders(args) -> None:
    """A folder of the wrong kind is refused here (ArtifactError, exit 1), not inside a Ray actor."""
    from vgt.artifacts import read_component_config
    from vgt.data.reader import PreparedDataset
    from vgt.pipeline import read_index

    if args.what == "recon":
        read_component_config(args.ae, "ae")
        PreparedDataset(args.data)
    elif not args.model.startswith(("http://", "https://")):
        read_index(args.model)


def _dispatch(args) -> dict:
    ray_options = dict(batch_size=args.batch_size, concurrency=args.concurrency, num_gpus=args.num_gpus)
    if args.what == "recon":
        from pipelines.eval.actors import recon_eval

        return recon_eval(args.ae, args.data, args.convention, fd=not args.no_fd, **ray_options)
    if args.what == "shapes":
        from pipelines.eval.shapes import shapes_eval

        from pipelines.eval.shapes import is_url

        concurrency = args.concurrency or (4 if is_url(args.model) else 1)
        summary = shapes_eval(args.model, args.n, args.seed, sample_options(args), args.out, concurrency,
                              args.batch_size, concurrency=concurrency, num_gpus=args.num_gpus)
        return {k: v for k, v in summary.items() if k != "per_prompt"}
    from pipelines.eval.benchmarks import dpg_images, geneval_images

    sample = sample_options(args)
    if args.what == "geneval-images":
        count = geneval_images(args.model, args.prompts, args.out, args.n, args.seed, sample, **ray_options)
    else:
        count = dpg_images(args.model, args.prompts, args.out, args.seed, sample, **ray_options)
    return {"prompts": count, "out": args.out, "protocol": args.protocol, "sample": sample}


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
