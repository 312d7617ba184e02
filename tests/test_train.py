"""Ray Train machinery on a toy model: exact resume, fault tolerance, DDP vs FSDP2, S3 checkpoints,
accumulation, EMA, LR schedule, data order.

The toy stage (a small MLP on a generated parquet dataset) plugs into the same loop the AE and AR
stages use, so these runs test the shared machinery in seconds. Ray Train workers cannot import
this test module, so it is pickled by value.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vgt.train.checkpoint import Trainables
from vgt.train.data import MixedFeed, epoch_order
from vgt.train.distributed import WorkerEnv, accumulate, clip_and_step, distribute, split_micro_batches, unwrap
from vgt.train.loop import LoopSpec, run_loop
from vgt.train.optim import adamw, param_groups, scheduler, warmup_cosine
from vgt.train.ema import EMA
from vgt import io as vio
from vgt.config import to_dict
from vgt.data.layout import FORMAT_VERSION, KIND, part_uri, write_manifest
from vgt.presets import get_preset

DIM = 8


def toy_net(dropout: float) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


class ToyStage:
    """Regression with dropout (global RNG) and input noise (the step generator): resuming
    bitwise therefore needs weights, optimiser, schedule, EMA, data position and RNG restored."""

    columns = ["x", "y"]
    tokens_per_sample = 1
    export_modules = ["model"]

    def __init__(self, spec: LoopSpec, env: WorkerEnv):
        self.env, train = env, spec.config["train"]
        self.s = s = train[spec.stage_key]
        net = toy_net(spec.config.get("toy_dropout", 0.1))
        model = distribute(net, env, blocks=[net[0], net[3]],
                           activation_checkpointing=train["activation_checkpointing"])
        opt = adamw(param_groups(unwrap(model).named_parameters(), s["lr"], s["weight_decay"]), s["lr"], s["betas"])
        self.trainables = Trainables({"model": model}, {"model": opt},
                                     {"model": scheduler(opt, s["warmup_steps"], spec.steps, s["end_lr"] / s["lr"])},
                                     {"model": EMA(unwrap(model), s["ema_decay"], s["ema_start"])})
        self.rows_per_step = s["batch_size"] * s["grad_accum"]

    def lr(self) -> float:
        return self.trainables.schedulers["model"].get_last_lr()[0]

    def step(self, rows, step, generator):
        model = self.trainables.modules["model"]
        x = torch.tensor([r["x"] for r in rows]) + 0.01 * torch.randn(len(rows), DIM, generator=generator)
        y = torch.tensor([[r["y"]] for r in rows])
        micro = split_micro_batches(list(range(len(rows))), self.s["grad_accum"])
        terms = accumulate(model, self.env, micro,
                           lambda idx, _: (torch.nn.functional.mse_loss(model(x[idx]), y[idx]), {}))
        norm = clip_and_step(list(model.parameters()), self.trainables.optimizers["model"],
                             self.trainables.schedulers["model"], self.s["grad_clip"])
        return {**terms, "grad_norm": norm}

    def export(self, folder, weights):
        vio.write_bytes(vio.join(folder, "model.safetensors"), st_save(weights["model"]))


def write_toy_dataset(folder: str, sizes=(40, 24), seed: int = 0) -> str:
    """A prepared-dataset folder of (x, y = sin(sum x)) rows; row groups of 16 so parts have several."""
    gen = torch.Generator().manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    parts = {}
    for i, n in enumerate(sizes):
        x = torch.randn(n, DIM, generator=gen)
        ids = list(range(sum(sizes[:i]), sum(sizes[:i + 1])))
        table = pa.table({"id": ids, "x": x.tolist(), "y": torch.sin(x.sum(1)).tolist()})
        pq.write_table(table, part_uri(folder, f"part-toy-{i}"), row_group_size=16)
        parts[f"part-toy-{i}"] = {"complete": True, "rows_out": n, "source": "toy"}
    write_manifest(folder, {"kind": KIND, "format_version": FORMAT_VERSION, "parts": parts})
    return folder


RAY = {"cpus_per_worker": 0.5, "max_failures": 0}


def toy_spec(data: list[str], out: str, steps: int, **train) -> LoopSpec:
    stage = dict(batch_size=4, grad_accum=1, lr=1e-2, end_lr=1e-3, warmup_steps=2, ema_start=3, ema_decay=0.9)
    stage.update({k: train.pop(k) for k in list(train) if k in stage})
    overrides = {f"train.ar_pretrain.{k}": v for k, v in stage.items()}
    overrides.update({"train.checkpoint_every": 4, "train.log_every": 2, "train.sample_every": 0,
                      "train.strategy": "ddp"})
    overrides.update({f"train.{k}": v for k, v in train.items()})
    cfg = to_dict(get_preset("tiny", overrides))
    return LoopSpec(stage=ToyStage, stage_key="ar_pretrain", config=cfg, data=data, out=out, steps=steps)


def metrics(out: str) -> list[dict]:
    return [json.loads(line) for line in vio.read_bytes(vio.join(out, "metrics.jsonl")).decode().splitlines()]


def losses(out: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def starts(out: str) -> list[int]:
    return [r["step"] for r in metrics(out) if r.get("event") == "start"]


def exported(out: str) -> dict[str, torch.Tensor]:
    return st_load(vio.read_bytes(vio.join(out, "export", "model.safetensors")))


# ---------------------------------------------------------------- in-process (no Ray)


class RecordingToyStage(ToyStage):
    """Keeps the live weights after every step (for the hand-computed EMA)."""

    history: list[dict[str, torch.Tensor]] = []

    def step(self, rows, step, generator):
        metrics = super().step(rows, step, generator)
        params = unwrap(self.trainables.modules["model"]).named_parameters()
        RecordingToyStage.history.append({k: v.detach().double().clone() for k, v in params})
        return metrics


def test_data_order_is_a_pure_function_of_seed_epoch_rank_world(tmp_path):
    data = write_toy_dataset(str(tmp_path / "data"))

    def feed(rank, world=2, seed=7):
        return MixedFeed([data], [1.0], ["id"], seed, rank, world, chunk_rows=16, window=2)

    ids = lambda batch: [r["id"] for r in batch]  # noqa: E731
    a, b = feed(0), feed(0)
    run_a = [ids(a.batch(s, 4)) for s in range(12)]
    assert run_a == [ids(b.batch(s, 4)) for s in range(12)]
    # One epoch = 32 rows per rank; the two ranks partition the 64 rows; epoch 2 is reshuffled.
    r1 = feed(1)
    epoch0 = sum(run_a[:8], [])
    other = sum((ids(r1.batch(s, 4)) for s in range(8)), [])
    assert sorted(epoch0 + other) == list(range(64))
    assert sorted(sum(run_a[8:12], [])) != sorted(epoch0[:16])
    assert epoch0 != sum((ids(feed(0, seed=8).batch(s, 4)) for s in range(8)), [])
    assert epoch0 != sum((ids(MixedFeed([data], [1.0], ["id"], 7, 0, 4, 16, 2).batch(s, 4)) for s in range(8)), [])
    # Resume mid-epoch from the saved position: the same batches follow.
    c = feed(0)
    for s in range(5):
        c.batch(s, 4)
    d = feed(0)
    d.load_state(json.loads(json.dumps(c.state())))
    assert [ids(d.batch(s, 4)) for s in range(5, 12)] == run_a[5:12]


def test_weighted_mixing_is_deterministic(tmp_path):
    a = write_toy_dataset(str(tmp_path / "a"), sizes=(40,), seed=1)
    b = write_toy_dataset(str(tmp_path / "b"), sizes=(24,), seed=2)
    sources = [[r["_source"] for s in range(100) for r in MixedFeed([a, b], [3.0, 1.0], ["id"], 0, 0, 1).batch(s, 4)]
               for _ in range(2)]
    assert sources[0] == sources[1]
    assert 0.7 < sources[0].count(0) / 400 < 0.8  # weight 3:1 -> 0.75


def test_gradient_accumulation_2x4_equals_batch_8(tmp_path):
    data = write_toy_dataset(str(tmp_path / "data"))
    runs = {}
    for batch, accum in ((8, 1), (4, 2)):
        spec = toy_spec([data], str(tmp_path / f"b{batch}"), steps=6, batch_size=batch, grad_accum=accum)
        spec.config["toy_dropout"] = 0.0  # dropout masks depend on the micro-batch shapes
        runs[batch] = [r["loss"] for r in run_loop(spec, WorkerEnv()) if "loss" in r], exported(spec.out)
    (loss8, w8), (loss4, w4) = runs[8], runs[4]
    # Same rows, same maths; only the summation order differs (fp32 CPU, measured 1.3e-7 relative).
    assert loss4 == pytest.approx(loss8, rel=1e-6)
    assert all(torch.allclose(w4[k], w8[k], rtol=1e-6, atol=1e-7) for k in w8)


def test_activation_checkpointing_changes_no_number(tmp_path):
    data = write_toy_dataset(str(tmp_path / "data"))
    runs = []
    for ac in (False, True):
        spec = toy_spec([data], str(tmp_path / f"ac{ac}"), steps=4, activation_checkpointing=ac)
        runs.append(([r["loss"] for r in run_loop(spec, WorkerEnv()) if "loss" in r], exported(spec.out)))
    assert runs[0][0] == runs[1][0]  # recomputation (RNG state preserved) is the same computation
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_ema_and_lr_schedule_match_hand_computation(tmp_path):
    data = write_toy_dataset(str(tmp_path / "data"))
    spec = toy_spec([data], str(tmp_path / "run"), steps=8, ema_start=3, ema_decay=0.9, warmup_steps=2)
    spec.stage = RecordingToyStage
    RecordingToyStage.history.clear()
    recs = [r for r in run_loop(spec, WorkerEnv()) if "loss" in r]
    hist = RecordingToyStage.history
    ema = dict(hist[2])  # updates 1..3 copy the weights
    for weights in hist[3:]:
        ema = {k: 0.9 * ema[k] + 0.1 * weights[k] for k in ema}
    out = exported(spec.out)
    assert all(torch.allclose(out[k].double(), ema[k], rtol=0, atol=1e-6) for k in ema)
    assert not torch.equal(out["0.weight"].double(), hist[-1]["0.weight"])  # the EMA, not the live weights
    # Warm-up 1/2, 2/2, then half-cosine from 1e-2 to 1e-3 over updates 3..8.
    expected = [1e-2 * k / 2 for k in (1, 2)] + [1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 6))
                                                 for k in range(3, 9)]
    assert [r["lr"] for r in recs] == pytest.approx(expected, rel=1e-12)
    assert warmup_cosine(2, 8, 0.1)(7) == pytest.approx(0.1)


def test_single_process_loop_learns_and_exports(tmp_path):
    data = write_toy_dataset(str(tmp_path / "data"))
    spec = toy_spec([data], str(tmp_path / "run"), steps=30, ema_start=100)
    records = run_loop(spec, WorkerEnv())
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    first, last = steps[0]["loss"], sum(r["loss"] for r in steps[-5:]) / 5
    assert last < 0.7 * first
    assert set(exported(spec.out)) == {f"{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")}


# ---------------------------------------------------------------- Ray Train (2 CPU workers)


def fit_toy(spec: LoopSpec, workers: int = 2, **ray_settings) -> None:
    import ray.cloudpickle

    from pipelines.train.config import ray_train_config
    from pipelines.train.launch import fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    fit(spec, ray_train_config({**RAY, "num_workers": workers, **ray_settings}))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> str:
    return write_toy_dataset(str(tmp_path_factory.mktemp("toy") / "data"))


@pytest.fixture(scope="module")
def toy_full(ray_cluster, toy_data, tmp_path_factory) -> str:
    """The uninterrupted reference: 12 steps on 2 DDP workers, checkpoints every 4."""
    spec = toy_spec([toy_data], str(tmp_path_factory.mktemp("toy") / "full"), steps=12)
    fit_toy(spec)
    return spec.out


@pytest.mark.timeout(180)
def test_threads_per_worker_sets_the_workers_torch_threads(ray_cluster, toy_data, tmp_path):
    """`ray.threads_per_worker` is what each worker's torch runs with (the demo: 2 / workers);
    without it Ray's default for a fractional-CPU worker, one thread."""
    for threads, expected in ((2, 2), (None, 1)):
        spec = toy_spec([toy_data], str(tmp_path / f"threads-{threads}"), steps=2)
        fit_toy(spec, workers=1, threads_per_worker=threads)
        assert [r["torch_threads"] for r in metrics(spec.out) if r.get("event") == "start"] == [expected]


