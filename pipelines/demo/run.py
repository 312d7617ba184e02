"""`vgt demo`: every stage of the pipeline on one embedded local Ray cluster, on synthetic shapes.

(1) data: WebDataset shards of captioned shapes (Ray tasks); the held-out combinations only in a
    separate evaluation split; (2) prep of both splits; (3) AE training; (4) prep-latents; (5) AR
    training; (6) the Serve app; (7) the held-out prompts over HTTP; (8) scores, reconstruction
    metrics, report.html + metrics.json. Each stage calls the same typed function its `vgt`
    command calls. The cluster is started here and
    shut down at the end (also on errors), so no process is left behind.

Every stage has a share of the time budget (training stages also get what earlier stages left
over). Training steps are the stage's budget times the step rate measured on 2 cores (capped at
the preset's steps), and each such run also gets a wall-time cap (`train.time_limit_s`) of its
budget, so the demo keeps to it on a slower or busier machine. Fixed steps (`ae_steps` /
`ar_steps`) run to the end whatever the clock says: a busy machine takes longer but learns the same.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from vgt import io as vio

# Stage -> share of the total budget (sums to 1). The AR stage gets half: the AE reaches its
# reconstruction ceiling in its preset's steps, the generator keeps improving as long as it trains
# (README "Why the demo learns slowly"); the rest are mostly fixed costs (Ray start, Ray Train
# worker start, Serve deploy, scoring 8 images per held-out prompt).
BUDGET_SHARES = {"data": 0.03, "prep": 0.04, "train-ae": 0.22, "prep-latents": 0.04, "train-ar": 0.47,
                 "serve": 0.04, "generate": 0.11, "report": 0.05}
CORES = 2  # the demo's local Ray cluster
TRAIN_FIXED_S = 25.0  # Ray Train start-up + export per training stage, not available for steps
PROGRESS_EVERY_S = 30.0  # a training progress line this often (worker logs are not forwarded)
# Ray Train optimiser steps per second of a stage's share, one worker with 2 threads,
# measured by the default demo on 2 idle cores (README "The default demo on 2 cores"). Fixed rates,
# not a probe: a few timed steps right after the previous stage varied 6x between runs. A slower
# machine is held to the budget by `train.time_limit_s`.
STEPS_PER_SECOND = {"ae_stage1": 9.0, "ar_pretrain": 3.6}


@dataclass
class DemoOptions:
    out: str
    budget_minutes: float = 15.0
    ae_steps: int | None = None  # AE training steps, run to the end (default: what fits the budget)
    ar_steps: int | None = None  # AR training steps, run to the end (default: what fits the budget)
    n: int = 8  # images per held-out prompt, one HTTP request each
    train_images: int = 4000
    heldout_images: int = 96
    shard_size: int = 500
    workers: int = 1  # Ray Train workers; their torch threads share the CORES
    seed: int = 0
    preset: str = "demo"
    overrides: list[str] = field(default_factory=list)


def allowance(name: str, budget_s: float, elapsed_s: float) -> float:
    """Seconds a stage may take when it starts `elapsed_s` into the budget: its share, or more when
    earlier stages left time over (later stages keep their shares)."""
    names = list(BUDGET_SHARES)
    later = sum(BUDGET_SHARES[n] for n in names[names.index(name) + 1:]) * budget_s
    return max(BUDGET_SHARES[name] * budget_s, budget_s - elapsed_s - later)


class Stages:
    """Numbered progress lines and per-stage start and wall times against the budget."""

    def __init__(self, budget_s: float):
        self.budget_s, self.started, self.times, self.starts = budget_s, time.time(), {}, {}

    def budget(self, name: str) -> float:
        return BUDGET_SHARES[name] * self.budget_s

    def available(self, name: str) -> float:
        return allowance(name, self.budget_s, time.time() - self.started)

    def run(self, name: str, fn, *args, **kwargs):
        index = list(BUDGET_SHARES).index(name) + 1
        start = time.time()
        self.starts[name] = round(start - self.started, 1)
        print(f"[demo {index}/{len(BUDGET_SHARES)}] {name} (budget {self.budget(name):.0f} s, "
              f"{self.starts[name]:.0f} s elapsed)", flush=True)
        result = fn(*args, **kwargs)
        self.times[name] = round(time.time() - start, 1)
        print(f"[demo {index}/{len(BUDGET_SHARES)}] {name} done in {self.times[name]:.1f} s", flush=True)
        return result


TRAINING_RUNS = {"train-ae": "ae_run", "train-ar": "ar_run"}  # stage -> its run folder in metrics["paths"]


def budgeted_seconds(metrics: dict) -> dict:
    """What a run with fixed steps would have taken as the budgeted (default) demo on the same
    machine, from its own measured costs: every stage the budget does not size at its measured time
    (and the Ray start before and shutdown after them), each training stage at what a budgeted run
    lets it take: its start-up, checkpoints and export as measured (the stage's wall time minus its
    training loop's, from the run's metrics.jsonl), plus the loop's `train.time_limit_s` (the
    stage's allowance minus TRAIN_FIXED_S; the loop ends at the first step past it) plus its
    longest step. `total` is the bound; the rest says where it comes from."""
    budget_s = metrics["options"]["budget_minutes"] * 60
    starts, times = metrics["stage_start_seconds"], metrics["stage_seconds"]
    names = list(BUDGET_SHARES)
    elapsed = starts[names[0]]  # Ray start
    seconds = {}
    for name in names:
        if name in TRAINING_RUNS:
            loop = _loop_seconds(metrics["paths"][TRAINING_RUNS[name]])
            limit = loop_time_limit(allowance(name, budget_s, elapsed))
            seconds[name] = round(times[name] - loop["loop"] + limit + loop["longest_step"], 1)
        else:
            seconds[name] = times[name]
        elapsed += seconds[name]
    after = metrics["total_seconds"] - starts[names[-1]] - times[names[-1]]  # Serve and Ray shutdown
    return {"total": round(elapsed + after, 1), "budget": budget_s, "stages": seconds,
            "outside_stages": round(starts[names[0]] + after, 1)}


def _loop_seconds(run: str) -> dict:
    """Wall time of a run's training loop (its start record to its last step) and its longest step."""
    from vgt.train.loop import read_metrics

    records = read_metrics(run)
    start = next(r["time"] for r in records if r.get("event") == "start")
    times = [start] + [r["time"] for r in records if "loss" in r]
    return {"loop": times[-1] - start, "longest_step": max(b - a for a, b in zip(times, times[1:]))}


