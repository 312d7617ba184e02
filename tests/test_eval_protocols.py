"""`vgt eval`'s benchmark protocols (the reference's GenEval / DPG sampling, explicit flags over them) and the
evaluation actors' precision: bf16 with the matching attention on a GPU, fp32 on the CPU. No Ray: the actors
are built directly, CUDA is monkeypatched where a GPU is needed, and the CPU stands in for it in bf16."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.eval import actors
from ray_jobs._entry import build_parser
from ray_jobs.evaluate import sample_options
from vgt.ae import VGTAutoencoder
from vgt.ar.model import VGTModel
from vgt.eval.protocols import PROTOCOLS, protocol_settings


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> str:
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("protocols") / "pipeline")
    VGTPipeline.from_config(get_preset("tiny")).save_pretrained(path)
    return path


def eval_args(*argv: str):
    import ray_jobs.evaluate as module

    return build_parser(module, "vgt eval").parse_args(list(argv))


# ---------------------------------------------------------------- protocols


@pytest.mark.timeout(30)
def test_protocols_are_the_reference_benchmark_settings():
    """docs/reference.md §4.1: guidance 4.5, linear schedule, random order, one token per step; 30 / 100 steps."""
    common = {"guidance_scale": 4.5, "cfg_schedule": "linear", "order": "random", "parallel_tokens": 1,
              "sampler": "sde"}
    assert PROTOCOLS["geneval"] == {**common, "num_steps": 30}
    assert PROTOCOLS["dpg"] == {**common, "num_steps": 100}
    settings = protocol_settings("dpg")
    settings["num_steps"] = 1
    assert PROTOCOLS["dpg"]["num_steps"] == 100  # a fresh dict each time
    with pytest.raises(ValueError, match="unknown evaluation protocol 'gen'"):
        protocol_settings("gen")
    from vgt.config import SampleConfig

    SampleConfig().resolve(**PROTOCOLS["geneval"])  # every setting is a sampling setting


@pytest.mark.timeout(30)
def test_protocol_selection_and_explicit_flags_over_it(capsys):
    base = ["--model", "M", "--out", "O", "--prompts", "P"]
    assert sample_options(eval_args("geneval-images", *base)) == {}  # no protocol: the folder's config.sample
    assert sample_options(eval_args("geneval-images", *base, "--protocol", "geneval")) == PROTOCOLS["geneval"]
    assert sample_options(eval_args("dpg-images", *base, "--protocol", "dpg")) == PROTOCOLS["dpg"]
    got = sample_options(eval_args("dpg-images", *base, "--protocol", "geneval", "--num-steps", "50",
                                   "--guidance-scale", "3"))
    assert got == {**PROTOCOLS["geneval"], "num_steps": 50, "guidance_scale": 3.0}
    assert sample_options(eval_args("geneval-images", *base, "--parallel-tokens", "4")) == {"parallel_tokens": 4}
    with pytest.raises(SystemExit) as bad:
        eval_args("geneval-images", *base, "--protocol", "mjhq")
    assert bad.value.code == 2 and "invalid choice: 'mjhq'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the shapes benchmark has its own prompts and no reference protocol
        eval_args("shapes", "--model", "M", "--protocol", "geneval")


@pytest.mark.timeout(60)
def test_eval_command_hands_the_protocol_to_generation(tiny_pipeline, tmp_path, monkeypatch, capsys):
    import pipelines.eval.benchmarks as benchmarks
    from ray_jobs.cli import main as cli

    calls = []
    monkeypatch.setattr(benchmarks, "dpg_images", lambda model, prompts, out, seed, sample, **ray: calls.append(
        sample) or 7)
    (tmp_path / "prompts").mkdir()
    assert cli(["eval", "dpg-images", "--model", tiny_pipeline, "--prompts", str(tmp_path / "prompts"),
                "--out", str(tmp_path / "out"), "--protocol", "dpg", "--parallel-tokens", "2"]) == 0
    assert calls == [{**PROTOCOLS["dpg"], "parallel_tokens": 2}]
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "dpg" and result["sample"] == calls[0] and result["prompts"] == 7


# ---------------------------------------------------------------- precision of the actors


@pytest.mark.timeout(30)
def test_actors_compute_in_bf16_on_a_gpu_and_fp32_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert actors.placement() == (torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert actors.placement() == (torch.device("cpu"), torch.float32)


@pytest.fixture
def attention_calls(monkeypatch) -> list:
    calls = []
    for cls in (VGTModel, VGTAutoencoder):
        real = cls.use_attention
        monkeypatch.setattr(cls, "use_attention", lambda self, device, dtype, real=real, name=cls.__name__: calls.append(
            (name, torch.device(device).type, dtype)) or real(self, device, dtype))
    return calls


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["cpu-fp32", "gpu-bf16-on-cpu"])
def test_generation_actor_runs_the_pipeline_in_the_placement_dtype(tiny_pipeline, monkeypatch, attention_calls,
                                                                   dtype):
    monkeypatch.setattr(actors, "placement", lambda: (torch.device("cpu"), dtype))  # the CPU stands in for a GPU
    actor = actors.GenerateActor(tiny_pipeline, seed=0, sample={"num_steps": 2, "parallel_tokens": 4},
                                 torch_threads=1)
    assert {p.dtype for p in actor.pipe.model.parameters()} == {dtype}
    assert {p.dtype for p in actor.pipe.autoencoder.parameters()} == {dtype}
    assert ("VGTModel", "cpu", dtype) in attention_calls and ("VGTAutoencoder", "cpu", dtype) in attention_calls
    out = actor({"image_id": np.array([0, 1]), "prompt": np.array(["a red circle", "two squares"]),
                 "prompt_index": np.array([0, 1]), "sample": np.array([0, 0])})
    images = [Image.open(io.BytesIO(png)) for png in out["png"]]
    assert [im.size for im in images] == [(112, 112)] * 2


@pytest.mark.timeout(120)
def test_recon_actor_runs_the_ae_in_bf16_and_measures_in_fp32(tiny_pipeline, monkeypatch, attention_calls):
    from vgt.eval.recon import evaluate_batch

    monkeypatch.setattr(actors, "PreparedDataset", lambda uri: None)  # no data needed to build the actor
    monkeypatch.setattr(actors, "placement", lambda: (torch.device("cpu"), torch.bfloat16))
    actor = actors.ReconActor("data", f"{tiny_pipeline}/ae", "standard", fd=False, batch_size=2, torch_threads=1)
    assert {p.dtype for p in actor.ae.parameters()} == {torch.bfloat16}
    assert attention_calls == [("VGTAutoencoder", "cpu", torch.bfloat16)]
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(2):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    bf16 = evaluate_batch(actor.ae, pngs, 112, "standard")
    fp32 = evaluate_batch(VGTAutoencoder.from_pretrained(f"{tiny_pipeline}/ae").eval(), pngs, 112, "standard")
    assert np.isfinite(bf16["psnr"]).all() and bf16["psnr"].dtype != np.float16
    np.testing.assert_allclose(bf16["psnr"], fp32["psnr"], atol=0.5)  # dB; bf16 weights of a random AE
