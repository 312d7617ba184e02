"""AE and AR training stages on the tiny preset, from `vgt prep` output: CLI runs on 2 Ray Train
workers (DDP for the AE with GAN + LeCam, FSDP2 + activation checkpointing for the AR), exports
that load and reconstruct / generate, stored vs on-the-fly latents, and learning on a fixed dataset.

Learning figures (12 AE steps, 20 AR steps, batch 4, 8 images, one process): the AE's
reconstruction MSE on the centre crops falls to 0.40x its starting value (asserted < 0.5); the AR
flow loss, mean of the last 3 steps, to 0.39x the first step's (asserted < 0.5).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vgt.train.distributed import WorkerEnv
from vgt.train.loop import LoopSpec, run_loop
from vgt import io as vio
from vgt.config import to_dict
from vgt.presets import get_preset

RES = 112  # the tiny preset's resolution
FAST = ["ray.cpus_per_worker=0.5", "train.log_every=1", "train.checkpoint_every=2", "train.sample_every=3",
        "ray.max_failures=0"]


def gradient_images(n: int, seed: int = 0, size=(140, 112)) -> list[tuple[bytes, str]]:
    """Two-colour gradients, wider than tall (so crops move), PNG bytes + a caption naming the colours."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = ((xx + yy * rng.uniform(0.2, 2)) / (w + h))[..., None]
        buf = io.BytesIO()
        Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)).save(buf, format="PNG")
        out.append((buf.getvalue(), f"a gradient from {tuple(a)} to {tuple(b)}"))
    return out


@pytest.fixture(scope="module")
def prepared(ray_cluster, tmp_path_factory) -> str:
    from pipelines.prep.dataset import run_prep

    root = tmp_path_factory.mktemp("stages")
    images, captions = zip(*gradient_images(8))
    pq.write_table(pa.table({"image": list(images), "caption": list(captions)}), root / "raw.parquet")
    run_prep([str(root / "raw.parquet")], str(root / "prepared"), get_preset("tiny"))
    return str(root / "prepared")


def cli(*argv: str) -> int:
    from ray_jobs.cli import main

    return main(list(argv))


@pytest.fixture(scope="module")
def ae_run(prepared, tmp_path_factory) -> str:
    """Stage 1 through the CLI: 2 DDP workers, 3 steps, discriminator + LeCam from the 2nd step."""
    out = str(tmp_path_factory.mktemp("ae") / "run")
    assert cli("train-ae", "--preset", "tiny", "--stage", "stage1", "--data", prepared, "--out", out,
               "--steps", "3", "--num-workers", "2", "--set", *FAST, "train.ae_stage1.disc_start=1",
               "train.ae_stage1.disc_hidden=32", "train.ae_stage1.batch_size=2") == 0
    return out