def start_ray(temp_dir: str, num_cpus: int = CORES) -> None:
    import ray

    # Loopback only, no usage stats, fast Train health checks (docs/environment.md §3.1).
    for key, value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        raise RuntimeError("vgt demo starts its own Ray cluster; run it outside an initialised Ray session")
    # address="local": always a new cluster, never one a `ray start` left on this machine
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=512 * 1024**2,
             log_to_driver=False, _temp_dir=temp_dir, configure_logging=False)


def write_data(opts: DemoOptions, data: str) -> dict:
    import ray

    from vgt.eval.shapes.dataset import shard_sizes, write_shard

    task = ray.remote(num_cpus=1)(write_shard)
    jobs = [task.remote(data, i, n, opts.seed, "train") for i, n in enumerate(shard_sizes(opts.train_images,
                                                                                         opts.shard_size))]
    jobs += [task.remote(data, i, n, opts.seed, "heldout")
             for i, n in enumerate(shard_sizes(opts.heldout_images, opts.shard_size))]
    return {"shards": len(ray.get(jobs)), "train_images": opts.train_images, "heldout_images": opts.heldout_images}


def train_stage(opts: DemoOptions, budget_s: float, stage: str, stage_key: str, out: str, data: str,
                ae: str | None = None) -> dict:
    """Train the stage on Ray Train: its fixed steps (`opts.ae_steps` / `opts.ar_steps`) without a
    clock, or the steps its budget buys with a wall-time cap (`train.time_limit_s`) of that budget."""
    from pipelines.train.config import ray_train_config
    from pipelines.train.launch import train
    from vgt.presets import get_preset

    cfg = get_preset(opts.preset, opts.overrides)
    fixed = {"ae": opts.ae_steps, "ar": opts.ar_steps}[stage]
    plan = stage_plan(getattr(cfg.train, stage_key), stage_key, opts.workers, fixed, budget_s)
    overrides = [*opts.overrides, f"train.{stage_key}.batch_size={plan['batch_per_worker']}"]
    if plan["time_limit_s"] is not None:
        overrides.append(f"train.time_limit_s={plan['time_limit_s']}")
    cfg = get_preset(opts.preset, overrides)
    # half a CPU per worker leaves room for the Train controller and Ray Data on 2 cores; the
    # workers' threads together use both cores
    ray_cfg = ray_train_config({"num_workers": opts.workers, "cpus_per_worker": 0.5,
                                "threads_per_worker": max(1, CORES // opts.workers)})
    with training_progress(f"train-{stage}", vio.join(out, "metrics.jsonl"), plan["steps"]):
        train(stage, stage_key, cfg, [data], out, ray_cfg, steps=plan["steps"], ae=ae,
              default_strategy_gpu="fsdp2" if stage == "ar" else "ddp")
    return plan


def stage_plan(stage_cfg, stage_key: str, workers: int, fixed_steps: int | None, budget_s: float) -> dict:
    """A training stage's steps and wall-time cap: `fixed_steps` without a cap, or the steps its
    budget buys at STEPS_PER_SECOND (at most the preset's) with a cap of that budget, both less
    TRAIN_FIXED_S. The preset's batch is the calibrated one: split over the workers (at equal
    samples, more optimiser steps learn more in a short run than bigger batches)."""
    plan = {"preset_steps": stage_cfg.steps, "batch_per_worker": max(1, stage_cfg.batch_size // workers)}
    if fixed_steps:
        return plan | {"steps": fixed_steps, "time_limit_s": None}
    limit = loop_time_limit(budget_s)
    return plan | {"steps": max(10, min(stage_cfg.steps, int(limit * STEPS_PER_SECOND[stage_key]))),
                   "time_limit_s": limit}


def loop_time_limit(stage_budget_s: float) -> float:
    """`train.time_limit_s` of a budgeted training stage: its budget less TRAIN_FIXED_S, at least 10 s."""
    return round(max(10.0, stage_budget_s - TRAIN_FIXED_S), 1)


@contextlib.contextmanager
def training_progress(label: str, metrics_uri: str, steps: int):
    """Print the run's latest step and loss (its metrics.jsonl) every PROGRESS_EVERY_S while the block runs."""
    done, start = threading.Event(), time.time()

    def watch() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            last = _last_record(metrics_uri)
            if last and "loss" in last:
                print(f"  {label}: step {last['step']} of {steps}, loss {last['loss']:.4f}, "
                      f"{time.time() - start:.0f} s", flush=True)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _last_record(uri: str) -> dict | None:
    try:
        lines = vio.read_bytes(uri).decode().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):  # not written yet, or caught mid-line
        return None


# The demo is a throughput client (8 requests in flight): a batch that waits a moment for company
# fills. cluster/serve.yaml's no-wait default (lowest latency for a lone request) took 35.4 s
# for 96 of these requests against 17.0 s with these waits (one run, the quality test's model).
BATCH_WAIT_S = {"ARSampler": 0.05, "AEDecoder": 0.02}


def serve_model(model: str) -> str:
    """Deploy the Serve app (cluster/serve.yaml, CPU placement, batches that wait for company) on a
    free loopback port; its URL."""
    import socket

    from pipelines.serve.config import (DEFAULT_CONFIG, app_of, deploy, load_config, placement_overrides,
                                        with_overrides)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = load_config(DEFAULT_CONFIG)
    deployments = placement_overrides("auto")
    for d in app_of(base)["deployments"]:  # the config's batch sizes, the demo's waits
        if d["name"] in BATCH_WAIT_S:
            batching = {**d["user_config"], "batch_wait_timeout_s": BATCH_WAIT_S[d["name"]]}
            deployments[d["name"]] = {**deployments.get(d["name"], {}), "user_config": batching}
    config = with_overrides(base, model=model, host="127.0.0.1", port=port, deployments=deployments)
    return deploy(config, timeout_s=300)


def run_demo(opts: DemoOptions) -> dict:
    """Run every stage; returns metrics.json's content (also written to OUT)."""
    from pipelines.prep.add_latents import run_prep_latents
    from vgt.presets import get_preset

    cfg = get_preset(opts.preset, opts.overrides)
    out = vio.absolute(opts.out)  # every stage's Ray workers read and write under it from their own cwd
    paths = {k: vio.join(out, v) for k, v in {
        "shards": "data/shards", "prepared": "data/prepared", "heldout": "data/heldout", "latents": "data/latents",
        "ae_run": "runs/ae", "ar_run": "runs/ar", "shapes": "shapes", "report": "report"}.items()}
    paths.update(root=out, ae=vio.join(paths["ae_run"], "export"), pipeline=vio.join(paths["ar_run"], "export"))
    stages = Stages(opts.budget_minutes * 60)
    temp_dir = tempfile.mkdtemp(prefix="vgt-demo-ray-")
    metrics: dict = {"options": asdict(opts), "ray_temp_dir": temp_dir, "paths": paths, "stage_seconds": stages.times,
                     "stage_start_seconds": stages.starts,
                     "stage_budget_seconds": {name: round(stages.budget(name), 1) for name in BUDGET_SHARES}}
    start_ray(temp_dir)
    try:
        metrics["data"] = stages.run("data", write_data, opts, paths["shards"])
        stages.run("prep", _prep_both, opts, paths, cfg)
        metrics["train_ae"] = stages.run("train-ae", train_stage, opts, stages.available("train-ae"), "ae",
                                         "ae_stage1", paths["ae_run"], paths["prepared"])
        stages.run("prep-latents", run_prep_latents, paths["prepared"], paths["ae"], paths["latents"], num_cpus=2)
        metrics["train_ar"] = stages.run("train-ar", train_stage, opts, stages.available("train-ar"), "ar",
                                         "ar_pretrain", paths["ar_run"], paths["latents"], paths["ae"])
        url = stages.run("serve", serve_model, paths["pipeline"])
        metrics["shapes"], metrics["shapes_unconditional"] = stages.run("generate", _generate, opts, url,
                                                                        paths["shapes"])
        _stop_serve()
        from pipelines.demo.report import write_report

        stages.run("report", write_report, metrics, paths, cfg)
    finally:
        _stop_serve()
        _stop_ray(temp_dir)
    metrics["total_seconds"] = round(time.time() - stages.started, 1)
    vio.write_json(vio.join(out, "metrics.json"), metrics)
    return metrics


def _generate(opts: DemoOptions, url: str, out: str) -> tuple[dict, dict]:
    """The held-out prompts with no sampling options (the served folder's config.sample decides,
    as for any client), then one image per prompt from the unconditional model (guidance 0: the
    prompt ignored), the chance level the conditioned scores are read against."""
    from pipelines.eval.shapes import shapes_eval

    # 8 requests in flight fill the sampler's batch of 8 (cluster/serve.yaml)
    conditioned = shapes_eval(url, opts.n, opts.seed, {}, out, parallel=8)
    return conditioned, shapes_eval(url, 1, opts.seed, {"guidance_scale": 0.0}, parallel=8)


def _prep_both(opts: DemoOptions, paths: dict, cfg) -> None:
    from pipelines.prep.dataset import run_prep

    shards = paths["shards"]
    run_prep([f"shapes={vio.join(shards, 'shapes-train-*.tar')}"], paths["prepared"], cfg)
    run_prep([f"heldout={vio.join(shards, 'shapes-heldout-*.tar')}"], paths["heldout"], cfg)


def _stop_serve() -> None:
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()


def _stop_ray(temp_dir: str) -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
