"""Ray Train driver: one `TorchTrainer` run of a training stage, resumable in place.

Run folder OUT (local or s3://):
  config.json, provenance.json   the resolved config and run spec; code version, packages, seeds
  checkpoints/step-N/            Ray Train checkpoints (vgt.train.checkpoint), the newest `ray.keep_checkpoints`
  metrics.jsonl                  one line per step (loss terms, lr, grad norm, samples/s, tokens/s)
  samples/step-N.png             reconstruction (AE) / sample (AR) grids every `sample_every` steps
  tensorboard/, mlflow_run.json  the experiment tracker's run (`train.tracking`; pipelines.train.monitor)
  export/                        the final weights as a loadable AE or pipeline folder

Resuming is running the same command again: Ray Train V2 finds the latest checkpoint of
`RunConfig(name="checkpoints", storage_path=OUT)` and hands it to the workers through
`ray.train.get_checkpoint()` (V2 has no `resume_from_checkpoint`).
"""
from __future__ import annotations

import logging
import posixpath
from dataclasses import asdict

from vgt.train.checkpoint import STATE_FILE, TrainInputError, check_compatible
from pipelines.train.config import RayTrainConfig
from pipelines.train.monitor import Monitor
from pipelines.train.worker import ray_worker_main
from vgt.train.loop import RUN_NAME, LoopSpec, stage_name
from vgt import io as vio
from vgt.config import VGTConfig, to_dict
from vgt.progress import Progress
from vgt.provenance import collect_provenance
from vgt.train.tracking import check_tracking, open_tracker


# Ray Train's record of the checkpoints it registered, in OUT/checkpoints (ray.train.v2 constants)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def resolve_strategy(strategy: str, use_gpu: bool, default_gpu: str) -> str:
    if strategy != "auto":
        return strategy
    return default_gpu if use_gpu else "ddp"


def cluster_has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def latest_checkpoint_state(out: str) -> dict | None:
    """state.json of the checkpoint a run in OUT resumes from (None before the first one).

    That is the newest checkpoint Ray Train registered (its snapshot file lists a checkpoint only
    once every rank's upload finished), not the newest step-N folder: an upload cut short (a host
    lost, an S3 stall, the job stopped) leaves a partial folder that Ray does not resume from."""
    from ray.train import Result

    fs, path = vio.pyarrow_fs(out)
    run = vio.join(out, RUN_NAME)
    if not vio.exists(vio.join(run, SNAPSHOT_FILE)):
        return None
    # Ray's controller says "a run snapshot was found" itself when the run starts; not twice
    quiet = logging.getLogger("ray.train.v2._internal.execution.checkpoint.checkpoint_manager")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        checkpoint = Result.from_path(vio.join(path, RUN_NAME), storage_filesystem=fs).checkpoint
    finally:
        quiet.setLevel(level)
    return vio.read_json(vio.join(run, posixpath.basename(checkpoint.path), STATE_FILE)) if checkpoint else None


def train(stage: str, stage_key: str, cfg: VGTConfig, data: list[str], out: str, ray_cfg: RayTrainConfig,
          steps: int | None = None, init: str | None = None, ae: str | None = None,
          default_strategy_gpu: str = "ddp") -> dict:
    """Check the inputs, then train `stage` ("ae" | "ar") on Ray Train; returns the last metrics.

    `data` items are `URI[=WEIGHT]`; `steps` defaults to the preset's stage steps. Rerunning with the
    same `out` resumes from its latest checkpoint.
    """
    from vgt.data import PreparedDataset

    uris, weights = dataset_args(data)
    uris, out = [vio.absolute(u) for u in uris], vio.absolute(out)  # the workers run elsewhere
    init, ae = (vio.absolute(p) if p else p for p in (init, ae))
    for uri in uris:
        PreparedDataset(uri)  # missing or unfinished datasets fail here, not inside a worker
    steps = steps or getattr(cfg.train, stage_key).steps
    spec = LoopSpec(stage=stage, stage_key=stage_key, config=to_dict(cfg), data=uris, out=out, steps=steps,
                    weights=weights, init=init, ae=ae)
    metrics = fit_resuming(spec, ray_cfg, default_strategy_gpu)
    print(f"{stage_key}: step {metrics.get('step')} of {steps}, loss {metrics.get('loss')}; "
          f"run folder {out}" + (f", export {vio.join(out, 'export')}" if metrics.get("step") == steps else
                                 " (stopped early: rerun to continue)"), flush=True)
    return metrics


