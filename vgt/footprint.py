"""Parameter counts built on the meta device (no memory, no weights, no hub), per-GPU training-memory
estimates, and the AR stage's memory plan; `vgt info` prints them for every preset.

Memory formula (per GPU, plain data parallel: every GPU holds everything), in bytes:

    2 * (trainable + frozen)   bf16 weights (frozen = the AE teacher copy / the frozen AE)
  + 2 * trainable              bf16 gradients
  + 4 * trainable              fp32 master weights
  + 8 * trainable              fp32 AdamW moments (exp_avg, exp_avg_sq)
  = 2 * frozen + 16 * trainable

Activations, the AE discriminator and allocator overhead are not included in that formula.

Activations (AR stage, `ar_activation_bytes`): the bytes autograd saves for backward in one forward
of one micro-batch, tensor by tensor as the transformers Qwen2 / Qwen2.5-VL decoder layers, the
query/latent adapters and the flow head keep them (distinct storages; parameters and autocast's
low-precision weight copies belong to the state). Per LLM layer and token, with c the compute dtype's
bytes, r the bytes of the parameters in forward (fp32 under DDP autocast, 16 bits under FSDP2's mixed
precision), q = heads x head_dim, kv = kv_heads x head_dim, S the sequence length:

    2 RMSNorms  2 ((4 + r) hidden + 4): fp32 input, normalised; + n c hidden, the matmul inputs (n = 5 casts,
                one per q, k, v, gate, up, when r > c; else n = 2 shared tensors)
    attention   sdpa c (4 q + S) + 4 heads: q, k and v repeated per head (padded rows), the output (=
                o_proj's input), a float mask, the logsumexp; flash c (3 q + 2 kv) + 4 heads; eager 4 c q
                + heads S (4 + c), fp32 probabilities and their c copy (one tensor in fp32)
    MLP         4 c intermediate: gate, up, act(gate), their product

plus the embedding ids, the rotary cos/sin, the final norm, the adapters, and per flow-head token
(batch x latent tokens x head_batch_mul) 11 c width per AdaLN block (on CUDA autocast runs LayerNorm
in fp32: 9 c + 8). Rows with padding are the worst case counted. With activation checkpointing each LLM
layer keeps only its arguments (its input, r hidden per token; the positions and the mask once) and
one layer is recomputed at a time in backward. tests/test_footprint.py checks the estimate against the
bytes actually saved (`saved_tensor_bytes`) on CPU, within 15 % (it matches to < 1 %).

The plan (`plan_ar_memory`) adds the state under the run's strategy (`ar_state_bytes`) and decides
`train.activation_checkpointing` when it is null (auto): on when the estimate without it exceeds the
usable device memory (all but `RESERVE`).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Iterable

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


def meta_models(cfg) -> tuple[nn.Module, nn.Module]:
    """(VGTAutoencoder, VGTModel) of a run config (`VGTConfig`) on the meta device: random-weight
    architectures (no hub), the tiny-bpe tokenizer (ids do not matter for shapes)."""
    from vgt.ae import VGTAutoencoder  # lazy: the AE and AR packages build on this one
    from vgt.ar.model import VGTModel
    from vgt.backbones.tokenizer import load_tokenizer

    ae_cfg = copy.deepcopy(cfg.ae)
    ae_cfg.backbone = _offline(ae_cfg.backbone)
    ae_cfg.decoder.pretrained = None  # dc_config carries the architecture
    ar_cfg = copy.deepcopy(cfg.ar)
    ar_cfg.backbone = _offline(ar_cfg.backbone)
    tok = load_tokenizer(dataclasses.replace(ar_cfg.backbone, tokenizer="tiny-bpe"))
    with torch.device("meta"):
        return (VGTAutoencoder.from_config(ae_cfg),
                VGTModel(ar_cfg, latent_dim=cfg.ae.latent_channels, tokenizer=tok))


def count_parameters(cfg, models: tuple[nn.Module, nn.Module] | None = None) -> dict[str, int]:
    """Parameters of every component of a run config (`VGTConfig`), built on the meta device
    (`models`: the `meta_models(cfg)` already built).

    Keys: ae.encoder (vision tower + projector), ae.bottleneck, ae.decoder, ar.llm, ar.head,
    ar.adapters (latent in/out projections and position queries), totals ae / ar, and ar.lora: the LoRA
    parameters of train.ar_pretrain.lora (at rank `LORA_RANK_SHOWN` when the preset tunes in full).
    """
    ae, ar = models or meta_models(cfg)
    counts = {"ae.encoder": _numel(ae.encoder), "ae.decoder": _numel(ae.decoder), "ae": _numel(ae),
              "ar.llm": _numel(ar.llm), "ar.head": _numel(ar.head), "ar": _numel(ar)}
    counts["ae.bottleneck"] = counts["ae"] - counts["ae.encoder"] - counts["ae.decoder"]
    counts["ar.adapters"] = counts["ar"] - counts["ar.llm"] - counts["ar.head"]
    lora = cfg.train.ar_pretrain.lora
    counts["ar.lora"] = lora_parameters(ar, lora.target_modules, lora.rank or LORA_RANK_SHOWN)
    return counts


LORA_RANK_SHOWN = 16
"""The LoRA rank `vgt info` shows beside full tuning when a preset does not set train.ar_pretrain.lora.rank."""


def lora_parameters(model: nn.Module, target_modules: Iterable[str], rank: int) -> int:
    """Parameters peft's LoRA adds to a VGTModel's LLM (real or on the meta device): r (in + out) for every
    Linear whose name ends in one of `target_modules` (A: in -> r, B: r -> out, no bias)."""
    targets = set(target_modules)
    return sum(rank * (m.in_features + m.out_features) for name, m in model.llm.model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


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
    pixels when latents are not precomputed). ar_lora: the AR stage under LoRA (`count_parameters`'
    ar.lora): the LLM frozen too, its adapters, the head, queries and projections trainable.
    """
    c = counts or count_parameters(cfg)
    return {"ae": _stage_memory(trainable=c["ae"], frozen=c["ae.encoder"]),
            "ar": _stage_memory(trainable=c["ar"], frozen=c["ae"]),
            "ar_lora": _stage_memory(trainable=c["ar"] - c["ar.llm"] + c["ar.lora"], frozen=c["ae"] + c["ar.llm"])}