def test_exact_resume_mid_epoch_then_fault_tolerance(toy_data, toy_full, tmp_path):
    """Stop at step 5 (mid-epoch), rerun to 12: it restarts at 5, not at the step-8 folder an upload
    cut short left behind. In that rerun rank 1 dies after step 10 (max_failures=1): the group
    restarts from the step-8 checkpoint, not from 0. Losses of steps 6..12 and the final weights are
    bitwise those of the uninterrupted run."""
    from pipelines.train.launch import latest_checkpoint_state
    from vgt.train.checkpoint import TrainInputError

    # 64 rows / (2 ranks x 4) = 8 steps per epoch: 5 is mid-epoch, 12 is in epoch 2.
    part = toy_spec([toy_data], str(tmp_path / "part"), steps=12, stop_at=5)
    fit_toy(part)
    assert starts(part.out) == [0]
    # what an interrupted step-8 upload leaves: rank 0's state.json and RNG, nothing of rank 1's
    done, cut = (os.path.join(part.out, "checkpoints", f"step-{s:08d}") for s in (5, 8))
    os.makedirs(cut)
    state = json.loads(Path(done, "state.json").read_text())
    Path(cut, "state.json").write_text(json.dumps({**state, "step": 8}))
    shutil.copy(os.path.join(done, "rng-rank0.safetensors"), cut)
    assert latest_checkpoint_state(part.out)["step"] == 5
    with pytest.raises(TrainInputError, match="written by 2 workers; this run has 1"):
        fit_toy(toy_spec([toy_data], part.out, steps=12), workers=1)
    fit_toy(toy_spec([toy_data], part.out, steps=12), fail_at_step=10, max_failures=1)
    assert starts(part.out) == [0, 5, 8]
    assert json.loads(Path(part.out, "provenance.json").read_text())["resumed_from_step"] == 5
    assert os.path.exists(os.path.join(part.out, "injected-failure-step-10"))
    a, b = losses(toy_full), losses(part.out)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in range(6, 13))  # bitwise
    assert_same_weights(toy_full, part.out)


