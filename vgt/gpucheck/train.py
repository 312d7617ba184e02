"""The AR training step on the device: one process (autocast) and FSDP2 in a 1-process group, the memory
plan against the measured peak, and bf16 against fp32 losses on the same weights and batch."""
from __future__ import annotations

import contextlib
import math
import socket

import torch
import torch.distributed as dist

from vgt.ar.model import VGTModel
from vgt.footprint import ar_activation_shape, device_memory_bytes, plan_ar_memory
from vgt.train.data import seeded
from vgt.train.distributed import WorkerEnv, accumulate, clip_and_step, distribute
from vgt.train.ema import EMA
from vgt.train.optim import adamw, param_groups, scheduler

from .context import Check, relative_error

CAPTION = "a photograph of a red bicycle leaning against a blue brick wall on a sunny street"
BF16_RTOL = 2e-2  # README "tolerance policy": bf16 on GPU
WARMUP_STEPS = 2  # left out of the step time (allocator, kernel selection, first-call compilation)


def build_model(check: Check, tokenizer=None) -> VGTModel:
    """The AR model with seed-0 random weights, built on the device (the same weights every call).

    Tensors the model initialises to zero (the flow head's adaLN-zero modulations and output layer, biases)
    get N(0, 0.02) too: with a zero output layer the loss would not depend on the LLM at all, and bf16 and
    fp32 losses would agree by construction."""
    torch.manual_seed(0)
    with check.device:
        model = VGTModel(check.cfg.ar, latent_dim=check.cfg.ae.latent_channels, tokenizer=tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.to(check.device)


def batch_latents(check: Check, batch: int) -> torch.Tensor:
    """Unit-variance latents (what the AE's channel LayerNorm produces), fp32 on the device."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, check.cfg.ae.latent_channels, *check.grid, generator=g).to(check.device)


def matmul_params(module: torch.nn.Module) -> int:
    """Weights that multiply activations (matrices); biases and norm scales do no matmul."""
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2)


def train_flops(model: VGTModel, batch: int, seq: int, latent_tokens: int) -> dict[str, float]:
    """Model FLOPs of one training step, forward + backward = 3 x forward (recomputation not counted):
    dense: 6 x matrix parameters x the tokens each sees (LLM layers: every token; in/out projections: the
    latent tokens; flow head: latent tokens x head_batch_mul); the embedding lookup does no matmul.
    attention: scores and weighted values over the causal half, 6 x layers x heads x head_dim x seq^2 per row."""
    text = model.llm.model.config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    images = batch * latent_tokens
    dense = (matmul_params(model.llm.model.layers) * batch * seq
             + (matmul_params(model.in_proj) + matmul_params(model.out_proj)) * images
             + matmul_params(model.head) * images * model.config.head_batch_mul)
    attention = len(model.llm.model.layers) * text.num_attention_heads * head_dim * seq * seq * batch
    return {"dense": 6.0 * dense, "attention": 6.0 * attention, "total": 6.0 * (dense + attention)}


@contextlib.contextmanager
def process_group(device: torch.device):
    """A 1-process group (NCCL on CUDA, gloo on CPU) on a free loopback port, for FSDP2; torn down after."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def memory_plan(check: Check, model: VGTModel, env: WorkerEnv, attention: str, prompt_tokens: int):
    """The AR stage's plan (vgt.footprint) for this batch, with checkpointing decided as training decides it
    (train.activation_checkpointing; null: on when the estimate without it does not fit the device). No
    frozen AE here (the batch is latents)."""
    shape = ar_activation_shape(model, check.train_batch, check.grid[0] * check.grid[1], prompt_tokens)
    return plan_ar_memory(
        shape, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad), frozen=0,
        layer_params=sum(p.numel() for p in model.llm.model.layers[0].parameters()), strategy=env.strategy,
        world=1, compute_dtype=env.compute_dtype, attention=attention, device_type=check.device.type,
        device_bytes=device_memory_bytes(check.device), setting=check.cfg.train.activation_checkpointing)