def records(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def test_ae_cli_run_exports_a_loadable_ae_and_all_reduces_lecam(ae_run):
    from safetensors.torch import load_file

    from vgt.ae import VGTAutoencoder

    recs = records(ae_run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert "disc_loss" not in recs[0] and all("disc_loss" in r for r in recs[1:])
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(16 * r["samples_per_s"]) for r in recs)
    ae = VGTAutoencoder.from_pretrained(os.path.join(ae_run, "export"))
    with torch.no_grad():
        recon = ae(torch.zeros(1, 3, RES, RES))
    assert recon.shape == (1, 3, RES, RES) and torch.isfinite(recon).all()
    assert not any(k.startswith(("teacher.", "disc")) for k in load_file(os.path.join(ae_run, "export",
                                                                                       "model.safetensors")))
    for name in ("config.json", "provenance.json", "samples/step-00000003.png"):
        assert os.path.exists(os.path.join(ae_run, name)), name
    # The LeCam EMAs equal the EMA of the rank-averaged batch means (logged), not of rank 0's alone.
    ckpt = os.path.join(ae_run, "checkpoints", "step-00000003")
    lecam = load_file(os.path.join(ckpt, "model-lecam.safetensors"))
    # The teacher is still the initial vision tower (the loop seeds before building the stage).
    torch.manual_seed(get_preset("tiny").train.seed)
    initial = VGTAutoencoder(get_preset("tiny").ae).encoder.state_dict()
    trained = load_file(os.path.join(ckpt, "model-ae.safetensors"))
    assert all(torch.equal(trained[f"model.ae.teacher.{k}"], v) for k, v in initial.items())
    assert not all(torch.equal(trained[f"model.ae.ae.encoder.{k}"], v) for k, v in initial.items())
    decay = get_preset("tiny").train.ae_stage1.lecam_decay
    for key, metric in (("ema_real", "disc_real_mean"), ("ema_fake", "disc_fake_mean")):
        expected = 0.0
        for r in recs[1:]:
            expected = decay * expected + (1 - decay) * r[metric]
        assert lecam[f"model.lecam.{key}"].item() == pytest.approx(expected, rel=1e-5, abs=1e-9)
    kept = sorted(d for d in os.listdir(os.path.join(ae_run, "checkpoints")) if d.startswith("step-"))
    assert kept == ["step-00000002", "step-00000003"]  # keep_checkpoints=2


def ae_stage(cfg, tmp_path):
    from vgt.train.ae_stage import AEStage

    return AEStage(LoopSpec(stage="", stage_key="ae_stage1", config=to_dict(cfg), data=[], out=str(tmp_path),
                            steps=10), WorkerEnv())


def lr_by_name(stage) -> dict[str, float]:
    names = {id(p): n for n, p in stage.ae.named_parameters()}
    return {names[id(p)]: g["initial_lr"] for g in stage.trainables.optimizers["ae"].param_groups
            for p in g["params"]}


@pytest.mark.timeout(120)
def test_ae_optimiser_groups_follow_the_spec(tmp_path):
    from vgt.train.optim import NO_DECAY_KEYWORDS

    cfg = get_preset("tiny")
    stage = ae_stage(cfg, tmp_path)
    s = cfg.train.ae_stage1
    names = {id(p): n for n, p in stage.ae.named_parameters()}
    groups = stage.trainables.optimizers["ae"].param_groups
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(names)  # each trained once
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            # the reference: the vision tower at encoder_lr_mult, the projector (its own `mlp1`) at 1.0
            tower = name.startswith("encoder.") and not name.startswith("encoder.projector.")
            assert g["initial_lr"] == s.lr * (s.encoder_lr_mult if tower else 1.0), name
            no_decay = p.ndim < 2 or any(k in name for k in NO_DECAY_KEYWORDS)
            assert g["weight_decay"] == (0.0 if no_decay else s.weight_decay), name
    assert any(n.startswith("encoder.projector.") for n in names.values())
    assert stage.trainables.optimizers["ae"].defaults["betas"] == (0.9, 0.95)
    disc = stage.trainables.optimizers["disc"].param_groups
    assert {g["initial_lr"] for g in disc} == {s.disc_lr}
    assert not any(p.requires_grad for p in stage.trainables.modules["ae"].teacher.parameters())


@pytest.mark.timeout(120)
def test_ae_projector_lr_switch_and_families(tmp_path):
    cfg = get_preset("tiny", ["train.ae_stage1.projector_at_encoder_lr=true"])
    s = cfg.train.ae_stage1
    lrs = lr_by_name(ae_stage(cfg, tmp_path))
    assert lrs["encoder.projector.linear_1.weight"] == s.lr * s.encoder_lr_mult  # the earlier grouping
    assert all(lr == s.lr * (s.encoder_lr_mult if n.startswith("encoder.") else 1.0) for n, lr in lrs.items())
    # Qwen2.5-VL's merger is inside its vision tower (also in the reference): tower LR either way
    for switch in ("false", "true"):
        cfg = get_preset("tiny-qwen", [f"train.ae_stage1.projector_at_encoder_lr={switch}"])
        s = cfg.train.ae_stage1
        lrs = lr_by_name(ae_stage(cfg, tmp_path))
        assert lrs["encoder.visual.merger.mlp.0.weight"] == s.lr * s.encoder_lr_mult
        assert all(lr == s.lr * (s.encoder_lr_mult if n.startswith("encoder.") else 1.0) for n, lr in lrs.items())


@pytest.mark.timeout(120)
def test_demo_ae_learning_rates_do_not_depend_on_the_projector_switch(tmp_path):
    """The demo preset trains its encoder at the base LR (encoder_lr_mult 1.0): both groupings agree."""
    lrs = [lr_by_name(ae_stage(get_preset("demo", [f"train.ae_stage1.projector_at_encoder_lr={v}"]), tmp_path))
           for v in ("false", "true")]
    assert get_preset("demo").train.ae_stage1.encoder_lr_mult == 1.0
    assert lrs[0] == lrs[1] and set(lrs[0].values()) == {get_preset("demo").train.ae_stage1.lr}


def test_stage2_and_sft_need_init(prepared, tmp_path, capsys):
    assert cli("train-ae", "--preset", "tiny", "--stage", "stage2", "--data", prepared,
               "--out", str(tmp_path / "x")) == 2
    assert "--init" in capsys.readouterr().err


def test_ae_learns_then_stage2_continues_from_its_export(prepared, tmp_path):
    from vgt.ae import VGTAutoencoder
    from vgt.data import PreparedDataset
    from vgt.data.encode import center_crop_pixels

    overrides = {"train.ae_stage1.disc_start": 1000, "train.ae_stage1.warmup_steps": 3, "train.ae_stage1.lr": 4e-3,
                 "train.ae_stage1.end_lr": 4e-4, "train.ae_stage1.batch_size": 4, "train.sample_every": 0}
    cfg = get_preset("tiny", overrides)
    spec = LoopSpec(stage="ae", stage_key="ae_stage1", config=to_dict(cfg),
                    data=[prepared], out=str(tmp_path / "s1"), steps=12)
    ds = PreparedDataset(prepared)
    x01 = (center_crop_pixels(ds.read_part(ds.parts[0], ["image"]).column("image").to_pylist(), RES) + 1) / 2
    torch.manual_seed(cfg.train.seed)  # the loop seeds the same way: these are the step-0 weights
    before = VGTAutoencoder(cfg.ae).eval()
    run_loop(spec, WorkerEnv())
    after = VGTAutoencoder.from_pretrained(os.path.join(spec.out, "export"))
    with torch.no_grad():
        mse = [torch.nn.functional.mse_loss((m(x01 * 2 - 1) + 1) / 2, x01).item() for m in (before, after)]
    assert mse[1] < 0.5 * mse[0], mse

    stage2 = LoopSpec(stage="ae", stage_key="ae_stage2", config=to_dict(cfg),
                      data=[prepared], out=str(tmp_path / "s2"), steps=1, init=os.path.join(spec.out, "export"))
    run_loop(stage2, WorkerEnv())
    ae2 = VGTAutoencoder.from_pretrained(os.path.join(stage2.out, "export"))
    assert (ae2.config.encoder_norm, ae2.config.noise_gamma) == (True, 0.1)  # stage 2's latent switches


@pytest.fixture(scope="module")
def with_latents(prepared, ae_run, tmp_path_factory) -> str:
    """The prepared dataset plus the `latent` column of ae_run's export (vgt prep-latents)."""
    from pipelines.prep.add_latents import run_prep_latents

    out = str(tmp_path_factory.mktemp("latents") / "prepared")
    run_prep_latents(prepared, os.path.join(ae_run, "export"), output=out)
    return out


def ar_spec(data: list[str], ae: str, out: str, steps: int, stage_key: str = "ar_pretrain", init=None,
            **overrides) -> LoopSpec:
    cfg = get_preset("tiny", {"train.sample_every": 0, **overrides})
    return LoopSpec(stage="ar", stage_key=stage_key, config=to_dict(cfg), data=data,
                    out=out, steps=steps, ae=ae, init=init)


def test_ar_groups_and_stored_latents_equal_on_the_fly_encoding(with_latents, ae_run, tmp_path):
    from vgt.train.ar_stage import ARStage
    from vgt.data import PreparedDataset

    stage = ARStage(ar_spec([with_latents], os.path.join(ae_run, "export"), str(tmp_path), 1), WorkerEnv())
    for g in stage.trainables.optimizers["model"].param_groups:  # wd 0.05 on >= 2-d tensors only
        assert {p.ndim >= 2 for p in g["params"]} == {g["weight_decay"] == 0.05}
    ds = PreparedDataset(with_latents)
    assert stage.columns(ds) == ["caption", "latent", "latent_shape"]
    rows = ds.read_part(ds.parts[0], ["caption", "image", "latent", "latent_shape"],
                        ae_fingerprint=stage.ae.fingerprint).to_pylist()
    stored, _ = stage.inputs(rows)
    encoded, _ = stage.inputs([{"caption": r["caption"], "image": r["image"]} for r in rows])
    assert stored.shape == (8, 32, 4, 4)
    # Both are fp16 casts of the same centre-crop encoding (prep-latents encoded batches of 8, so
    # this is the same computation): equal.
    assert torch.equal(stored, encoded)


def test_ar_cli_fsdp2_mixed_sources_exports_a_pipeline_that_generates(prepared, with_latents, ae_run, tmp_path,
                                                                      monkeypatch):
    from vgt.pipeline import VGTPipeline

    # Paths relative to the caller's directory, as `make demo` passes them: the Ray workers run elsewhere.
    monkeypatch.chdir(tmp_path)
    ae, latents, raw = (os.path.relpath(p) for p in (os.path.join(ae_run, "export"), with_latents, prepared))
    out = "ar"
    # Source 1 has this AE's latents, source 2 is encoded on the fly; weights 3:1.
    assert cli("train-ar", "--preset", "tiny", "--stage", "pretrain", "--ae", ae,
               "--out", out, "--steps", "3", "--num-workers", "2", "--data", f"{latents}=3", f"{raw}=1",
               "--set", *FAST, "train.strategy=fsdp2", "train.activation_checkpointing=true",
               "train.ar_pretrain.batch_size=2", "train.ar_pretrain.ema_start=1") == 0
    recs = records(out)
    assert [r["step"] for r in recs] == [1, 2, 3] and all(np.isfinite(r["flow_loss"]) for r in recs)
    assert all(r["tokens_per_s"] > 32 * r["samples_per_s"] for r in recs)  # 32 image tokens + the prompt
    assert len(vio.glob(f"{out}/checkpoints/step-00000003/dcp/*.safetensors")) == 2
    pipe = VGTPipeline.from_pretrained(os.path.join(out, "export"))
    images = pipe(["a gradient from red to blue"], seed=0, num_steps=2, parallel_tokens=4)
    assert images[0].size == (RES, RES)
    assert os.path.exists(os.path.join(out, "samples", "step-00000003.png"))


def test_ar_learns_then_sft_continues_from_its_export(with_latents, ae_run, tmp_path):
    from vgt.pipeline import VGTPipeline

    ae = os.path.join(ae_run, "export")
    spec = ar_spec([with_latents], ae, str(tmp_path / "pre"), 20, **{
        "train.ar_pretrain.warmup_steps": 3, "train.ar_pretrain.lr": 2e-3, "train.ar_pretrain.end_lr": 2e-4,
        "train.ar_pretrain.batch_size": 4, "train.ar_pretrain.ema_start": 100})
    flow = [r["flow_loss"] for r in run_loop(spec, WorkerEnv()) if "flow_loss" in r]
    assert sum(flow[-3:]) / 3 < 0.5 * flow[0], flow
    sft = ar_spec([with_latents], ae, str(tmp_path / "sft"), 1, stage_key="ar_sft",
                  init=os.path.join(spec.out, "export"))
    run_loop(sft, WorkerEnv())
    assert VGTPipeline.from_pretrained(os.path.join(sft.out, "export"))(["x"], seed=0, num_steps=2)[0].size == (RES, RES)