# ---------------------------------------------------------------- AR activations and the memory plan

FP32 = 4
INDEX = 8  # int64 ids and gather indices
REPA_HIDDEN = 2048  # the REPA projector's hidden width (vgt.ar.flow_head.REPA_HIDDEN)
TIME_FEATURES = 256  # the flow head's sinusoidal time features (vgt.ar.flow_head.FREQ_DIM)
RESERVE = 0.10
"""Share of the device memory the plan leaves to what it does not count: the CUDA context, the caching
allocator's fragmentation, activation gradients in flight during backward, the data batch."""


@dataclasses.dataclass(frozen=True)
class ARActivationShape:
    """What sets the activation memory of one AR micro-batch: the model's dimensions and the batch's sizes."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    latent_dim: int
    head_width: int
    head_depth: int
    repa_dim: int  # the REPA projector's output width when REPA trains, else 0
    head_batch_mul: int
    batch: int
    prompt_tokens: int  # prompt ids per row after right-padding (at most ar.max_prompt_tokens)
    marker_tokens: int
    latent_tokens: int

    @property
    def seq(self) -> int:
        """LLM tokens per row: prompt, the `<img>` marker, then a query and a latent per latent token."""
        return self.prompt_tokens + self.marker_tokens + 2 * self.latent_tokens

    @property
    def head_tokens(self) -> int:
        return self.batch * self.latent_tokens * self.head_batch_mul


def ar_activation_shape(model: nn.Module, batch: int, latent_tokens: int,
                        prompt_tokens: int | None = None) -> ARActivationShape:
    """The micro-batch of `batch` samples for `model` (a VGTModel, real or on the meta device) with
    `latent_tokens` per image; `prompt_tokens` defaults to the worst case, `ar.max_prompt_tokens`."""
    text, cfg = model.llm.model.config, model.config
    return ARActivationShape(
        layers=model.llm.num_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
        heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        latent_dim=model.latent_dim, head_width=cfg.head.width, head_depth=cfg.head.depth,
        repa_dim=cfg.head.repa_dim if cfg.repa_weight > 0 else 0, head_batch_mul=cfg.head_batch_mul, batch=batch,
        prompt_tokens=cfg.max_prompt_tokens if prompt_tokens is None else prompt_tokens,
        marker_tokens=len(model.marker_ids), latent_tokens=latent_tokens)


def ar_activation_bytes(shape: ARActivationShape, compute_dtype: torch.dtype = torch.bfloat16,
                        param_dtype: torch.dtype = torch.float32, attention: str = "flash_attention_2",
                        device_type: str = "cuda", checkpointing: bool = False) -> dict[str, int]:
    """Bytes saved for backward by one forward of the micro-batch `shape` (formulas: module docstring).

    compute_dtype: what the matmuls run in (bf16 under GPU autocast); param_dtype: the parameters' dtype in
    forward (fp32 under DDP, the compute dtype under FSDP2's mixed precision); attention: the LLM's kernel
    ("sdpa", "flash_attention_2", "eager"); device_type "cuda": autocast runs LayerNorm in fp32.
    Parts: layers (all LLM layers; with `checkpointing` only their inputs), recompute (one layer rebuilt in
    backward, with `checkpointing`), llm (embedding ids, rotary tables, final norm; with `checkpointing` the
    positions and mask the layers keep), adapters (latent projection, query/latent gathers, out_proj's input),
    head (flow head and loss), total.
    """
    s, c, r = shape, compute_dtype.itemsize, param_dtype.itemsize
    tokens, d = s.batch * s.seq, s.hidden
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    # each RMSNorm keeps its fp32 input, the normalised tensor (r) and its output; autocast casts an fp32
    # output once per consumer (q, k, v; gate, up), a 16-bit one is shared
    norms = 2 * ((FP32 + r) * d + FP32) + c * d * (5 if r > c else 2)
    if attention == "eager":  # q, k and v repeated to every head, the output; softmax (fp32, and a c copy)
        attn = 4 * c * q + s.heads * s.seq * (FP32 + (c if c < FP32 else 0))
    elif attention == "sdpa":  # padded rows: q, k and v repeated to every head, the output, a float copy of
        attn = 4 * c * q + FP32 * s.heads + s.seq * c  # the mask per layer, the fp32 logsumexp
    else:  # flash, padded rows: unpadded q, k, v, its output and the re-padded one (o_proj's input), logsumexp
        attn = c * (3 * q + 2 * kv) + FP32 * s.heads
    mlp = 4 * c * s.intermediate
    layer = tokens * (norms + attn + mlp)
    llm = (s.batch * (s.prompt_tokens + s.marker_tokens) * INDEX  # embedding ids
           + 2 * tokens * s.head_dim * r  # the rotary cos, sin
           + tokens * ((FP32 + r) * d + FP32))  # the final norm
    images = s.batch * s.latent_tokens
    adapters = (images * s.latent_dim * c  # in_proj's input
                + (images + s.latent_tokens) * d * r + images * INDEX  # latents + pos, queries, the order
                + images * d * c)  # out_proj's input: the hidden states at the queries
    w, ln32 = s.head_width, device_type == "cuda" and c < FP32
    block = ((9 * c + 2 * FP32) * w if ln32 else 11 * c * w) + 2 * FP32  # + LayerNorm mean, rstd
    final = ((3 * c + 2 * FP32) * w if ln32 else 5 * c * w) + 2 * FP32
    head = s.head_tokens * (d * c + TIME_FEATURES * c + 3 * c * w  # condition, time features and MLP, y
                            + s.latent_dim * c + s.head_depth * block + final  # x_t, the blocks, the last layer
                            + s.latent_dim * FP32)  # the loss's fp32 difference
    if s.repa_dim:  # projector W -> 2048 -> 2048 -> repa_dim (SiLUs) on every draw; cosine loss on the first
        head += s.head_tokens * (4 * REPA_HIDDEN + s.repa_dim) * c + images * s.repa_dim * 3 * FP32
    if checkpointing:  # the layers keep their arguments: inputs, and once the position ids and the mask
        mask = {"sdpa": s.seq, "eager": s.seq * r}.get(attention, INDEX)  # bool / additive 4-D, or the 2-D one
        llm += tokens * (INDEX + mask)
    parts = {"layers": s.layers * (tokens * d * r if checkpointing else layer),
             "recompute": layer if checkpointing else 0, "llm": llm, "adapters": adapters, "head": head}
    return {**parts, "total": sum(parts.values())}


def ar_state_bytes(trainable: int, frozen: int, layer_params: int, layers: int, strategy: str, world: int = 1,
                   compute_dtype: torch.dtype = torch.bfloat16, base: int = 0,
                   layer_trainable: int | None = None) -> dict[str, int]:
    """Per-GPU bytes of the AR stage's parameters, gradients, optimiser state and EMA under `strategy`.

    ddp / none: fp32 weights, gradients, AdamW moments and EMA shadows (4 + 4 + 8 + 4 bytes per trainable
    parameter) on every GPU, DDP's gradient buckets (4 more, ddp only) and autocast's 16-bit weight copies kept
    for backward (2, when computing in 16 bits). fsdp2: those fp32 parts sharded over `world`, plus unsharded
    compute copies: the root unit's parameters and gradients (everything outside the LLM layers, whole from
    forward to the end of backward) and two layers in flight (parameters and gradients). `frozen` (the AE) is
    fp32 and whole on every GPU. `base`: frozen parameters inside the AR model (the LLM's own weights under
    LoRA): fp32 weights (sharded under fsdp2) and compute copies, but no gradients, optimiser state or EMA;
    `layer_trainable`: the trainable part of `layer_params` (default: all of it).
    """
    c = compute_dtype.itemsize
    layer_trainable = layer_params if layer_trainable is None else layer_trainable
    if strategy == "fsdp2":
        shard, base_shard = -(-trainable // world), -(-base // world)
        unsharded = c if c < FP32 else FP32  # FSDP2 gathers parameters in its param dtype
        root, root_trainable = trainable + base - layers * layer_params, trainable - layers * layer_trainable
        parts = {"weights": FP32 * (shard + base_shard), "grads": FP32 * shard, "optimizer": 2 * FP32 * shard,
                 "ema": FP32 * shard,
                 "unsharded": unsharded * (root + root_trainable + 2 * layer_params + 2 * layer_trainable)}
    else:
        parts = {"weights": FP32 * (trainable + base), "grads": FP32 * trainable * (2 if strategy == "ddp" else 1),
                 "optimizer": 2 * FP32 * trainable, "ema": FP32 * trainable,
                 "unsharded": c * (trainable + base) if c < FP32 else 0}
    parts["frozen"] = FP32 * frozen
    return {**parts, "total": sum(parts.values())}


@dataclasses.dataclass
class MemoryPlan:
    """The AR stage's per-GPU memory estimate and the activation-checkpointing decision (`plan_ar_memory`)."""

    shape: ARActivationShape
    state: dict[str, int]
    activations: dict[str, int]  # without activation checkpointing
    activations_ckpt: dict[str, int]  # with it
    device_bytes: int
    setting: bool | None  # train.activation_checkpointing: None = decided here
    where: str  # e.g. "cuda, fsdp2 x 8, bfloat16 compute, flash_attention_2"

    @property
    def usable_bytes(self) -> int:
        return int(self.device_bytes * (1 - RESERVE))

    def total(self, checkpointing: bool) -> int:
        return self.state["total"] + (self.activations_ckpt if checkpointing else self.activations)["total"]

    @property
    def checkpointing(self) -> bool:
        """The setting when given; else on exactly when the estimate without checkpointing does not fit."""
        return self.setting if self.setting is not None else self.total(False) > self.usable_bytes

    def fits(self, checkpointing: bool | None = None) -> bool:
        return self.total(self.checkpointing if checkpointing is None else checkpointing) <= self.usable_bytes

    def describe(self) -> str:
        """One line for the training log: the decision, why, and the numbers it rests on."""
        ckpt = self.checkpointing
        how = "set by train.activation_checkpointing" if self.setting is not None else "auto"
        verdict = "" if self.fits() else " -- DOES NOT FIT: lower the batch size or shard (train.strategy=fsdp2)"

        def gib(n: int) -> str:
            return f"{n / _GIB:.2f}"

        return (f"activation checkpointing {'on' if ckpt else 'off'} ({how}): estimated per GPU "
                f"{gib(self.total(False))} GiB without / {gib(self.total(True))} GiB with (state "
                f"{gib(self.state['total'])} + activations {gib(self.activations['total'])} / "
                f"{gib(self.activations_ckpt['total'])} GiB, {self.shape.batch} samples x {self.shape.seq} tokens) "
                f"vs {gib(self.usable_bytes)} GiB usable of {gib(self.device_bytes)} GiB ({self.where}){verdict}")


def plan_ar_memory(shape: ARActivationShape, trainable: int, frozen: int, layer_params: int, *, strategy: str,
                   world: int, compute_dtype: torch.dtype, attention: str, device_type: str, device_bytes: int,
                   setting: bool | None = None, base: int = 0, layer_trainable: int | None = None) -> MemoryPlan:
    """State (`ar_state_bytes`) + activations (`ar_activation_bytes`) of the AR stage on one GPU, with and
    without activation checkpointing, against `device_bytes`; `setting` is train.activation_checkpointing."""
    mixed = compute_dtype.itemsize < FP32
    param_dtype = compute_dtype if strategy == "fsdp2" and mixed else torch.float32
    acts = {ckpt: ar_activation_bytes(shape, compute_dtype, param_dtype, attention, device_type, ckpt)
            for ckpt in (False, True)}
    state = ar_state_bytes(trainable, frozen, layer_params, shape.layers, strategy, world, compute_dtype, base,
                           layer_trainable)
    where = f"{device_type}, {strategy} x {world}, {str(compute_dtype).removeprefix('torch.')} compute, {attention}"
    return MemoryPlan(shape, state, acts[False], acts[True], device_bytes, setting, where)


def device_memory_bytes(device: torch.device) -> int:
    """Memory of a training worker's device: the GPU's; on CPU the host's RAM shared by the node's workers
    (LOCAL_WORLD_SIZE, which Ray Train and torchrun set)."""
    import os

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def saved_tensor_bytes(fn: Callable[[], object], module: nn.Module, inputs_of: Iterable[nn.Module] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn()` runs: what
    `ar_activation_bytes` estimates. `module`'s parameters, and tensors computed from one parameter alone
    (autocast's low-precision weight copies), are the state's and left out. The arguments of the modules in
    `inputs_of` count too: activation-checkpointed layers keep their inputs outside autograd's hooks."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, torch.Tensor] = {}  # holding the tensors keeps their storages' addresses unique

    def keep(t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and not _from_one_parameter(t):
                kept.setdefault(ptr, t)

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep(t)
        return t

    def keep_inputs(_, args: tuple, kwargs: dict) -> None:
        stack = [*args, *kwargs.values()]
        while stack:
            x = stack.pop()
            if isinstance(x, (tuple, list)):
                stack.extend(x)
            else:
                keep(x)

    hooks = [m.register_forward_pre_hook(keep_inputs, with_kwargs=True) for m in inputs_of]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for h in hooks:
            h.remove()
    return sum(t.untyped_storage().nbytes() for t in kept.values())


def _from_one_parameter(t: torch.Tensor) -> bool:
    """True for a tensor made from a single parameter by one-input ops (casts, transposes)."""
    fn = t.grad_fn
    while fn is not None:
        inputs = [f for f, _ in fn.next_functions if f is not None]
        if len(inputs) != 1:
            return False
        fn = inputs[0]
        if type(fn).__name__ == "AccumulateGrad":
            return True
    return False
