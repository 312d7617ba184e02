"""The DC-AE pixel decoder (diffusers `AutoencoderDC`'s decoder half; docs/reference.md §1.3).

`dc_config` holds `AutoencoderDC` constructor kwargs, so a preset can paste a released
`config.json`. Random decoders are built from the decoder kwargs alone: the encoder half of
DC-AE is never allocated.
"""
from __future__ import annotations

import inspect

import torch
from diffusers import AutoencoderDC
from diffusers.models.autoencoders.autoencoder_dc import Decoder
from torch import nn
from torch.nn import functional as F

# AutoencoderDC kwarg -> diffusers Decoder kwarg (the decoder-relevant subset).
_DECODER_KWARGS = {
    "in_channels": "in_channels",
    "latent_channels": "latent_channels",
    "attention_head_dim": "attention_head_dim",
    "decoder_block_types": "block_type",
    "decoder_block_out_channels": "block_out_channels",
    "decoder_layers_per_block": "layers_per_block",
    "decoder_qkv_multiscales": "qkv_multiscales",
    "decoder_norm_types": "norm_type",
    "decoder_act_fns": "act_fn",
    "upsample_block_type": "upsample_block_type",
    "decoder_in_shortcut": "in_shortcut",
    "decoder_conv_act_fn": "conv_act_fn",
}


def _dc_defaults() -> dict:
    params = inspect.signature(AutoencoderDC.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def full_dc_config(dc_config: dict) -> dict:
    """The complete `AutoencoderDC` config these kwargs give: every constructor argument (diffusers'
    default where `dc_config` has none) and `_class_name`; other `_`-prefixed keys (`_diffusers_version`,
    `_name_or_path` of a released config) are kept as given. JSON types (lists, not tuples)."""
    defaults = _dc_defaults()
    unknown = sorted(k for k in dc_config if k not in defaults and not k.startswith("_"))
    if unknown:
        raise ValueError(f"decoder.dc_config has keys AutoencoderDC does not take: {unknown}")
    return {"_class_name": "AutoencoderDC", **{k: _jsonable(v) for k, v in {**defaults, **dc_config}.items()}}


def build_decoder(dc_config: dict, latent_channels: int) -> Decoder:
    """A randomly initialised DC-AE decoder from `AutoencoderDC` kwargs."""
    merged = full_dc_config(dc_config)
    if merged["latent_channels"] != latent_channels:
        raise ValueError(f"decoder.dc_config latent_channels={merged['latent_channels']} but the AE "
                         f"produces {latent_channels} channels")
    kwargs = {dst: merged[src] for src, dst in _DECODER_KWARGS.items()}
    for key in ("block_out_channels", "layers_per_block"):
        kwargs[key] = tuple(kwargs[key])
    kwargs["qkv_multiscales"] = tuple(tuple(s) for s in kwargs["qkv_multiscales"])
    return Decoder(**kwargs)


def load_pretrained_decoder(pretrained: str, latent_channels: int) -> tuple[Decoder, dict]:
    """The decoder of a released AutoencoderDC (HF id or folder) and its full config as loaded."""
    try:
        dc = AutoencoderDC.from_pretrained(pretrained, torch_dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise OSError(f"cannot load AutoencoderDC from decoder.pretrained={pretrained!r}: {err}") from err
    keep = set(_dc_defaults()) | {"_diffusers_version", "_name_or_path"}
    arch = full_dc_config({k: v for k, v in dc.config.items() if k in keep})
    if arch["latent_channels"] != latent_channels:
        raise ValueError(f"{pretrained!r} decodes {arch['latent_channels']} latent channels, the AE "
                         f"produces {latent_channels}")
    return dc.decoder, arch


def decode_to_size(decoder: nn.Module, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Run the DC decoder, then bilinearly resize (align_corners False, no antialias) to `size`.

    DC-AE upsamples by 2**(stages-1) (32 for f32c32) while VGT latents have stride 28, hence the
    resize: a 16x16 latent decodes to 512 px and is resized to 448 (reference behaviour).
    """
    pixels = decoder(latents)
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
