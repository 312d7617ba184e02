"""Named run configurations: `get_preset(name, overrides=None) -> VGTConfig`.

`tiny` / `tiny-qwen`: random tiny VLMs (vgt.backbones.tiny_configs), 112 px, a 4x4 latent grid,
a few-step schedule; CPU seconds end to end, no files, no network. The real presets carry the real
architecture numbers of the pretrained models they load (vgt.backbones.real_configs) and the
reference recipe (docs/reference.md §1.5, §3.2: the defaults in vgt.config).
"""
from __future__ import annotations

import copy
import difflib
from typing import Callable

from vgt.backbones.real_configs import DC_AE_F32C32_SANA, INTERNVL3_1B, INTERNVL3_2B, QWEN25VL_3B, dc_ae_config
from vgt.backbones.tiny_configs import TINY_DC_AE, TINY_INTERNVL, TINY_QWEN
from vgt.config import (AEConfig, AEStageConfig, ARConfig, ARStageConfig, BackboneConfig, DataConfig,
                        ConfigError, DecoderConfig, FlowHeadConfig, SampleConfig, TrainConfig, VGTConfig,
                        apply_overrides)


def _tiny_train() -> TrainConfig:
    """A few steps of every stage; perceptual losses off (they need local weight files)."""
    ae = dict(steps=4, batch_size=2, warmup_steps=1, lpips_weight=0.0, convnext_weight=0.0)
    ar = dict(steps=4, batch_size=2, warmup_steps=1, ema_start=2)
    return TrainConfig(
        ae_stage1=AEStageConfig(**ae, encoder_norm=False, noise_gamma=0.0, distill_weight=1.0, disc_start=2,
                                disc_lr=3e-4),
        ae_stage2=AEStageConfig(**ae, lr=1e-4, end_lr=1e-5, disc_start=2),
        ar_pretrain=ARStageConfig(**ar),
        ar_sft=ARStageConfig(**{**ar, "steps": 2}, lr=1e-4, end_lr=5e-5),
        checkpoint_every=2, log_every=1, sample_every=2)


def _tiny(name: str, family: str, hf_config: dict, timeshift: float | None) -> VGTConfig:
    def backbone() -> BackboneConfig:
        return BackboneConfig(family=family, pretrained=None, hf_config=copy.deepcopy(hf_config),
                              tokenizer="tiny-bpe")

    return VGTConfig(
        name=name,
        ae=AEConfig(backbone=backbone(), decoder=DecoderConfig(dc_config=copy.deepcopy(TINY_DC_AE))),
        ar=ARConfig(backbone=backbone(), head=FlowHeadConfig(width=64, depth=2, timeshift=timeshift),
                    max_grid=8, max_prompt_tokens=64),
        data=DataConfig(resolution=112),
        train=_tiny_train(),
        sample=SampleConfig(num_steps=4, parallel_tokens=4))


def _demo() -> VGTConfig:
    """`vgt demo` on synthetic shapes (README "Calibration"): a 4-layer 192-wide LLM (1.7M
    parameters + 0.1M projections/queries), a 224 x 4 flow head (1.2M), the tiny vision tower and a
    5-stage DC-AE decoder (0.3M), 112 px, 4x4x32 latents.
    One AE stage with the channel LayerNorm on (the AR stage samples normalised latents) and VGT's
    latent noise (0.2: the generator learns colour faster on it, README "Why the demo learns
    slowly"), MSE only (no perceptual weights, no GAN). Step counts fit the demo's default budget on 2 cores."""
    hf_config = copy.deepcopy(TINY_INTERNVL)
    hf_config["text_config"].update(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2)
    cfg = _tiny("demo", "internvl", hf_config, timeshift=1.4)
    # per CPU-minute the best AE of the calibration: 5 stages decode 4x4 to 64 px (resized to 112),
    # 1.6x cheaper per step than the f32 layout at the same quality per step
    layers = [0, 1, 1, 1, 1]
    cfg.ae.decoder.dc_config = dc_ae_config([16, 32, 32, 64, 64], encoder_layers=layers, decoder_layers=layers,
                                            attention_head_dim=8)
    # Flow-loss time shift 3 (the reference's InternVL value, 1.4, stays the other presets'): more
    # training draws at the noisy end, where the head takes the layout from its condition alone; the
    # quality run at 1600 / 1800 steps scored colour 0.89, count 0.43 against 0.81, 0.32 with 1.4
    # (README "Why the demo learns slowly"). Sampling does not read it.
    cfg.ar.head = FlowHeadConfig(width=224, depth=4, timeshift=3.0)
    cfg.data.image_format = "png"  # flat colours: lossless
    cfg.train = TrainConfig(
        ae_stage1=AEStageConfig(steps=1600, batch_size=8, lr=1e-3, end_lr=1e-4, warmup_steps=20, encoder_lr_mult=1.0,
                                encoder_norm=True, noise_gamma=0.2, distill_weight=0.0, lpips_weight=0.0,
                                convnext_weight=0.0, gan_weight=0.0, disc_start=10**9),
        # EMA over ~the last 100 steps: a 0.999 average lags a run of a few hundred steps
        ar_pretrain=ARStageConfig(steps=3000, batch_size=32, lr=1e-3, end_lr=1e-4, warmup_steps=50,
                                  ema_decay=0.99, ema_start=100),
        checkpoint_every=500, log_every=10, sample_every=0)
    # one token per LLM step: 16 LLM forwards per image, ~0.08 better colour and count than 4
    cfg.sample = SampleConfig(guidance_scale=3.0, cfg_schedule="constant", num_steps=16, parallel_tokens=1)
    return cfg


