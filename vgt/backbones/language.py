"""The VLM's LLM decoder stack (embeddings + layers + final norm, no LM head) behind one interface.

`llm(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache) -> (hidden, cache)`
for both families. InternVL's LLM is a `Qwen2Model`; Qwen2.5-VL's is a `Qwen2_5_VLTextModel`
whose rotary embedding is 3-axis mRoPE: for text (and for our generated image tokens, which carry
plain 1-D positions) all three axes get the same position, which makes mRoPE exactly 1-D RoPE.

Masks and positions are the same for every attention kernel (sdpa, eager, flash_attention_2): a 2-D
padding mask (padding may sit mid-row, before the `<img>` marker) and explicit `position_ids` that only
the rotary embedding reads. transformers also hands `position_ids` to flash-attention, which takes a
single row whose positions are not `arange` (the pairs feed mode's gapped query positions) for several
packed sequences and, with a KV cache, attends to the wrong keys; our rows are never packed, so the
attention layers do not get them (`_no_positions_in_attention`).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from vgt.backbones import families


class LanguageModel(nn.Module):
    def __init__(self, decoder: nn.Module, family: str, vlm_config=None):
        super().__init__()
        self.model = decoder
        self.family = families.check_family(family)
        self.vlm_config = vlm_config  # the VLM's transformers config the decoder came from (None: unknown)
        self.hidden_size = decoder.config.hidden_size
        # transformers 5.24 renamed the cache kwarg to `cache` (the old name is deprecated)
        params = inspect.signature(decoder.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        for layer in decoder.layers:
            layer.self_attn.register_forward_pre_hook(_no_positions_in_attention, with_kwargs=True)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def hf_config(self) -> dict:
        """The VLM's full transformers config as loaded (`to_dict()` form), text config from the decoder
        (so a truncated LLM records the layers it kept)."""
        if self.vlm_config is None:
            raise ValueError("this LanguageModel was wrapped without its VLM config")
        return families.loaded_hf_config(self.vlm_config, text_config=self.model.config)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError(f"the LLM takes a 2-D padding mask [B, S], got shape {tuple(attention_mask.shape)} "
                             "(flash-attention cannot apply a custom 4-D mask)")
        if self.family == "qwen2_5_vl" and position_ids is not None and position_ids.ndim == 2:
            # explicit [3,B,S] (t, h, w all equal): a [4,B,S] or packed layout would change masking
            position_ids = position_ids.unsqueeze(0).expand(3, *position_ids.shape)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, return_dict=True, **{self._cache_kwarg: past_key_values})
        cache = out.cache if hasattr(out, "cache") else out.past_key_values  # renamed in 5.24
        return out.last_hidden_state, cache


def _no_positions_in_attention(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of each attention layer: RoPE is already applied from `position_embeddings`; the
    raw `position_ids` would only let flash-attention guess packed sequences (module docstring)."""
    kwargs.pop("position_ids", None)
    return args, kwargs


def language_model_from_vlm(vlm: nn.Module, family: str) -> LanguageModel:
    """Wrap the LLM of an already-built VLM (shares its modules)."""
    return LanguageModel(vlm.model.language_model, family, vlm.config)


def truncate_layers(decoder: nn.Module, num_layers: int) -> None:
    """Keep the first `num_layers` decoder layers (in place) and make the config say so."""
    total = len(decoder.layers)
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [1, {total}] for this LLM, got {num_layers}")
    decoder.layers = nn.ModuleList(list(decoder.layers)[:num_layers])
    decoder.config.num_hidden_layers = num_layers
    if getattr(decoder.config, "layer_types", None) is not None:
        decoder.config.layer_types = list(decoder.config.layer_types)[:num_layers]


def _random_decoder(backbone_cfg) -> tuple[nn.Module, object]:
    """(random decoder, the VLM config it was built from)."""
    cfg = families.build_hf_config(backbone_cfg)
    attn = cfg._attn_implementation
    if backbone_cfg.family == "internvl":
        from transformers import AutoModel
        return AutoModel.from_config(cfg.text_config, attn_implementation=attn), cfg  # Qwen2Model
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
    return Qwen2_5_VLTextModel._from_config(cfg.text_config, attn_implementation=attn), cfg


def load_language_model(backbone_cfg, num_layers: int | None = None,
                        dtype: torch.dtype = torch.float32) -> LanguageModel:
    """The LLM of `backbone_cfg`'s VLM (random from `hf_config` or pretrained), vision parts and LM
    head discarded; `num_layers` keeps only the first N decoder layers."""
    families.check_family(backbone_cfg.family)
    if backbone_cfg.pretrained is None:
        decoder, vlm_config = _random_decoder(backbone_cfg)
        decoder = decoder.to(dtype)
    else:
        vlm = families.load_pretrained_vlm(backbone_cfg, dtype)
        decoder, vlm_config = vlm.model.language_model, vlm.config
    if num_layers is not None:
        truncate_layers(decoder, num_layers)
    return LanguageModel(decoder, backbone_cfg.family, vlm_config).eval()