def train_run(check: Check, strategy: str, tokenizer) -> dict:
    """`check.train_steps` AR steps (AdamW, warm-up + cosine, clipping, EMA) under `strategy` ("none": one
    process with autocast; "fsdp2": bf16 parameters, fp32 master weights and reduction)."""
    s = check.cfg.train.ar_pretrain
    env = WorkerEnv(0, 1, check.device, strategy, check.compute_dtype)
    model = build_model(check, tokenizer).train()
    attention = model.use_attention(check.device, check.compute_dtype)
    captions = [CAPTION] * check.train_batch  # one caption: no padding, every token counts
    latents = batch_latents(check, check.train_batch)
    prompt = len(model.tokenizer(model.prompt_texts(captions[:1]))["input_ids"][0])
    plan = memory_plan(check, model, env, attention, prompt)
    check.reset_peak()
    wrapped = distribute(model, env, list(model.llm.model.layers), plan.checkpointing)
    opt = adamw(param_groups(model.named_parameters(), s.lr, s.weight_decay), s.lr, s.betas)
    sched = scheduler(opt, s.warmup_steps, s.steps, s.end_lr / s.lr)
    ema = EMA(model, s.ema_decay, s.ema_start)
    losses = []

    def step() -> None:
        gen = seeded(0, len(losses))
        terms = accumulate(wrapped, env, [None],
                           lambda _, __: (wrapped(captions, latents=latents, generator=gen)["loss"], {}))
        clip_and_step(list(wrapped.parameters()), opt, sched, s.grad_clip)
        ema.update(len(losses) + 1)
        losses.append(float(terms["loss"]))

    seconds = check.seconds(step, repeats=check.train_steps, warmup=WARMUP_STEPS)
    seq = prompt + len(model.marker_ids) + 2 * check.grid[0] * check.grid[1]
    flops = train_flops(model, check.train_batch, seq, check.grid[0] * check.grid[1])["total"]
    out = {"strategy": strategy, "attention": attention, "compute_dtype": str(check.compute_dtype),
           "batch": check.train_batch, "seq": seq, "prompt_tokens": prompt, "steps": len(losses),
           "ms_per_step": 1000 * seconds, "tokens_per_s": check.train_batch * seq / seconds,
           "samples_per_s": check.train_batch / seconds, "tflops_per_s": flops / seconds / 1e12,
           "mfu": flops / seconds / (check.peak_tflops * 1e12) if check.peak_tflops else None,
           "activation_checkpointing": plan.checkpointing, "plan": plan.describe(),
           "planned_gib": plan.total(plan.checkpointing) / 2**30, "peak_gib": check.peak_gib(),
           # what the plan leaves to what it does not count (allocator, optimiser temporaries, CUDA context)
           "reserve_gib": (plan.device_bytes - plan.usable_bytes) / 2**30,
           "params": sum(p.numel() for p in model.parameters()), "losses": losses}
    del wrapped, model, opt, ema
    check.reset_peak()
    return out


@torch.no_grad()
def loss_agreement(check: Check, tokenizer) -> dict:
    """The training loss of the same weights and batch (same CFG dropout, orders, timesteps and noise) in fp32
    and under bf16 autocast (and the bf16 attention kernel): they must agree to bf16's tolerance."""
    model = build_model(check, tokenizer).eval()
    batch = min(check.train_batch, 8)
    captions = [CAPTION, "a cat"] * (batch // 2) + [CAPTION] * (batch % 2)  # right-padded rows too
    latents = batch_latents(check, batch)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        env = WorkerEnv(0, 1, check.device, "none", dtype)
        attention = model.use_attention(check.device, dtype)
        with env.autocast():
            loss = float(model(captions, latents=latents, generator=seeded(0, "agreement"))["loss"])
        out[name] = {"loss": loss, "attention": attention}
    out["relative_difference"] = abs(out["bf16"]["loss"] - out["fp32"]["loss"]) / abs(out["fp32"]["loss"])
    out["ok"] = out["relative_difference"] <= BF16_RTOL
    del model
    return out


def run_training(check: Check, tokenizer) -> dict:
    """The training section: both strategies, their agreement on the first step's loss, and bf16 vs fp32."""
    plain = train_run(check, "none", tokenizer)
    with process_group(check.device):
        fsdp = train_run(check, "fsdp2", tokenizer)
    finite = all(math.isfinite(x) for x in plain["losses"] + fsdp["losses"])
    first = abs(fsdp["losses"][0] - plain["losses"][0]) / abs(plain["losses"][0])
    agreement = loss_agreement(check, tokenizer)
    where = "1 GPU" if check.cuda else "CPU"
    for r, label in ((plain, f"{where}, one process, autocast"), (fsdp, f"{where}, FSDP2 1-process group")):
        case = f"{label}, batch {r['batch']} x {r['seq']} tokens, {r['attention']}"
        check.row("AR train step", case, round(r["ms_per_step"], 1), "ms")
        check.row("AR train tokens/s", case, round(r["tokens_per_s"]), "tokens/s")
        check.row("AR train MFU", case, None if r["mfu"] is None else round(r["mfu"], 3), "",
                  note="" if r["mfu"] is not None else check.peak_source)
        if r["peak_gib"] is not None:
            check.row("AR train memory", f"{case}, checkpointing {'on' if r['activation_checkpointing'] else 'off'}",
                      round(r["peak_gib"], 2), "GiB peak", r["peak_gib"] <= r["planned_gib"] + r["reserve_gib"],
                      f"planned {r['planned_gib']:.2f} GiB + its reserve {r['reserve_gib']:.2f} GiB")
    check.row("FSDP2 vs one process", "first-step loss, relative difference", round(first, 5), "",
              first <= BF16_RTOL and finite, "" if finite else "a loss is not finite")
    check.row("bf16 vs fp32 loss", f"same weights and batch ({agreement['bf16']['attention']} vs "
              f"{agreement['fp32']['attention']})", round(agreement["relative_difference"], 5), "",
              agreement["ok"], f"fp32 {agreement['fp32']['loss']:.4f}, bf16 {agreement['bf16']['loss']:.4f}")
    return {"one_process": plain, "fsdp2": fsdp, "fsdp2_first_loss_relative_difference": first,
            "losses_finite": finite, "bf16_vs_fp32": agreement}
