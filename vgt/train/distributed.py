"""Where a training worker runs and how its modules are distributed: DDP, FSDP2 or one process.

The same code runs inside a Ray Train worker (process group set up by `TorchTrainer`: gloo on CPU,
NCCL on GPU) and in a plain process (`WorkerEnv()`: rank 0 of 1, no process group), which is what
the benchmarks and the in-process tests use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp2", "none")


@dataclass
class WorkerEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    strategy: str = "none"  # "ddp" | "fsdp2" | "none" (single process, no process group)
    compute_dtype: torch.dtype | None = None
    """The mixed-precision setting: the dtype forward passes compute in (weights and optimiser states stay
    fp32). None: bf16 on GPU, fp32 on CPU (what the tests compare bitwise); tests may ask for bf16 on CPU.
    It drives the autocast, FSDP2's parameter dtype and the attention kernel choice alike."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.compute_dtype is None:
            self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def mixed_precision(self) -> bool:
        return self.compute_dtype != torch.float32

    def autocast(self):
        """Autocast to `compute_dtype` (bf16 on GPU); a no-op in fp32 (CPU by default)."""
        if self.mixed_precision:
            return torch.autocast(self.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (a copy; identity in a single process)."""
        values = values.detach().to(self.device, torch.float64).clone()
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def checkpoint_activations(block: nn.Module) -> None:
    """Recompute `block`'s activations in backward (parameter names and state dicts unchanged)."""
    block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


def distribute(module: nn.Module, env: WorkerEnv, blocks: Iterable[nn.Module] = (),
               activation_checkpointing: bool = False) -> nn.Module:
    """Move to the worker's device and wrap: DDP, or FSDP2 with `blocks` as the sharding units."""
    module.to(env.device)
    blocks = list(blocks)
    if activation_checkpointing:
        for block in blocks:
            checkpoint_activations(block)
    if env.strategy == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if env.strategy == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Mixed precision (GPU): compute_dtype (bf16) parameters in compute with fp32 master weights and fp32
        # gradient reduction (docs/reference.md §6.4).
        mp = (MixedPrecisionPolicy(param_dtype=env.compute_dtype, reduce_dtype=torch.float32)
              if env.mixed_precision else MixedPrecisionPolicy())
        for block in blocks:
            fully_shard(block, mp_policy=mp)
        # The root's forward inputs stay as given (DDP does the same): with casting on, FSDP2 would round
        # the AR model's latents to bf16 before they become the flow loss's targets, which must stay fp32
        # (ar.fp32_flow). The root's own ops run under the autocast (`env.autocast()`), and its forward casts
        # explicitly where a layer needs the parameter dtype (`in_proj(tokens.to(self.dtype))`); the blocks
        # keep casting their inputs (hidden states are in the compute dtype there anyway).
        fully_shard(module, mp_policy=dataclasses.replace(mp, cast_forward_inputs=False))
    return module


@contextlib.contextmanager
def gathered(module: nn.Module):
    """Every FSDP2 unit unsharded, for calls that bypass `forward` (sampling); no-op otherwise.

    Units whose forward runs inside reshard again after it; the rest stay whole until the end.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield module
    finally:
        for unit in units:
            unit.reshard()


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


@contextlib.contextmanager
def _gradient_sync(module: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch."""
    if isinstance(module, nn.parallel.DistributedDataParallel) and not sync:
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def accumulate(module: nn.Module, env: WorkerEnv, micro_batches: list,
               loss_fn: Callable[[object, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
               ) -> dict[str, torch.Tensor]:
    """Backward over micro-batches (loss / n each); returns the loss terms averaged over them."""
    n = len(micro_batches)
    totals: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        with _gradient_sync(module, sync=i == n - 1):
            with env.autocast():
                loss, terms = loss_fn(batch, i)
            (loss / n).backward()
        for k, v in {"loss": loss, **terms}.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / n
    return totals


def clip_and_step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, scheduler,
                  max_norm: float) -> torch.Tensor:
    """Clip (max_norm <= 0: no clipping, norm still measured), step, advance the LR, zero grads."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def split_micro_batches(rows: list, parts: int) -> list[list]:
    """Equal consecutive micro-batches (len(rows) must divide evenly)."""
    size = len(rows) // parts
    return [rows[i * size:(i + 1) * size] for i in range(parts)]
