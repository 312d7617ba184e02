"""Generate images from prompts with a pipeline folder: one PNG per image plus `images.jsonl`.

Image k (prompt-major: prompt i, copy j -> k = i * n + j) draws its token order and noise from a
generator derived from (--seed, k), so a given image is the same whatever --batch-size is.
Files are named `{k:05d}.png`; `images.jsonl` lists file, prompt, seed and index per image.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="pipeline folder (local or s3://)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", metavar="FILE", help="text file with one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://)")
    parser.add_argument("--n", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--height", type=int, help="image height in px (default: the preset resolution)")
    parser.add_argument("--width", type=int, help="image width in px (default: the preset resolution)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance scale, 1 = off (default: the pipeline config, 4.5 in presets)")
    parser.add_argument("--cfg-schedule", choices=["linear", "constant"],
                        help="guidance over the generation order (default: from the pipeline config)")
    parser.add_argument("--steps", type=int, help="flow-head sampling steps per token (default: config)")
    parser.add_argument("--parallel", type=int,
                        help="latent tokens per LLM step, capped at the token count (default: the pipeline config)")
    parser.add_argument("--order", choices=["random", "raster"], help="token generation order (default: config)")
    parser.add_argument("--sampler", choices=["sde", "ode"], help="flow sampler (default: config)")
    parser.add_argument("--feed-mode", choices=["pairs", "parity"], help="KV feed scheme (default: config)")
    parser.add_argument("--batch-size", type=int, default=8, help="images sampled together (default 8)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (GPU)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    from ray_jobs._entry import UserError
    from vgt import io as vio

    prompts = list(args.prompt)
    if args.prompts:
        if not vio.exists(args.prompts):
            raise UserError(f"prompt file {args.prompts} does not exist")
        prompts += [line.strip() for line in vio.read_bytes(args.prompts).decode().splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompts: pass --prompt TEXT and/or --prompts FILE")
    if args.n < 1 or args.batch_size < 1:
        raise UserError("--n and --batch-size must be at least 1")
    return prompts


def run(args: argparse.Namespace) -> int:
    import io
    import json

    import torch
    from tqdm.auto import tqdm

    from vgt import io as vio
    from vgt.ar.sampling import image_generator
    from vgt.pipeline import VGTPipeline

    prompts = read_prompts(args)
    jobs = [(k, p) for k, p in enumerate(p for p in prompts for _ in range(args.n))]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = VGTPipeline.from_pretrained(args.model).to(device, torch.bfloat16 if args.bf16 else None)
    defaults = pipe.config.sample
    vio.makedirs(args.out)
    records = []
    with tqdm(total=len(jobs), unit="img", desc="generate") as bar:
        for start in range(0, len(jobs), args.batch_size):
            batch = jobs[start:start + args.batch_size]
            latents = pipe.sample_latents(
                [p for _, p in batch], height=args.height, width=args.width,
                guidance_scale=defaults.guidance_scale if args.guidance is None else args.guidance,
                num_steps=args.steps, parallel_tokens=args.parallel or defaults.parallel_tokens, order=args.order or defaults.order,
                generators=[image_generator(args.seed, k) for k, _ in batch], cfg_schedule=args.cfg_schedule,
                sampler=args.sampler, feed_mode=args.feed_mode)
            size = pipe.image_size(args.height, args.width)
            for (k, prompt), image in zip(batch, pipe.decode(latents, size=size)):
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                vio.write_bytes(vio.join(args.out, f"{k:05d}.png"), buf.getvalue())
                records.append({"file": f"{k:05d}.png", "prompt": prompt, "seed": args.seed, "index": k})
            bar.update(len(batch))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    vio.write_bytes(vio.join(args.out, "images.jsonl"), lines.encode())
    print(f"wrote {len(records)} images to {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
