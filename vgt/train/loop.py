"""The per-worker training loop shared by every stage (`vgt.train.stage.Stage`).

It runs the same way inside a Ray Train worker (`pipelines.train.worker` passes Ray's checkpoint
and report function in) and in a plain process (no checkpoint, no report: benchmarks, calibration,
in-process tests). The loop owns resume, data position, checkpoints, metrics and the export; the
stage owns its models and its step; callers hook in after each step (`after_step`).
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vgt.train import checkpoint as train_ckpt
from vgt.train.data import MixedFeed, derive_seed, seeded
from vgt.train.distributed import WorkerEnv
from vgt.train.stage import stage_class, stage_label
from vgt import io as vio

RUN_NAME = "checkpoints"  # RunConfig(name=...): checkpoints live in OUT/checkpoints/step-N


@dataclass
class LoopSpec:
    """Everything a worker needs, JSON-able (sent to the workers as the train loop config)."""

    stage: str | type  # a registered stage name ("ae", "ar"; vgt.train.stage), or a class (tests)
    stage_key: str  # which stage config: "ae_stage1" | "ae_stage2" | "ar_pretrain" | "ar_sft" | ...
    config: dict  # the resolved VGTConfig (to_dict)
    data: list[str]
    out: str  # run folder (local or s3://)
    steps: int  # length of the LR schedule; the run ends here unless stop_at is set
    weights: list[float] = field(default_factory=list)  # per dataset; empty = equal
    init: str | None = None  # stage2 / sft: weights to start from
    ae: str | None = None  # AR: the frozen autoencoder folder


def build_stage(spec: LoopSpec, env: WorkerEnv):
    return stage_class(spec.stage)(spec, env)


def stage_name(spec: LoopSpec) -> str:
    return stage_label(spec.stage)


def train_cfg(spec: LoopSpec) -> dict:
    return spec.config["train"]


def make_feed(spec: LoopSpec, stage, env: WorkerEnv) -> MixedFeed:
    t = train_cfg(spec)
    return MixedFeed(spec.data, spec.weights or [1.0] * len(spec.data), stage.columns, t["seed"],
                     env.rank, env.world, chunk_rows=t["data_chunk_rows"], window=t["data_shuffle_window"])


def run_loop(spec: LoopSpec, env: WorkerEnv, checkpoint=None, report=None,
             after_step: Callable[[int, object], bool | None] | None = None) -> list[dict]:
    """Train from the checkpoint (or from scratch) to the stop step; returns rank 0's metrics.

    `report(metrics, folder, name)` hands checkpoints and metrics to the launcher (None: a plain
    process, no checkpoints). `after_step(step, stage)` runs on every rank after each step's
    metrics are logged (the Ray layer's fault-injection drill, calibration's evaluations); a true
    return on any rank ends the run at that step, with a checkpoint and the export, as
    `train.time_limit_s` does."""
    t = train_cfg(spec)
    torch.manual_seed(t["seed"])  # identical initial weights on every rank (FSDP2 does not broadcast)
    stage = build_stage(spec, env)
    torch.manual_seed(derive_seed(t["seed"], "rank", env.rank))  # per-rank stream (dropout, ...)
    feed = make_feed(spec, stage, env)
    start = _resume(checkpoint, stage, feed, env)
    stop = min(spec.steps, t.get("stop_at") or spec.steps)
    log = MetricsLog(spec.out, start, forward=report is not None) if env.is_main else None
    if log:
        log.append({"event": "start", "step": start, "time": time.time(), "world_size": env.world,
                    "strategy": env.strategy, "torch_threads": torch.get_num_threads()})
    deadline = time.monotonic() + t["time_limit_s"] if t.get("time_limit_s") is not None else None
    ended = False
    for step in range(start, stop):
        began = time.perf_counter()
        rows = feed.batch(step, stage.rows_per_step)
        lr = stage.lr()  # the rate this step uses (the scheduler advances inside stage.step)
        metrics = stage.step(rows, step, seeded(t["seed"], "step", step, env.rank))
        for ema in stage.trainables.emas.values():
            ema.update(step + 1)
        metrics = _global_metrics(metrics, stage, rows, env, time.perf_counter() - began, step + 1)
        metrics["lr"] = lr
        if log:
            log.append(metrics)
        requested = after_step is not None and _any_rank(env, bool(after_step(step + 1, stage)))
        _maybe_preview(spec, stage, rows, env, step + 1, log)
        timed_out = deadline is not None and _any_rank(env, time.monotonic() > deadline)
        ended = timed_out or requested
        if ended:
            stop = step + 1
        _checkpoint_and_report(spec, stage, feed, env, step + 1, stop, metrics, log, report)
        if ended:
            if log:
                event = {"event": "time_limit", "time_limit_s": t["time_limit_s"]} if timed_out else {"event": "stop"}
                log.append({**event, "step": step + 1})
            break
    if stop == spec.steps or ended:
        export(spec, stage, env)
    if log:
        log.flush()
    return log.records if log else []


def _any_rank(env: WorkerEnv, flag: bool) -> bool:
    """True on every rank when `flag` holds on any (ranks must stop at the same step)."""
    return bool(env.mean(torch.tensor(float(flag))).item() > 0)


def _resume(checkpoint, stage, feed: MixedFeed, env: WorkerEnv) -> int:
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = train_ckpt.load(folder, stage.trainables, env)
    feed.load_state(state["data"])
    return state["step"]


def _global_metrics(metrics: dict, stage, rows: list, env: WorkerEnv, seconds: float, step: int) -> dict:
    """Loss terms averaged over ranks; throughput of the whole job (from the ranks' mean step time)."""
    names = sorted(metrics)
    values = env.mean(torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64).reshape(()).cpu()
                                   for k in names] + [torch.tensor(float(seconds), dtype=torch.float64)]))
    out = {"step": step, "time": time.time(), **{k: float(v) for k, v in zip(names, values[:-1].tolist())}}
    seconds = float(values[-1])
    samples = len(rows) * env.world
    out["samples_per_s"] = samples / seconds
    tokens = out.pop("tokens", stage.tokens_per_sample * len(rows)) * env.world
    out["tokens_per_s"] = tokens / seconds
    return out


