"""List presets with parameter counts and estimated training memory per GPU.

Counts come from building every component on the meta device (no weights, no hub). Memory per
GPU assumes plain data parallelism (every GPU holds a full copy): bf16 weights for all
parameters, bf16 gradients + fp32 master weights + fp32 AdamW moments for trainable ones;
activations excluded. FSDP divides the trainable part by the number of GPUs.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_overrides

    parser.add_argument("--preset", action="append", help="preset(s) to show, repeatable (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_overrides(parser, "applied to every preset shown, e.g. ar.head.depth=6 ar.llm_num_layers=12")


def preset_rows(names: list[str], overrides: list[str] = ()) -> list[dict]:
    from vgt.footprint import count_parameters, estimate_train_memory
    from vgt.presets import get_preset

    rows = []
    for name in names:
        cfg = get_preset(name, list(overrides))
        counts = count_parameters(cfg)
        memory = estimate_train_memory(cfg, counts)
        rows.append({"preset": name, "family": cfg.ar.backbone.family, "px": cfg.data.resolution,
                     "ae_params": counts["ae"], "ar_llm_params": counts["ar.llm"],
                     "ar_head_params": counts["ar.head"], "ar_params": counts["ar"],
                     "ae_train_gib": round(memory["ae"]["total_gib"], 2),
                     "ar_train_gib": round(memory["ar"]["total_gib"], 2)})
    return rows


def run(args: argparse.Namespace) -> int:
    import json

    from pipelines.bench import format_table
    from vgt.presets import list_presets

    rows = preset_rows(args.preset or list_presets(), args.overrides)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
