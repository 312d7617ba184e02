"""Parameter counts built on the meta device (no memory, no weights, no hub) and a per-GPU
training-memory estimate; `vgt info` prints both for every preset.

Memory formula (per GPU, plain data parallel: every GPU holds everything), in bytes:

    2 * (trainable + frozen)   bf16 weights (frozen = the AE teacher copy / the frozen AE)
  + 2 * trainable              bf16 gradients
  + 4 * trainable              fp32 master weights
  + 8 * trainable              fp32 AdamW moments (exp_avg, exp_avg_sq)
  = 2 * frozen + 16 * trainable

Activations, the AE discriminator and allocator overhead are not included.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from vgt.backbones import families

_GIB = 1024**3


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() counts tied weights once


def count_vlm_parameters(backbone_cfg) -> dict[str, int]:
    """The complete VLM of `backbone_cfg.hf_config` on the meta device, split into parts."""
    family = families.check_family(backbone_cfg.family)
    cfg = families.build_hf_config(backbone_cfg)
    with torch.device("meta"):
        vlm = families.vlm_model_class(family)._from_config(cfg)
    inner = vlm.model
    if family == "internvl":
        vision, projector = _numel(inner.vision_tower), _numel(inner.multi_modal_projector)
    else:  # Qwen's merger (its projector) lives inside `visual`
        projector = _numel(inner.visual.merger)
        vision = _numel(inner.visual) - projector
    llm = _numel(inner.language_model)
    total = _numel(vlm)
    return {"vision": vision, "projector": projector, "llm": llm, "lm_head": total - vision - projector - llm,
            "total": total}


def _offline(backbone_cfg):
    """The same architecture with random weights: counting never touches the hub."""
    return dataclasses.replace(backbone_cfg, pretrained=None)


def count_parameters(cfg) -> dict[str, int]:
    """Parameters of every component of a run config (`VGTConfig`), built on the meta device.

    Keys: ae.encoder (vision tower + projector), ae.bottleneck, ae.decoder, ar.llm, ar.head,
    ar.adapters (latent in/out projections and position queries), and totals ae / ar.
    """
    from vgt.ae import VGTAutoencoder  # lazy: the AE and AR packages build on this one
    from vgt.ar.model import VGTModel
    from vgt.backbones.tokenizer import load_tokenizer

    ae_cfg = copy.deepcopy(cfg.ae)
    ae_cfg.backbone = _offline(ae_cfg.backbone)
    ae_cfg.decoder.pretrained = None  # dc_config carries the architecture
    ar_cfg = copy.deepcopy(cfg.ar)
    ar_cfg.backbone = _offline(ar_cfg.backbone)
    tok = load_tokenizer(dataclasses.replace(ar_cfg.backbone, tokenizer="tiny-bpe"))  # ids do not matter here
    with torch.device("meta"):
        ae = VGTAutoencoder.from_config(ae_cfg)
        ar = VGTModel(ar_cfg, latent_dim=cfg.ae.latent_channels, tokenizer=tok)
    counts = {"ae.encoder": _numel(ae.encoder), "ae.decoder": _numel(ae.decoder), "ae": _numel(ae),
              "ar.llm": _numel(ar.llm), "ar.head": _numel(ar.head), "ar": _numel(ar)}
    counts["ae.bottleneck"] = counts["ae"] - counts["ae.encoder"] - counts["ae.decoder"]
    counts["ar.adapters"] = counts["ar"] - counts["ar.llm"] - counts["ar.head"]
    return counts


def _stage_memory(trainable: int, frozen: int) -> dict:
    parts = {"weights_bf16": 2 * (trainable + frozen), "grads_bf16": 2 * trainable,
             "master_fp32": 4 * trainable, "adamw_fp32": 8 * trainable}
    total = sum(parts.values())
    return {"trainable_params": trainable, "frozen_params": frozen, **parts, "total_bytes": total,
            "total_gib": total / _GIB}


def estimate_train_memory(cfg, counts: dict[str, int] | None = None) -> dict[str, dict]:
    """Per-GPU training memory of the AE stage and the AR stage (formula in the module docstring).

    AE: everything trainable (encoder at a lower LR, bottleneck, decoder) plus a frozen teacher
    copy of the encoder. AR: LLM, head and adapters trainable; the whole AE frozen (it encodes
    pixels when latents are not precomputed).
    """
    c = counts or count_parameters(cfg)
    return {"ae": _stage_memory(trainable=c["ae"], frozen=c["ae.encoder"]),
            "ar": _stage_memory(trainable=c["ar"], frozen=c["ae"])}
