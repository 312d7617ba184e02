"""Training checkpoints: weights, EMA, optimiser, scheduler, step, data position, RNG; no pickle.

Folder written by the ranks together (Ray merges the ranks' files into one checkpoint folder):
  state.json                  rank 0: step, world size, strategy, data position, LR schedulers,
                              optimiser param groups (everything that is not a tensor)
  rng-rank{R}.safetensors     every rank: its torch CPU (and CUDA) generator state
  DDP / one process, rank 0:  model-{name}.safetensors, ema-{name}.safetensors, optim-{name}.safetensors
  FSDP2, every rank:          dcp/ (torch.distributed.checkpoint, Hugging Face safetensors layout:
                              each rank writes its own shard, metadata in the safetensors headers)

Tensors are keyed `{kind}.{name}.{fqn}[.{optimizer state key}]`, where `name` is the stage's name for
a trained module ("model", "disc", ...) and `fqn` the unwrapped parameter name, so the same
folder layout serves every stage. Resume needs the same world size (checked here, and by the
driver before it starts anything).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vgt.train.distributed import WorkerEnv, unwrap
from vgt.train.ema import EMA
from vgt.errors import VGTError

STATE_FILE = "state.json"


@dataclass
class Trainables:
    """What a stage trains, keyed by a short name shared by module, optimiser, scheduler, EMA."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    emas: dict[str, EMA] = field(default_factory=dict)


class TrainInputError(VGTError):
    """A run that cannot start as asked: bad flags, or a checkpoint it cannot continue from."""


def _live_state(t: Trainables) -> tuple[dict[str, dict], dict[str, dict]]:
    """(model state dicts, optimiser state dicts) by name, with optimiser state initialised."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    models, optims = {}, {}
    for name, module in t.modules.items():
        opt = t.optimizers.get(name)
        if opt is None:
            models[name] = unwrap(module).state_dict()
            continue
        models[name], optims[name] = get_state_dict(module, opt)
    return models, optims


def _flat(models: dict, optims: dict, emas: dict[str, EMA]) -> dict[str, torch.Tensor]:
    flat = {}
    for name, sd in models.items():
        flat.update({f"model.{name}.{k}": v for k, v in sd.items()})
    for name, ema in emas.items():
        flat.update({f"ema.{name}.{k}": v for k, v in ema.shadow.items()})
    for name, osd in optims.items():
        for fqn, state in osd["state"].items():
            flat.update({f"optim.{name}.{fqn}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return flat


def _rng_state(env: WorkerEnv) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if env.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    return state


def save(folder: str, t: Trainables, env: WorkerEnv, step: int, extra: dict) -> None:
    """Write this rank's part of the checkpoint for `step` into the local `folder`."""
    os.makedirs(folder, exist_ok=True)
    models, optims = _live_state(t)
    flat = _flat(models, optims, t.emas)
    save_file(_rng_state(env), os.path.join(folder, f"rng-rank{env.rank}.safetensors"))
    if env.strategy == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        dcp.save(flat, storage_writer=HuggingFaceStorageWriter(os.path.join(folder, "dcp"), save_distributed=True))
    elif env.is_main:
        for kind in ("model", "ema", "optim"):
            for name in t.modules:
                part = {k: v.detach().cpu().contiguous() for k, v in flat.items()
                        if k.startswith(f"{kind}.{name}.")}
                if part:
                    save_file(_unalias(part), os.path.join(folder, f"{kind}-{name}.safetensors"))
    if env.is_main:
        state = {"step": step, "world_size": env.world, "strategy": env.strategy,
                 "schedulers": {n: s.state_dict() for n, s in t.schedulers.items()},
                 "param_groups": {n: o["param_groups"] for n, o in optims.items()}, **extra}
        with open(os.path.join(folder, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)


def read_state(folder: str) -> dict:
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


def check_compatible(state: dict, world: int, strategy: str) -> None:
    if state["world_size"] != world:
        raise TrainInputError(
            f"the checkpoint at step {state['step']} was written by {state['world_size']} workers; this run "
            f"has {world}. The data order depends on the world size, so resuming would silently "
            f"change it: rerun with --num-workers {state['world_size']}, or start a new run folder.")
    if state["strategy"] != strategy:
        raise TrainInputError(f"the checkpoint was written with train.strategy={state['strategy']}; "
                          f"this run uses {strategy}")


def load(folder: str, t: Trainables, env: WorkerEnv) -> dict:
    """Restore everything `save` wrote into the live objects; returns state.json."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = read_state(folder)
    check_compatible(state, env.world, env.strategy)
    models, optims = _live_state(t)
    flat = _flat(models, optims, t.emas)
    if env.strategy == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageReader

        dcp.load(flat, storage_reader=HuggingFaceStorageReader(os.path.join(folder, "dcp")))
    else:
        _fill_from_files(folder, flat)
    for name, module in t.modules.items():
        if name in optims:
            optims[name]["param_groups"] = state["param_groups"][name]
            set_state_dict(module, t.optimizers[name], model_state_dict=models[name],
                           optim_state_dict=optims[name])
        else:
            unwrap(module).load_state_dict(models[name])
    for name, sched in t.schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    rng = load_file(os.path.join(folder, f"rng-rank{env.rank}.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], env.device)
    return state


def _fill_from_files(folder: str, flat: dict[str, torch.Tensor]) -> None:
    saved: dict[str, torch.Tensor] = {}
    for fname in sorted(os.listdir(folder)):
        if fname.endswith(".safetensors") and fname.split("-")[0] in ("model", "ema", "optim"):
            saved.update(load_file(os.path.join(folder, fname)))
    missing = sorted(set(flat) - set(saved))
    if missing:
        raise TrainInputError(f"checkpoint {folder!r} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, target in flat.items():
            target.copy_(saved[k])


def _unalias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): clone the repeats."""
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def full_weights(t: Trainables, name: str, env: WorkerEnv, use_ema: bool) -> dict[str, torch.Tensor] | None:
    """Full (unsharded) CPU weights of module `name`, EMA values swapped in; collective, rank 0 gets them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    module = t.modules[name]
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = (get_model_state_dict(module, options=options) if env.strategy == "fsdp2"
          else {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()})
    ema = t.emas.get(name) if use_ema else None
    if ema is not None:
        for k, v in ema.shadow.items():
            full = v.full_tensor() if hasattr(v, "full_tensor") else v
            sd[k] = full.detach().cpu()
    return sd if env.is_main else None