def _maybe_preview(spec: LoopSpec, stage, rows: list, env: WorkerEnv, step: int, log: "MetricsLog | None") -> None:
    every = train_cfg(spec)["sample_every"]
    if not every or step % every or not hasattr(stage, "preview"):
        return
    image = stage.preview(step, rows)  # every rank: FSDP2 forwards are collective
    if env.is_main and image is not None:
        uri = vio.join(spec.out, "samples", f"step-{step:08d}.png")
        with vio.open(uri, "wb") as f:
            image.save(f, format="PNG")
        log.forward({"event": "sample", "step": step, "uri": uri})


def _checkpoint_and_report(spec, stage, feed, env, step, stop, metrics, log, report) -> None:
    """Checkpoint every train.checkpoint_every steps and at the stop step; metrics to Ray every
    train.log_every steps (a report is a barrier across the workers, so not every step). Rank 0's
    report also carries every record since its last one (`MetricsLog.take`): the launcher's progress
    lines and its one tracking writer (`vgt.train.tracking`) read them there, not from a file."""
    if report is None:  # a plain process (benchmarks, in-process tests): no Ray, no checkpoints
        return
    t = train_cfg(spec)
    checkpoint = step % t["checkpoint_every"] == 0 or step == stop
    if not checkpoint and step % t["log_every"]:
        return
    if log:
        metrics = {**metrics, "records": log.take()}
    if checkpoint:
        if log:
            log.flush()
        with tempfile.TemporaryDirectory(prefix="vgt-ckpt-") as folder:
            train_ckpt.save(folder, stage.trainables, env, step, {"data": feed.state()})
            report(metrics, folder, f"step-{step:08d}")
    else:
        report(metrics, None, None)


def export(spec: LoopSpec, stage, env: WorkerEnv) -> None:
    """Full weights (EMA when the stage keeps one and train.export_ema) -> OUT/export, by rank 0."""
    use_ema = train_cfg(spec)["export_ema"]
    weights = {name: train_ckpt.full_weights(stage.trainables, name, env, use_ema)
               for name in stage.export_modules}
    if env.is_main:
        stage.export(vio.join(spec.out, "export"), weights)
    env.barrier()


def read_metrics(out: str) -> list[dict]:
    """The records of a run folder's metrics.jsonl (none when it has no file yet)."""
    uri = vio.join(out, "metrics.jsonl")
    if not vio.exists(uri):
        return []
    return [json.loads(line) for line in vio.read_bytes(uri).decode().splitlines() if line.strip()]


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per step (rank 0). On resume, lines after the resumed
    step are dropped, so the file always describes one consistent history. With `forward`, what is
    appended (and sample events) also waits for the next report (`take`)."""

    def __init__(self, out: str, start: int, forward: bool = False):
        self.uri = vio.join(out, "metrics.jsonl")
        self.records = [r for r in read_metrics(out) if r["step"] <= start]
        self._forward = forward
        self._pending: list[dict] = []
        self._local = not vio.is_s3(out)
        if self._local:
            self._rewrite()

    def append(self, record: dict) -> None:
        self.records.append(record)
        self.forward(record)
        if self._local:  # local files grow line by line; s3 objects are rewritten at checkpoints
            with open(self.uri, "a") as f:
                f.write(json.dumps(record) + "\n")

    def forward(self, record: dict) -> None:
        """Queue a record for the next report only (not written to metrics.jsonl)."""
        if self._forward:
            self._pending.append(record)

    def take(self) -> list[dict]:
        pending, self._pending = self._pending, []
        return pending

    def flush(self) -> None:
        if not self._local:
            self._rewrite()

    def _rewrite(self) -> None:
        vio.atomic_write_bytes(self.uri, "".join(json.dumps(r) + "\n" for r in self.records).encode())
