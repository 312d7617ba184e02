"""Generate images from prompts with a pipeline folder: one PNG per image plus `images.jsonl`.

Image k (prompt-major: prompt i, copy j -> k = i * n + j) draws its token order and noise from a
generator derived from (--seed, k), so a given image is the same whatever --batch-size is.
Files are named `{k:05d}.png`; `images.jsonl` lists file, prompt, seed and index per image.
Sampling options not given come from the folder's `config.sample` (VGTPipeline resolves them).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import at_least, hidden_alias, renamed_flag

    parser.add_argument("--model", required=True, metavar="DIR",
                        help="pipeline folder (local or s3://) or Hugging Face Hub repo id owner/name[@revision]")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", metavar="FILE", help="text file with one prompt per line (blank lines skipped)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://)")
    parser.add_argument("--n", type=at_least(1), default=1, help="images per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--height", type=at_least(1), help="image height in px (default: the folder's data.resolution)")
    parser.add_argument("--width", type=at_least(1), help="image width in px (default: the folder's data.resolution)")
    # Sampling: flag = the key in the folder's config.sample; a flag not given leaves it to that config.
    parser.add_argument("--guidance-scale", type=float,
                        help="classifier-free guidance scale, 1 = off (default: the folder's config.sample)")
    hidden_alias(parser, "--guidance", "--guidance-scale", type=float)
    parser.add_argument("--cfg-schedule", choices=["linear", "constant"],
                        help="guidance over the generation order (default: config.sample)")
    parser.add_argument("--num-steps", type=at_least(1),
                        help="flow-head sampling steps per token, at least 2 for the SDE sampler (default: config.sample)")
    renamed_flag(parser, "--steps", "--num-steps", "flow-head steps per token")
    parser.add_argument("--parallel-tokens", type=at_least(1),
                        help="latent tokens per LLM step, capped at the token count (default: config.sample)")
    hidden_alias(parser, "--parallel", "--parallel-tokens", type=at_least(1))
    parser.add_argument("--order", choices=["random", "raster"], help="token generation order (default: config.sample)")
    parser.add_argument("--sampler", choices=["sde", "ode"], help="flow sampler (default: config.sample)")
    parser.add_argument("--feed-mode", choices=["pairs", "parity"], help="KV feed scheme (default: config.sample)")
    parser.add_argument("--temperature", type=float,
                        help="factor on the flow sampler's noise, below 1 keeps draws nearer their likeliest values "
                             "(default: config.sample)")
    parser.add_argument("--batch-size", type=at_least(1), default=8, help="images sampled together (default 8)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (GPU)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    from ray_jobs._entry import UserError
    from vgt import io as vio
    from vgt.errors import VGTError

    if not args.prompt and not args.prompts:
        raise UserError("no prompts: pass --prompt TEXT and/or --prompts FILE")
    prompts = list(args.prompt)
    if args.prompts:
        if not vio.exists(args.prompts):
            raise VGTError(f"prompt file {args.prompts} does not exist")
        try:
            text = vio.read_bytes(args.prompts).decode()
        except UnicodeDecodeError as e:
            raise VGTError(f"prompt file {args.prompts} is not UTF-8 text ({e.reason} at byte {e.start})") from e
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise VGTError(f"no prompts: {args.prompts} has no non-blank line")
    return prompts


def torch_device(name: str | None) -> str:
    """`--device` checked before the model loads: a bad name is a usage error, CUDA missing a refusal."""
    import torch

    from ray_jobs._entry import UserError
    from vgt.errors import VGTError

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VGTError(f"--device {name}: no CUDA device is available here")
    return name


def check_sampling(pipe, args: argparse.Namespace) -> dict:
    """The sampling keywords given (None = the folder's config.sample), checked against that config."""
    from ray_jobs._entry import UserError

    given = dict(guidance_scale=args.guidance_scale, num_steps=args.num_steps, parallel_tokens=args.parallel_tokens,
                 order=args.order, cfg_schedule=args.cfg_schedule, sampler=args.sampler, feed_mode=args.feed_mode,
                 temperature=args.temperature)
    try:
        settings = pipe.sampling(args.height, args.width, **given)
    except ValueError as e:  # e.g. a size below the AE stride
        raise UserError(str(e)) from e
    if settings.sampler == "sde" and settings.num_steps < 2:
        raise UserError(f"the SDE sampler needs --num-steps >= 2 (got {settings.num_steps}); or pass --sampler ode")
    if settings.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (got {settings.temperature})")
    return given


def run(args: argparse.Namespace) -> int:
    import io
    import json

    import torch

    from vgt import io as vio
    from vgt.ar.sampling import image_generator
    from vgt.pipeline import VGTPipeline
    from vgt.progress import Progress

    prompts = read_prompts(args)
    jobs = [(k, p) for k, p in enumerate(p for p in prompts for _ in range(args.n))]
    device = torch_device(args.device)
    pipe = VGTPipeline.from_pretrained(args.model).to(device, torch.bfloat16 if args.bf16 else None)
    sampling = check_sampling(pipe, args)
    vio.makedirs(args.out)
    records = []
    with Progress("generate", total=len(jobs), unit="image") as bar:
        for start in range(0, len(jobs), args.batch_size):
            batch = jobs[start:start + args.batch_size]
            latents = pipe.sample_latents([p for _, p in batch], height=args.height, width=args.width,
                                          generators=[image_generator(args.seed, k) for k, _ in batch], **sampling)
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
