"""Run the whole pipeline locally on synthetic coloured shapes, on an embedded Ray cluster:

  (1) captioned shapes as WebDataset shards, a fixed set of attribute combinations held out,
  (2) vgt prep, (3) vgt train-ae, (4) vgt prep-latents, (5) vgt train-ar, (6) the Serve app,
  (7) the held-out prompts over HTTP, (8) OUT/report.html + OUT/metrics.json.

Each stage gets a share of --budget-minutes (about 15 minutes on 2 cores by default) and prints
its progress; training steps are sized to the budget on this machine, unless --ae-steps /
--ar-steps fix them (then training runs to the end however long it takes).
The demo starts its own local Ray cluster (so it takes no --address) and stops it at the end:
nothing keeps running afterwards.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_overrides, hidden_alias

    parser.add_argument("--out", required=True, help="output folder (data, runs, report.html, metrics.json)")
    parser.add_argument("--budget-minutes", type=float, default=15.0,
                        help="total time budget, shared between the stages (default 15)")
    parser.add_argument("--ae-steps", type=int, default=None,
                        help="AE training steps, run to the end without a time cap (default: what fits the "
                             "budget on this machine, at most the preset's)")
    parser.add_argument("--ar-steps", type=int, default=None, help="AR training steps, as --ae-steps")
    parser.add_argument("--steps", type=int, default=None, help="both --ae-steps and --ar-steps")
    parser.add_argument("--n", type=int, default=8,
                        help="images per held-out prompt, one HTTP request each (default 8: with 2, one image "
                             "more or less right moves a two-object score by 0.04)")
    parser.add_argument("--train-images", type=int, default=4000, help="synthetic training images (default 4000)")
    parser.add_argument("--heldout-images", type=int, default=96,
                        help="held-out ground-truth renders for the reconstruction metrics and the AE ceiling (default 96)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="Ray Train workers per training stage; the preset's batch is split over them and "
                             "their torch threads share the 2 cores (default 1: one worker with 2 threads trains "
                             "1.3x the steps per second of two with one)")
    hidden_alias(parser, "--workers", "--num-workers", type=int)
    parser.add_argument("--seed", type=int, default=0, help="data and sampling seed (default 0)")
    parser.add_argument("--preset", default="demo", help="preset to train (default demo)")
    add_overrides(parser, "applied to every stage, e.g. train.ar_pretrain.lr=5e-4")


def run(args: argparse.Namespace) -> int:
    from pipelines.demo.run import DemoOptions, run_demo
    from ray_jobs._entry import UserError

    if min(args.budget_minutes, args.n, args.train_images, args.heldout_images, args.num_workers) <= 0:
        raise UserError("--budget-minutes, --n, --train-images, --heldout-images and --num-workers must be positive")
    for flag in ("steps", "ae_steps", "ar_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    metrics = run_demo(DemoOptions(
        out=args.out, budget_minutes=args.budget_minutes, ae_steps=args.ae_steps or args.steps,
        ar_steps=args.ar_steps or args.steps, n=args.n, train_images=args.train_images,
        heldout_images=args.heldout_images, workers=args.num_workers, seed=args.seed, preset=args.preset,
        overrides=list(args.overrides)))
    s, u = metrics["shapes"], metrics["shapes_unconditional"]
    print(f"vgt demo: done in {metrics['total_seconds']:.0f} s; held-out shapes: colour {s['colour']:.2f} "
          f"count {s['count']:.2f} shape {s['shape']:.2f} position {s['position']:.2f} "
          f"two-object {s['two_object']:.2f} (unconditional: colour {u['colour']:.2f} position {u['position']:.2f}); "
          f"report {args.out}/report.html", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
