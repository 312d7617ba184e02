"""List presets with parameter counts, estimated training memory per GPU and AR activation memory.

Counts come from building every component on the meta device (no weights, no hub). Memory per
GPU (`ae_train_gib`, `ar_train_gib`) assumes plain data parallelism (every GPU holds a full copy):
bf16 weights for all parameters, bf16 gradients + fp32 master weights + fp32 AdamW moments for
trainable ones; activations excluded. FSDP divides the trainable part by the number of GPUs.
Beside full tuning (`ar_params` trainable), the AR stage under LoRA (train.ar_pretrain.lora, at rank
`lora_rank`: the preset's, else 16): `ar_lora_trainable` parameters (the LLM's adapters + the flow head,
queries and projections) and `ar_lora_train_gib` per GPU, the LLM's own weights frozen (bf16 copies only).

AR activations (`ar_act_gib`, `ar_act_ckpt_gib`): what one micro-batch of the AR pretraining stage
saves for backward on a GPU, without and with activation checkpointing of the LLM layers, at
`ar_batch` samples (train.ar_pretrain.batch_size, per GPU) of `ar_seq` LLM tokens (the prompt padded
to ar.max_prompt_tokens, the `<img>` marker, a query and a latent per latent token): bf16 compute
with FSDP2's bf16 parameters (the AR default on GPUs) and the `attn_gpu` kernel (vgt.footprint,
checked against the bytes torch actually saves). Training adds them to the state under its strategy
and turns checkpointing on when the sum does not fit (train.activation_checkpointing=null).

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
    from vgt.footprint import LORA_RANK_SHOWN, count_parameters, estimate_train_memory, meta_models
    from vgt.presets import get_preset

    rows = []
    for name in names:
        cfg = get_preset(name, list(overrides))
        models = meta_models(cfg)
        counts = count_parameters(cfg, models)
        memory = estimate_train_memory(cfg, counts)
        kernels = attention_kernels(cfg)
        rows.append({"preset": name, "family": cfg.ar.backbone.family, "px": cfg.data.resolution,
                     "ae_params": counts["ae"], "ar_llm_params": counts["ar.llm"],
                     "ar_head_params": counts["ar.head"], "ar_params": counts["ar"],
                     "ae_train_gib": round(memory["ae"]["total_gib"], 2),
                     "ar_train_gib": round(memory["ar"]["total_gib"], 2),
                     "lora_rank": cfg.train.ar_pretrain.lora.rank or LORA_RANK_SHOWN,
                     "ar_lora_trainable": memory["ar_lora"]["trainable_params"],
                     "ar_lora_train_gib": round(memory["ar_lora"]["total_gib"], 2),
                     **ar_activations(cfg, models, kernels["attn_gpu"].split()[-1]), **kernels})
    return rows


def ar_activations(cfg, models, attention: str) -> dict:
    """{"ar_batch", "ar_seq", "ar_act_gib", "ar_act_ckpt_gib"}: one AR pretraining micro-batch on a GPU
    (module docstring)."""
    import torch

    from vgt.footprint import ar_activation_bytes, ar_activation_shape

    ae, ar = models
    grid = cfg.data.resolution // ae.stride
    shape = ar_activation_shape(ar, cfg.train.ar_pretrain.batch_size, grid * grid)
    gib = {ckpt: ar_activation_bytes(shape, torch.bfloat16, torch.bfloat16, attention, "cuda", ckpt)["total"] / 2**30
           for ckpt in (False, True)}
    return {"ar_batch": shape.batch, "ar_seq": shape.seq, "ar_act_gib": round(gib[False], 2),
            "ar_act_ckpt_gib": round(gib[True], 2)}


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
