"""The two VLM families we borrow from, and how to build (parts of) them with transformers.

Everything goes through the real transformers classes, never `trust_remote_code`:
InternVL = `InternVLForConditionalGeneration` (the native "-hf" checkpoints), Qwen2.5-VL =
`Qwen2_5_VLForConditionalGeneration`. Random weights build only the parts that are kept, so a
random encoder of a 3B VLM never allocates its LLM.
"""
from __future__ import annotations

import difflib

import torch
import transformers
from transformers.utils import is_flash_attn_2_available

FAMILIES = ("internvl", "qwen2_5_vl")


def check_family(family: str) -> str:
    if family not in FAMILIES:
        close = difflib.get_close_matches(family, FAMILIES, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone family {family!r} (known: {', '.join(FAMILIES)}){hint}")
    return family


def vlm_config_class(family: str) -> type:
    return {"internvl": transformers.InternVLConfig,
            "qwen2_5_vl": transformers.Qwen2_5_VLConfig}[check_family(family)]


def vlm_model_class(family: str) -> type:
    return {"internvl": transformers.InternVLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[check_family(family)]


def resolve_attn_implementation(name: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """"auto" -> flash_attention_2 when flash-attn is importable and the weights are 16-bit (its
    kernels take no fp32), else sdpa; any other name is used as given."""
    if name != "auto":
        return name
    half = dtype in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if half and is_flash_attn_2_available() else "sdpa"


def build_hf_config(backbone_cfg, dtype: torch.dtype = torch.float32) -> transformers.PretrainedConfig:
    """The VLM's transformers config from `backbone_cfg.hf_config` (kwargs or `to_dict()` form)."""
    if not backbone_cfg.hf_config:
        raise ValueError(f"backbone ({backbone_cfg.family}) has pretrained=None and an empty hf_config: "
                         "nothing to build random weights from")
    cfg = vlm_config_class(backbone_cfg.family).from_dict(dict(backbone_cfg.hf_config))
    cfg._attn_implementation = resolve_attn_implementation(backbone_cfg.attn_implementation, dtype)
    for sub in (cfg.vision_config, cfg.text_config):
        sub._attn_implementation = cfg._attn_implementation
    return cfg


def load_pretrained_vlm(backbone_cfg, dtype: torch.dtype) -> torch.nn.Module:
    """The whole pretrained VLM (HF id or local folder); callers keep the parts they need."""
    cls = vlm_model_class(backbone_cfg.family)
    attn = resolve_attn_implementation(backbone_cfg.attn_implementation, dtype)
    try:
        return cls.from_pretrained(backbone_cfg.pretrained, dtype=dtype, attn_implementation=attn)
    except OSError as err:
        raise OSError(f"cannot load {cls.__name__} from {backbone_cfg.pretrained!r}: {err}") from err


def random_vlm(backbone_cfg) -> torch.nn.Module:
    """The whole VLM with random weights from `hf_config` (tests compare our adapters against it)."""
    cfg = build_hf_config(backbone_cfg)
    return vlm_model_class(backbone_cfg.family)._from_config(cfg, attn_implementation=cfg._attn_implementation).eval()
