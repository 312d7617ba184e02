"""List presets with parameter counts and estimated training memory per GPU.

Counts come from building every component on the meta device (no weights, no hub). Memory per
GPU assumes plain data parallelism (every GPU holds a full copy): bf16 weights for all
parameters, bf16 gradients + fp32 master weights + fp32 AdamW moments for trainable ones;
activations excluded. FSDP divides the trainable part by the number of GPUs.

Attention kernels: `attn_gpu` is what GPU training (bf16 autocast / FSDP2 bf16 parameters) and bf16
serving run, assuming flash-attn imports on that machine (otherwise sdpa; the table's footnote says
whether it imports here); `attn_cpu` is what CPU runs use. An AE that differs from the AR model is
shown as "ae X / ar Y".
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
                     "ar_train_gib": round(memory["ar"]["total_gib"], 2), **attention_kernels(cfg)})
    return rows


def attention_kernels(cfg) -> dict[str, str]:
    """{"attn_gpu", "attn_cpu"}: the kernels of the preset's AE and AR backbones (module docstring)."""
    import torch

    from vgt.backbones import choose_attn_implementation

    def kernel(device: str, dtype, flash) -> str:
        ae, ar = (choose_attn_implementation(b.attn_implementation, device, dtype, flash)[0]
                  for b in (cfg.ae.backbone, cfg.ar.backbone))
        return ar if ae == ar else f"ae {ae} / ar {ar}"

    return {"attn_gpu": kernel("cuda", torch.bfloat16, (True, "assumed")),
            "attn_cpu": kernel("cpu", torch.float32, None)}


def flash_note() -> str:
    from vgt.backbones.families import flash_attention_importable

    ok, why = flash_attention_importable()
    return ("attn_gpu: GPU training (bf16 autocast / FSDP2 bf16) and bf16 serving, where flash-attn imports; "
            f"sdpa where it does not. Here: {'imports' if ok else 'no'} ({why}).")


def run(args: argparse.Namespace) -> int:
    import json

    from pipelines.bench import format_table
    from vgt.presets import list_presets

    rows = preset_rows(args.preset or list_presets(), args.overrides)
    print(json.dumps(rows, indent=2) if args.json else f"{format_table(rows)}\n\n{flash_note()}")
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
