"""LoRA on the AR stage's LLM (peft): zero-init equivalence, which parameters train, exact resume with
gradient accumulation + activation checkpointing + adapter dropout, merged export vs base + adapter folder,
peft's own adapter format, a wrong base refused, exact resume and the merged export under FSDP2 (one gloo rank), and
an FSDP2 run on 2 Ray Train workers (gloo).

The base is a random tiny pipeline folder (what `--init` names); the data 8 prepared gradient images
written without Ray. In-process runs checkpoint through the loop's own `report` hook."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vgt.config import to_dict
from vgt.data.layout import FORMAT_VERSION, KIND, part_uri, write_manifest
from vgt.presets import get_preset
from vgt.train.distributed import WorkerEnv
from vgt.train.loop import LoopSpec, run_loop

RES = 112
LORA = {"train.ar_pretrain.lora.rank": 4, "train.ar_pretrain.lora.dropout": 0.1}
STAGE = {"train.sample_every": 0, "train.activation_checkpointing": True, "train.ar_pretrain.batch_size": 2,
         "train.ar_pretrain.grad_accum": 2,
         "train.ar_pretrain.warmup_steps": 1, "train.ar_pretrain.lr": 1e-2, "train.ar_pretrain.ema_start": 2,
         "train.ar_pretrain.ema_decay": 0.5, "train.checkpoint_every": 2}


def save_base(folder: str, seed: int) -> str:
    """A random tiny pipeline whose flow head looks trained: its zero-initialised (adaLN) tensors drawn at
    random, so the LLM's conditions get gradients from the first step."""
    from vgt.pipeline import VGTPipeline

    torch.manual_seed(seed)
    pipe = VGTPipeline.from_config(get_preset("tiny"))
    with torch.no_grad():
        for p in pipe.model.head.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return save_base(str(tmp_path_factory.mktemp("lora") / "base"), seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """8 two-colour gradients (140 x 112 PNG) with captions, as `vgt prep` lays them out."""
    folder = str(tmp_path_factory.mktemp("lora") / "data")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:140]
    rows = []
    for i in range(8):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = ((xx + yy) / (140 + RES))[..., None]
        buf = io.BytesIO()
        Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)).save(buf, format="PNG")
        rows.append({"key": f"toy/0/{i}", "caption": f"a gradient from {tuple(a)} to {tuple(b)}",
                     "image": buf.getvalue(), "width": 140, "height": RES, "source": "toy"})
    pq.write_table(pa.Table.from_pylist(rows), part_uri(folder, "part-toy-0"))
    write_manifest(folder, {"kind": KIND, "format_version": FORMAT_VERSION, "config": to_dict(get_preset("tiny")),
                            "parts": {"part-toy-0": {"complete": True, "rows_out": 8, "source": "toy"}}})
    return folder


def spec(base: str, data: str, out: str, steps: int = 4, **overrides) -> LoopSpec:
    cfg = get_preset("tiny", {**STAGE, **LORA, **overrides})
    return LoopSpec(stage="ar", stage_key="ar_pretrain", config=to_dict(cfg), data=[data], out=out, steps=steps,
                    init=base, ae=os.path.join(base, "ae"))


