"""The Ray Train side of a training worker: `train_loop_per_worker` of the TorchTrainer.

Everything else a worker does is the Ray-free engine in `vgt.train`; this module only hands it
the worker's place in the group, Ray's checkpoint to resume from and Ray's report function.
"""
from __future__ import annotations

import ray.train
import ray.train.torch

from vgt.train.distributed import WorkerEnv
from vgt.train.loop import LoopSpec, run_loop, train_cfg


def ray_worker_env(strategy: str) -> WorkerEnv:
    ctx = ray.train.get_context()
    return WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), strategy)


def ray_worker_main(config: dict) -> None:
    spec = LoopSpec(**config)
    env = ray_worker_env(train_cfg(spec)["strategy"])
    run_loop(spec, env, checkpoint=ray.train.get_checkpoint(), report=report)


def report(metrics: dict, folder: str | None, name: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
    # Every rank reports (Train V2 requirement); each rank's files merge into one checkpoint folder.
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
