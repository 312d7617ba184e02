"""Backbone adapters: image features, LLM decoder stack and tokenizer of a pretrained VLM.

Families: "internvl" (transformers' native InternVLForConditionalGeneration) and "qwen2_5_vl"
(Qwen2_5_VLForConditionalGeneration). See `vision`, `language`, `tokenizer`; architecture numbers in
`tiny_configs` / `real_configs`. Adapters know transformers only, nothing of VGT (parameter counts
and memory estimates of whole presets live in `vgt.footprint`).
"""
from vgt.backbones.families import (FAMILIES, apply_attn_implementation, build_hf_config, choose_attn_implementation,
                                   random_vlm, resolve_attn_implementation)
from vgt.backbones.language import LanguageModel, language_model_from_vlm, load_language_model
from vgt.backbones.tiny_configs import TINY_INTERNVL, TINY_QWEN
from vgt.backbones.tokenizer import load_tokenizer, token_id
from vgt.backbones.vision import encoder_from_vlm, load_vision_encoder

__all__ = ["FAMILIES", "LanguageModel", "TINY_INTERNVL", "TINY_QWEN", "apply_attn_implementation", "build_hf_config",
           "choose_attn_implementation", "encoder_from_vlm",
           "language_model_from_vlm", "load_language_model", "load_tokenizer", "load_vision_encoder", "random_vlm",
           "resolve_attn_implementation", "token_id"]