class Checkpoints:
    """The loop's `report` hook in a plain process: keeps each checkpoint folder under `root`."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, metrics, folder, name):
        if folder is not None:
            shutil.copytree(folder, os.path.join(self.root, name))


class Resume:
    def __init__(self, folder: str):
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield self.folder


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_zero_b_is_the_base_model_and_only_adapters_head_queries_projections_train(base, data, tmp_path):
    from vgt.ar import lora
    from vgt.ar.sampling import image_generator
    from vgt.pipeline import VGTPipeline
    from vgt.train.ar_stage import ARStage

    pipe = VGTPipeline.from_pretrained(base)
    latents = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(1))

    def outputs(model):
        loss = model(["a red square", "a blue circle"], latents=latents, generator=torch.Generator().manual_seed(2))
        sampled = pipe.sample_latents(["a red square"], seed=3, num_steps=2, parallel_tokens=4)
        return loss["loss"].detach(), sampled

    before = outputs(pipe.model)
    lora.inject(pipe.model, lora.peft_config(get_preset("tiny", LORA).train.ar_pretrain.lora))
    after = outputs(pipe.model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # exactly, not approximately

    torch.manual_seed(0)
    stage = ARStage(spec(base, data, str(tmp_path)), WorkerEnv())
    named = dict(stage.model.named_parameters())
    ids = {id(p): n for n, p in named.items()}
    optimised = {ids[id(p)] for g in stage.trainables.optimizers["model"].param_groups for p in g["params"]}
    expected = {n for n in named if ".lora_" in n or not n.startswith("llm.")}
    assert optimised == expected == {n for n, p in named.items() if p.requires_grad}
    assert any(n.startswith("head.") for n in expected) and any(n.startswith("queries.") for n in expected)
    assert {"in_proj.weight", "out_proj.weight"} <= expected
    # what `vgt info` counts on the meta device is what peft adds
    from vgt.footprint import lora_parameters, meta_models

    _, meta = meta_models(get_preset("tiny"))
    assert sum(p.numel() for n, p in named.items() if ".lora_" in n) == \
        lora_parameters(meta, get_preset("tiny").train.ar_pretrain.lora.target_modules, 4)
    start = {n: p.detach().clone() for n, p in named.items()}
    from vgt.data import PreparedDataset

    ds = PreparedDataset(data)
    rows = ds.read_part(ds.parts[0], ["caption", "image"]).to_pylist()[:4]
    stage.step(rows, 0, torch.Generator().manual_seed(0))
    moved = {n for n, p in named.items() if not torch.equal(p, start[n])}
    # every trained tensor moves except A (its first gradient is 0 with B = 0) and what no loss reaches
    assert moved <= expected and any(".lora_B." in n for n in moved) and any(n.startswith("head.") for n in moved)
    assert not any(n.startswith("llm.") and ".lora_" not in n for n in moved)


def test_cli_refuses_bad_lora_settings_before_ray(base, data, tmp_path, capsys):
    from ray_jobs.cli import main

    argv = ["train-ar", "--preset", "tiny", "--stage", "pretrain", "--ae", os.path.join(base, "ae"), "--data", data,
            "--out", str(tmp_path / "run"), "--set", "train.ar_pretrain.lora.rank=4"]
    for extra, words in ((["train.ar_pretrain.lora.export=adapter"], "lora.export=adapter needs --init"),
                         (["train.ar_pretrain.lora.export=both"], "lora.export must be 'merged' or 'adapter'")):
        assert main(argv + extra) == 2  # a bad setting is a usage error, as a bad override
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not os.path.exists(tmp_path / "run")


def test_info_shows_lora_beside_full_tuning(capsys):
    from ray_jobs.cli import main

    assert main(["info", "--preset", "internvl3-1b", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    # Qwen2.5-0.5B: 24 layers, hidden 896, k/v 2 x 64, MLP 4864; rank 16 on q, k, v, o, gate, up, down
    per_layer = 16 * ((896 + 896) * 2 + (896 + 128) * 2 + (896 + 4864) * 3)
    assert row["lora_rank"] == 16
    assert row["ar_lora_trainable"] == row["ar_params"] - row["ar_llm_params"] + 24 * per_layer == 167_613_216
    frozen = row["ae_params"] + row["ar_llm_params"]  # bf16 copies only
    assert row["ar_lora_train_gib"] == round((16 * row["ar_lora_trainable"] + 2 * frozen) / 2**30, 2) == 4.3
    assert row["ar_train_gib"] == 10.6  # full tuning, beside it


@contextlib.contextmanager
def one_rank_gloo():
    """A gloo process group of this process alone: DDP wraps as on a cluster, reductions over one rank."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_resume_is_bitwise_and_merged_export_equals_base_plus_adapter(base, data, tmp_path):
    """4 steps uninterrupted under DDP (one gloo rank; adapter export) vs 2 + 2 resumed in a plain process
    (merged export), accumulation 2, activation checkpointing, adapter dropout: the same losses and final
    checkpoint bit for bit; the merged pipeline computes what the base + adapter does (1e-5)."""
    from peft import PeftModel

    from vgt.adapter import read_adapter
    from vgt.artifacts import ArtifactError
    from vgt.pipeline import VGTPipeline

    full = Checkpoints(str(tmp_path / "full-ckpt"))
    with one_rank_gloo():
        a = run_loop(spec(base, data, str(tmp_path / "full"), **{"train.ar_pretrain.lora.export": "adapter"}),
                     WorkerEnv(strategy="ddp"), report=full)
    part = Checkpoints(str(tmp_path / "part-ckpt"))
    run_loop(spec(base, data, str(tmp_path / "part"), **{"train.stop_at": 2}), WorkerEnv(), report=part)
    assert sorted(os.listdir(part.root)) == ["step-00000002"]
    b = run_loop(spec(base, data, str(tmp_path / "part")), WorkerEnv(), report=part,
                 checkpoint=Resume(os.path.join(part.root, "step-00000002")))
    la, lb = losses(a), losses(b)
    assert sorted(la) == [1, 2, 3, 4] and sorted(lb) == [1, 2, 3, 4]
    assert all(la[s] == lb[s] for s in (3, 4))  # bitwise
    for kind in ("model", "ema", "optim"):
        ta, tb = (load_file(os.path.join(c.root, "step-00000004", f"{kind}-model.safetensors")) for c in (full, part))
        assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), kind
    assert any(".lora_B." in k for k in ta)

    merged = VGTPipeline.from_pretrained(str(tmp_path / "part" / "export"))
    assert not any(".lora_" in k or "base_layer" in k for k in merged.model.state_dict())
    adapter_dir = str(tmp_path / "full" / "export")
    adapted = VGTPipeline.from_pretrained(adapter_dir)  # loads its base by the recorded path
    latents = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = [p.model(["a red square", "a blue circle"], latents=latents, generator=torch.Generator().manual_seed(2))
                for p in (merged, adapted)]
    # W + s B A folded in vs x W + s (x A) B: fp32 rounding only (the policy's 1e-5)
    assert torch.allclose(cond[0]["loss"], cond[1]["loss"], atol=1e-5, rtol=1e-5)
    h = torch.randn(1, 6, merged.model.llm.hidden_size)
    with torch.no_grad():
        assert torch.allclose(merged.model.llm(h)[0], adapted.model.llm(h)[0], atol=1e-5, rtol=1e-5)
    kwargs = dict(seed=5, num_steps=2, parallel_tokens=4)
    x, y = (p.sample_latents(["a gradient from red to blue"], **kwargs) for p in (merged, adapted))
    assert torch.allclose(x, y, atol=1e-5, rtol=1e-5), (x - y).abs().max()
    assert not torch.allclose(x, VGTPipeline.from_pretrained(base).sample_latents(
        ["a gradient from red to blue"], **kwargs), atol=1e-2)  # the tuning changed what it samples

    # the LLM part is peft's own format: PeftModel reads it onto the base decoder
    plain = VGTPipeline.from_pretrained(base).model
    peft_llm = PeftModel.from_pretrained(plain.llm.model, os.path.join(adapter_dir, "llm_adapter")).eval()
    with torch.no_grad():
        ref = adapted.model.llm(h)[0]
        got = peft_llm(inputs_embeds=h).last_hidden_state
    assert torch.allclose(ref, got, atol=1e-5)

    other = save_base(str(tmp_path / "other"), seed=1)
    from vgt.adapter import load_adapter_pipeline

    with pytest.raises(ArtifactError, match="was trained on a base pipeline with AR fingerprint"):
        load_adapter_pipeline(adapter_dir, base=other)
    assert read_adapter(adapter_dir).base.path == base


