"""The Ray Train knobs of a training run: where and how many workers run, and what Ray keeps.

They belong to the Ray layer, not to the model or the engine (`vgt.config.VGTConfig`): the same
engine runs with none of them in a plain process. Overrides use the `ray.` prefix
(`--set ray.cpus_per_worker=0.5`); `vgt config` prints them with their docs.
"""
from __future__ import annotations

from dataclasses import dataclass

from vgt.config import ConfigError, apply_overrides, flat_keys


@dataclass
class RayTrainConfig:
    num_workers: int = 1
    """Ray Train workers (one per GPU on GPU clusters); a resumed run needs the same number."""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves (ScalingConfig resources_per_worker); fractional on small machines."""
    threads_per_worker: int | None = None
    """torch intra-op threads in each worker; None: Ray's default (the worker's whole CPUs, at least 1)."""
    use_gpu: bool | None = None
    """Train on GPUs; None: when the Ray cluster has any."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run folder (CheckpointConfig num_to_keep); older ones are deleted."""
    max_failures: int = 2
    """Restarts of the worker group from the last checkpoint after a failure (FailureConfig)."""
    fail_at_step: int | None = None
    """Fault-injection drill: the last worker raises once at this step (the run must recover)."""


PREFIX = "ray."
# Keys that lived under `train.` before the Ray layer owned them: refused with the new name.
MOVED = {f"train.{k}": f"{PREFIX}{k}" for k in ("cpus_per_worker", "use_gpu", "keep_checkpoints", "max_failures",
                                                "fail_at_step")}


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """KEY=VALUE items -> (model/engine overrides, `ray.` overrides without the prefix)."""
    model, ray = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in MOVED:
            raise ConfigError(f"config key {key!r} is now {MOVED[key]!r} (a Ray Train setting)")
        if key.startswith(PREFIX):
            ray.append(item[len(PREFIX):])
        else:
            model.append(item)
    return model, ray


def ray_train_config(overrides: list[str] | dict | None = None) -> RayTrainConfig:
    """Defaults plus `ray.`-less overrides ("num_workers=2" or {"num_workers": 2})."""
    cfg = RayTrainConfig()
    if overrides:
        try:
            cfg = apply_overrides(cfg, overrides)
        except ConfigError as e:
            raise ConfigError(f"{e} (Ray Train settings: {', '.join(PREFIX + k for k in flat_keys(cfg))})") from None
    if cfg.num_workers < 1:
        raise ConfigError("ray.num_workers must be at least 1")
    if cfg.threads_per_worker is not None and cfg.threads_per_worker < 1:
        raise ConfigError("ray.threads_per_worker must be at least 1 (or None: Ray's default)")
    return cfg