def fit_resuming(spec: LoopSpec, ray_cfg: RayTrainConfig, default_strategy_gpu: str = "ddp") -> dict:
    """`fit`, run again from the latest checkpoint after a controller error, within `ray.max_failures`.

    Ray Train restarts a failed worker group itself (FailureConfig), but a node that goes silent
    (a pulled cable, not a crash) surfaces as a ControllerError ("the actor's node was terminated
    unexpectedly"), which it does not retry; a new run in the same folder resumes as a rerun would."""
    from ray.train import ControllerError

    for attempt in range(ray_cfg.max_failures + 1):
        try:
            return fit(spec, ray_cfg, default_strategy_gpu)
        except ControllerError as err:
            if attempt == ray_cfg.max_failures:
                raise
            print(f"{spec.stage_key}: Ray Train's controller failed ({str(err).strip().splitlines()[-1]}); "
                  "resuming from the latest checkpoint", flush=True)
    raise AssertionError("unreachable")


def fit(spec: LoopSpec, ray_cfg: RayTrainConfig, default_strategy_gpu: str = "ddp") -> dict:
    """Train `spec` on `ray_cfg.num_workers` Ray Train workers; returns the last reported metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = spec.config["train"]
    check_tracking(t["tracking"])  # before Ray starts
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS / a running cluster, else a local one
    use_gpu = cluster_has_gpu() if ray_cfg.use_gpu is None else bool(ray_cfg.use_gpu)
    t["strategy"] = resolve_strategy(t["strategy"], use_gpu, default_strategy_gpu)
    state = latest_checkpoint_state(spec.out)
    if state is not None:  # refuse before any worker starts
        check_compatible(state, ray_cfg.num_workers, t["strategy"])
    write_run_files(spec, ray_cfg, resumed_from=state and state["step"])
    start = state["step"] if state else 0
    progress = Progress(spec.stage_key, total=min(spec.steps, t.get("stop_at") or spec.steps), unit="step",
                        start=start)
    tracker = open_tracker(t["tracking"], spec.out, spec.config, name=f"{spec.stage_key} {spec.out}",
                           uri=t["tracking_uri"])
    progress.note(f"tracking: {tracker.where}")
    fs, path = vio.pyarrow_fs(spec.out)
    monitor = Monitor(tracker, progress)
    trainer = TorchTrainer(
        ray_worker_main,
        train_loop_config={"spec": asdict(spec), "fail_at_step": ray_cfg.fail_at_step,
                           "threads": ray_cfg.threads_per_worker},
        # One worker per GPU, or CPU workers. Fractional CPUs leave room on small machines for
        # the Train controller and anything else sharing the cluster.
        scaling_config=ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": ray_cfg.cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})}),
        # TorchConfig default: gloo on CPU, NCCL on GPU.
        run_config=RunConfig(
            name=RUN_NAME,
            # With an explicit pyarrow filesystem Ray wants the path without "s3://".
            storage_path=path,
            storage_filesystem=fs if vio.is_s3(spec.out) else None,
            # Older checkpoints are deleted from storage once newer ones are registered.
            checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg.keep_checkpoints),
            # A failed worker restarts the whole group, which resumes from the last checkpoint.
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
            # rank 0's records -> progress lines and the one tracking writer, in this process
            callbacks=[monitor.callback],
        ),
    )
    with monitor:
        result = trainer.fit()
    metrics = dict(result.metrics or {})
    metrics.pop("records", None)
    return metrics


def write_run_files(spec: LoopSpec, ray_cfg: RayTrainConfig, resumed_from: int | None) -> None:
    vio.makedirs(spec.out)
    run = {"spec": {**asdict(spec), "stage": stage_name(spec)}, "workers": ray_cfg.num_workers, "ray": asdict(ray_cfg)}
    vio.write_json(vio.join(spec.out, "config.json"), run)
    seeds = {"seed": spec.config["train"]["seed"]}
    vio.write_json(vio.join(spec.out, "provenance.json"),
                   collect_provenance(run, seeds=seeds, resumed_from_step=resumed_from))


def dataset_args(items: list[str]) -> tuple[list[str], list[float]]:
    """`URI[=WEIGHT]` command-line items -> (uris, weights); the weight defaults to 1."""
    uris, weights = [], []
    for item in items:
        uri, weight = item, 1.0
        head, sep, tail = item.rpartition("=")
        if sep:
            try:
                uri, weight = head, float(tail)
            except ValueError:
                raise TrainInputError(f"dataset {item!r}: the weight after '=' must be a number") from None
        if weight <= 0:
            raise TrainInputError(f"dataset {item!r}: the weight must be positive")
        uris.append(uri)
        weights.append(weight)
    return uris, weights