DC_AE_SANA_ID = "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"
# transformers-native checkpoints (InternVLForConditionalGeneration; no remote code) and their tokenizers
_HUB = {"internvl3-1b": ("internvl", "OpenGVLab/InternVL3-1B-hf", INTERNVL3_1B),
        "internvl3-2b": ("internvl", "OpenGVLab/InternVL3-2B-hf", INTERNVL3_2B),
        "qwen25vl-3b": ("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", QWEN25VL_3B)}


def _hub_backbone(key: str) -> BackboneConfig:
    family, repo, hf_config = _HUB[key]
    return BackboneConfig(family=family, pretrained=repo, hf_config=copy.deepcopy(hf_config), tokenizer=repo)


def _real(name: str, ae_vlm: str, ar_vlm: str, timeshift: float | None) -> VGTConfig:
    """Reference recipe (docs/reference.md §1.5 / §3.2 values are the vgt.config defaults) at 448 px: AE on
    `ae_vlm`'s vision tower + projector with the DC-AE SANA decoder, AR on `ar_vlm`'s whole LLM,
    flow head width 1536 x 12 blocks (docs/reference.md §2.1)."""
    return VGTConfig(
        name=name,
        ae=AEConfig(backbone=_hub_backbone(ae_vlm),
                    decoder=DecoderConfig(pretrained=DC_AE_SANA_ID, dc_config=copy.deepcopy(DC_AE_F32C32_SANA))),
        ar=ARConfig(backbone=_hub_backbone(ar_vlm), head=FlowHeadConfig(width=1536, depth=12, timeshift=timeshift)),
        data=DataConfig(resolution=448))


_PRESETS: dict[str, Callable[[], VGTConfig]] = {
    "tiny": lambda: _tiny("tiny", "internvl", TINY_INTERNVL, timeshift=1.4),
    "tiny-qwen": lambda: _tiny("tiny-qwen", "qwen2_5_vl", TINY_QWEN, timeshift=None),
    # what `vgt demo` trains on synthetic shapes in its default budget (README "Calibration")
    "demo": _demo,
    # VGT-InternVL3 "0.6B": AE and AR both on InternVL3-1B
    "internvl3-1b": lambda: _real("internvl3-1b", "internvl3-1b", "internvl3-1b", timeshift=1.4),
    # VGT-InternVL3 "1.6B": the same InternVL3-1B-based AE; AR on InternVL3-2B's LLM (docs/reference.md §1.1)
    "internvl3-2b": lambda: _real("internvl3-2b", "internvl3-1b", "internvl3-2b", timeshift=1.4),
    # VGT-Qwen2.5-VL: Qwen vision tower + merger AE, AR on its LLM, no timeshift (docs/reference.md §2.1)
    "qwen25vl-3b": lambda: _real("qwen25vl-3b", "qwen25vl-3b", "qwen25vl-3b", timeshift=None),
}


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str, overrides: list[str] | dict | None = None) -> VGTConfig:
    """A fresh config for preset `name`, with dotted `overrides` (["ar.head.depth=4"] or a dict)."""
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(_PRESETS)}){hint}")
    cfg = _PRESETS[name]()
    return apply_overrides(cfg, overrides) if overrides else cfg