def test_fsdp2_matches_ddp_and_resumes_from_s3(toy_data, toy_full, s3_bucket):
    """FSDP2 (sharded DCP checkpoints) with the run folder on the loopback S3 server, stopped at
    step 5 and resumed from S3; losses and weights equal DDP's up to reduction order (1e-6)."""
    out = f"s3://{s3_bucket}/fsdp2"
    fit_toy(toy_spec([toy_data], out, steps=12, strategy="fsdp2", stop_at=5))
    shards = vio.glob(f"{out}/checkpoints/step-00000005/dcp/*.safetensors")
    assert len(shards) == 2  # one per rank
    fit_toy(toy_spec([toy_data], out, steps=12, strategy="fsdp2"))
    assert starts(out) == [0, 5]
    ddp, fsdp = losses(toy_full), losses(out)
    assert sorted(fsdp) == list(range(1, 13))
    assert [fsdp[s] for s in fsdp] == pytest.approx([ddp[s] for s in fsdp], rel=1e-6)  # measured 7e-8
    wd, wf = exported(toy_full), exported(out)
    assert all(torch.allclose(wd[k], wf[k], rtol=1e-5, atol=1e-6) for k in wd)


def assert_same_weights(out_a: str, out_b: str) -> None:
    wa, wb = exported(out_a), exported(out_b)
    assert sorted(wa) == sorted(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
