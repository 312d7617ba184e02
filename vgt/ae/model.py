"""`VGTAutoencoder`: the inference-side VGT-AE (docs/reference.md §1.2-1.3, §6.2).

pixels [B,3,H,W] in [-1,1] -> VLM vision tower + projector -> residual MLP bottleneck -> 32-channel
latent grid [B,32,H//28,W//28] (per-token LayerNorm, train-time noise) -> DC-AE decoder -> bilinear
resize -> [B,3,28*(H//28),28*(W//28)]. No teacher lives here (see `vgt.ae.training`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vgt.artifacts import load_model, save_component
from vgt.backbones import apply_attn_implementation, load_vision_encoder
from vgt.config import AEConfig, from_dict, to_dict

from .bottleneck import (ResidualMLPBlock, add_latent_noise, channel_layer_norm, down_mlp,
                         init_new_layers, tokens_to_grid)
from .decoder import build_decoder, decode_to_size, full_dc_config, load_pretrained_decoder

KIND = "ae"


class VGTAutoencoder(nn.Module):
    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.fingerprint: str | None = None  # set by save_pretrained / from_pretrained
        self.encoder = load_vision_encoder(self.config.backbone)
        # the VLM config as loaded (pretrained or built from hf_config), so a saved folder rebuilds exactly it
        self.config.backbone.hf_config = self.encoder.hf_config()
        dim = self.encoder.out_dim
        self.down_blocks = nn.ModuleList(ResidualMLPBlock(dim) for _ in range(self.config.num_res_blocks))
        self.down_mlp = down_mlp(dim, self.config.latent_channels)
        init_new_layers(self.down_blocks)
        init_new_layers(self.down_mlp)
        self.decoder = self._build_decoder()

    @classmethod
    def from_config(cls, config: AEConfig) -> "VGTAutoencoder":
        return cls(config)

    def train(self, mode: bool = True) -> "VGTAutoencoder":
        super().train(mode)
        self.encoder.eval()  # dropout / drop-path in the vision tower stay off (reference)
        return self

    @property
    def stride(self) -> int:
        return self.encoder.stride

    def use_attention(self, device: torch.device | str, compute_dtype: torch.dtype) -> str:
        """Set the vision tower's attention kernel for encoding on `device` in `compute_dtype` (the autocast
        or weight dtype; `ae.backbone.attn_implementation`, see `vgt.backbones.choose_attn_implementation`)."""
        return apply_attn_implementation(self, self.config.backbone.attn_implementation, device, compute_dtype, "AE")

    def _build_decoder(self) -> nn.Module:
        dec_cfg = self.config.decoder
        if dec_cfg.pretrained is None:
            decoder = build_decoder(dec_cfg.dc_config, self.config.latent_channels)
            dec_cfg.dc_config = full_dc_config(dec_cfg.dc_config)  # every AutoencoderDC argument it was built with
            return decoder
        decoder, arch = load_pretrained_decoder(dec_cfg.pretrained, self.config.latent_channels)
        dec_cfg.dc_config = arch  # the released config as loaded: a saved folder rebuilds it offline
        return decoder

    # -- encoder ---------------------------------------------------------------------------------
    def grid_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [B,3,H,W], got shape {tuple(pixels.shape)}")
        h, w = pixels.shape[-2] // self.stride, pixels.shape[-1] // self.stride
        if h < 1 or w < 1:
            raise ValueError(f"image {tuple(pixels.shape[-2:])} is smaller than the AE stride {self.stride}")
        return h, w

    def encode_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projector features [B, (H//28)*(W//28), D] (the self-distillation target space)."""
        self.grid_size(pixels)
        return self.encoder(pixels, input_range=(-1.0, 1.0))

    def features_to_latents(self, features: torch.Tensor, grid: tuple[int, int],
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """Bottleneck -> [B,C,h,w] fp32; channel LN if `encoder_norm`; noise only in train mode."""
        x = features
        for block in self.down_blocks:
            x = block(x)
        z = tokens_to_grid(self.down_mlp(x), *grid).float()
        if self.config.encoder_norm:
            z = channel_layer_norm(z)
        if self.training and self.config.noise_gamma > 0:
            z = add_latent_noise(z, self.config.noise_gamma, generator)
        return z

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """pixels [B,3,H,W] in [-1,1] -> latents [B,C,H//28,W//28]."""
        return self.features_to_latents(self.encode_features(pixels), self.grid_size(pixels), generator)

    # -- decoder ---------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B,C,h,w] -> pixels [B,3,28h,28w], nominally in [-1,1] (not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents [B,{self.config.latent_channels},h,w], got {tuple(latents.shape)}")
        size = (latents.shape[-2] * self.stride, latents.shape[-1] * self.stride)
        dtype = self.decoder.conv_in.weight.dtype  # latents are fp32; a bf16 decoder wants bf16 input
        return decode_to_size(self.decoder, latents.to(dtype), size)

    def forward(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.encode(pixels, generator))

    # -- artifacts -------------------------------------------------------------------------------
    def portable_config(self) -> dict:
        """The config dict saved with the weights: rebuilds this model offline (no hub ids)."""
        cfg = copy.deepcopy(self.config)
        cfg.backbone.pretrained = None
        cfg.decoder.pretrained = None
        return to_dict(cfg)

    def save_pretrained(self, folder: str) -> str:
        """Write `folder/config.json` + `folder/model.safetensors`; returns the content fingerprint."""
        self.fingerprint = save_component(folder, kind=KIND, config=self.portable_config(),
                                          state_dict=self.state_dict())
        return self.fingerprint

    @classmethod
    def from_pretrained(cls, folder: str) -> "VGTAutoencoder":
        """Load an AE folder (local or s3://), rebuilt from the backbone configs it stores; version,
        content fingerprint and config-vs-weights agreement are checked (`vgt.artifacts.load_model`).
        `folder` may be a Hugging Face Hub repo id, `owner/name[@revision]` (`vgt.hub.resolve`)."""
        from vgt.hub import resolve

        model, fp = load_model(resolve(folder), KIND, lambda config: cls(from_dict(AEConfig, config)))
        model.fingerprint = fp
        return model.eval()