def dcp_tensors(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of an FSDP2 checkpoint folder's dcp/ shards (full tensors: one rank wrote them)."""
    out = {}
    for name in sorted(os.listdir(os.path.join(folder, "dcp"))):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, "dcp", name)))
    return out


@pytest.mark.timeout(240)
def test_fsdp2_resume_is_bitwise_and_merged_export_is_the_gathered_ema_merged(base, data, tmp_path):
    """Under FSDP2 (one gloo rank: DTensor parameters, DCP checkpoints): 4 steps uninterrupted vs 2 + 2 resumed
    from the step-2 DCP checkpoint, accumulation 2, activation checkpointing, adapter dropout: the same losses and
    final checkpoint (weights, EMA, optimiser) bit for bit. The merged export is exactly `merge_state_dict` of the
    full state dict (frozen weights + EMA of what trains) the last checkpoint holds. (Two ranks: the Ray test.)"""
    from vgt.ar import lora
    from vgt.pipeline import VGTPipeline

    fsdp2 = WorkerEnv(strategy="fsdp2")
    full, part = Checkpoints(str(tmp_path / "full-ckpt")), Checkpoints(str(tmp_path / "part-ckpt"))
    with one_rank_gloo():
        a = run_loop(spec(base, data, str(tmp_path / "full")), fsdp2, report=full)
        run_loop(spec(base, data, str(tmp_path / "part"), **{"train.stop_at": 2}), fsdp2, report=part)
        b = run_loop(spec(base, data, str(tmp_path / "part")), fsdp2, report=part,
                     checkpoint=Resume(os.path.join(part.root, "step-00000002")))
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3, 4] and all(la[s] == lb[s] for s in (3, 4))  # bitwise
    ta, tb = (dcp_tensors(os.path.join(c.root, "step-00000004")) for c in (full, part))
    assert sorted(ta) == sorted(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert {k.split(".")[0] for k in ta} == {"model", "ema", "optim"} and any(".lora_B." in k for k in ta)

    state = {k[len("model.model."):]: v for k, v in ta.items() if k.startswith("model.model.")}
    state.update({k[len("ema.model."):]: v for k, v in ta.items() if k.startswith("ema.model.")})
    config = lora.peft_config(get_preset("tiny", LORA).train.ar_pretrain.lora)
    expected = lora.merge_state_dict(state, config)
    exported = VGTPipeline.from_pretrained(str(tmp_path / "part" / "export")).model.state_dict()
    assert sorted(exported) == sorted(expected) and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert not torch.equal(expected["llm.model.layers.0.self_attn.q_proj.weight"],
                           state["llm.model.layers.0.self_attn.q_proj.base_layer.weight"])  # B A folded in


@pytest.mark.timeout(300)
def test_lora_under_fsdp2_on_two_ray_train_workers(ray_cluster, base, data, tmp_path):
    """`vgt train-ar --set train.ar_pretrain.lora.rank=4` on 2 gloo workers under FSDP2 with gradient
    accumulation and activation checkpointing; the merged export (from the gathered full state dict) is a
    plain pipeline whose LLM differs from the base only in the LoRA targets. (DDP: the resume test.)"""
    from ray_jobs.cli import main

    from vgt.pipeline import VGTPipeline

    out = str(tmp_path / "run")
    sets = [f"{k}={json.dumps(v)}" for k, v in {**STAGE, **LORA}.items()] + [
        "train.strategy=fsdp2", "train.ar_pretrain.batch_size=1",
        "ray.cpus_per_worker=0.5", "ray.max_failures=0", "train.log_every=1"]
    assert main(["train-ar", "--preset", "tiny", "--stage", "pretrain", "--init", base, "--ae",
                 os.path.join(base, "ae"), "--data", data, "--out", out, "--steps", "1", "--num-workers", "2",
                 "--set", *sets]) == 0
    trained = VGTPipeline.from_pretrained(os.path.join(out, "export")).model.state_dict()
    start = VGTPipeline.from_pretrained(base).model.state_dict()
    assert sorted(trained) == sorted(start)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    llm = [k for k in start if k.startswith("llm.")]
    changed = {k for k in llm if not torch.equal(trained[k], start[k])}
    assert changed and all(k.endswith(".weight") and k.split(".")[-2] in targets for k in changed)
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith("head."))
