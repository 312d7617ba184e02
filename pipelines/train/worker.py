"""The Ray Train side of a training worker: `train_loop_per_worker` of the TorchTrainer.

Everything else a worker does is the Ray-free engine in `vgt.train`; this module only hands it
the worker's place in the group, Ray's checkpoint to resume from and Ray's report function.
"""
from __future__ import annotations

import functools

import ray.train
import ray.train.torch
import torch

from vgt import io as vio
from vgt.train.distributed import WorkerEnv
from vgt.train.loop import LoopSpec, run_loop, train_cfg


def ray_worker_env(strategy: str) -> WorkerEnv:
    ctx = ray.train.get_context()
    return WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), strategy)


def ray_worker_main(config: dict) -> None:
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    spec = LoopSpec(**config["spec"])
    env = ray_worker_env(train_cfg(spec)["strategy"])
    after_step = None
    if config["fail_at_step"] is not None:
        after_step = functools.partial(inject_failure, spec.out, env, config["fail_at_step"])
    run_loop(spec, env, checkpoint=ray.train.get_checkpoint(), report=report, after_step=after_step)


def inject_failure(out: str, env: WorkerEnv, fail_at: int, step: int, stage=None) -> None:
    """Fault-injection drill (`ray.fail_at_step`): the last rank dies once at that step; a marker
    file in the run folder keeps the restarted group from failing again."""
    if fail_at != step or env.rank != env.world - 1:
        return
    marker = vio.join(out, f"injected-failure-step-{step}")
    if vio.exists(marker):
        return
    vio.write_bytes(marker, b"")
    raise RuntimeError(f"injected failure at step {step} on rank {env.rank} (ray.fail_at_step)")


def report(metrics: dict, folder: str | None, name: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
    # Every rank reports (Train V2 requirement); each rank's files merge into one checkpoint folder.
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
