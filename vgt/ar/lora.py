"""LoRA on the generator's LLM through peft (`train.ar_*.lora`).

peft injects its LoRA layers into the LLM decoder in place (`inject_adapter_in_model`), so the model
stays a `VGTModel` with the same forward, FSDP units and activation-checkpointing units: each targeted
Linear `x.q_proj` becomes `x.q_proj.base_layer` (frozen) + `x.q_proj.lora_A/lora_B.<adapter>` (trained, B
zero-initialised, so the adapted model starts as the base model). Only the decoder is wrapped: the flow
head, queries and projections keep training in full.

State dicts of an adapted model (`VGTModel.state_dict()`) are turned into a plain model's by
`merge_state_dict` (W + alpha/r B A per target, the way peft merges) or split by `split_state_dict` into
peft's adapter tensors for the LLM and the rest that trained in full.
"""
from __future__ import annotations

import torch
from torch import nn

from vgt.config import LoRAConfig

DECODER = "llm.model."  # where the LLM decoder sits in a VGTModel's state dict
ADAPTER = "default"  # peft's adapter name inside a training run
PEFT_PREFIX = "base_model.model."  # peft's adapter files key the decoder's tensors under this


def peft_config(cfg: LoRAConfig):
    """The peft LoraConfig of `cfg` (which must be enabled)."""
    from peft import LoraConfig

    if not cfg.enabled or cfg.rank < 0:
        raise ValueError(f"LoRA needs a positive rank, got {cfg.rank!r}")
    if cfg.export not in ("merged", "adapter"):
        raise ValueError(f"lora.export must be 'merged' or 'adapter', got {cfg.export!r}")
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else 2 * cfg.rank,
                      lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), bias="none")


def inject(model: nn.Module, config, name: str = ADAPTER) -> None:
    """Add LoRA adapter `name` (a peft LoraConfig) to `model.llm.model` in place; the LLM's own weights
    freeze, and the adapter becomes the active one. Adding a second name to the same model keeps the
    first (serving swaps adapters that share a base with `activate`)."""
    from peft import inject_adapter_in_model

    decoder = model.llm.model
    frozen = {n: p.requires_grad for n, p in model.named_parameters() if not n.startswith("llm.")}
    inject_adapter_in_model(config, decoder, adapter_name=name)
    model.train(model.training)  # the new layers (their dropout) follow the model's mode
    for n, p in model.named_parameters():  # peft only touches the decoder; keep the rest as it was
        if n in frozen:
            p.requires_grad_(frozen[n])
    activate(model, name)


def activate(model: nn.Module, name: str) -> None:
    """Make adapter `name` the one every LoRA layer of the LLM applies (trainable only in training)."""
    from peft.tuners.lora import LoraLayer

    for module in model.llm.model.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter(name)


def is_adapted(state_dict: dict) -> bool:
    return any(".lora_A." in k for k in state_dict)


def scaling(config) -> float:
    """alpha / r: the factor peft applies to B A (no rsLoRA)."""
    return config.lora_alpha / config.r


def merge_state_dict(state_dict: dict[str, torch.Tensor], config, name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The plain VGTModel state dict of an adapted one: W + alpha/r B A in each target (in fp32, then the
    base weight's dtype), the other adapters dropped. Works on a gathered full state dict (FSDP2)."""
    out, scale = {}, scaling(config)
    for key, value in state_dict.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, _, leaf = key.partition(".base_layer.")
            if leaf == "weight" and f"{prefix}.lora_A.{name}.weight" in state_dict:
                a = state_dict[f"{prefix}.lora_A.{name}.weight"].float()
                b = state_dict[f"{prefix}.lora_B.{name}.weight"].float()
                value = (value.float() + scale * (b @ a)).to(value.dtype)
            key = f"{prefix}.{leaf}"
        out[key] = value
    return out


def split_state_dict(state_dict: dict[str, torch.Tensor], name: str = ADAPTER
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(peft adapter tensors of the LLM, keyed as peft's adapter files key them, the tensors that trained in
    full: everything outside the LLM) of an adapted VGTModel state dict."""
    lora, rest = {}, {}
    for key, value in state_dict.items():
        if key.startswith(DECODER):
            if f".{name}." in key and ".lora_" in key:
                lora[PEFT_PREFIX + key[len(DECODER):].replace(f".{name}.", ".")] = value
        else:
            rest[key] = value
    return lora, rest


def load_adapter_tensors(model: nn.Module, lora: dict[str, torch.Tensor], name: str) -> None:
    """Load peft-format adapter tensors (`split_state_dict`'s first part) into adapter `name` of `model`."""
    targets = dict(model.llm.model.named_parameters())
    with torch.no_grad():
        for key, value in lora.items():
            local = key[len(PEFT_PREFIX):].rsplit(".", 1)
            target = targets.get(f"{local[0]}.{name}.{local[1]}")
            if target is None or target.shape != value.shape:
                raise ValueError(f"adapter tensor {key} ({list(value.shape)}) does not fit this model's LoRA layers")
            target.copy_(value)
