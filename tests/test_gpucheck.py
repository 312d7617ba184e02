"""`vgt gpu-check` and `make gpu-bundle` on the CPU (README "Check a GPU").

The check's whole code path runs end to end on tiny models (`--allow-cpu --preset tiny`, in a fresh
process, so that what it imports is what it needs); its FLOP count is checked against torch's own
counter; without CUDA it refuses in one line. The bundle is built without its downloads (PyPI is not
offline-safe; `make gpu-bundle` was run by hand: README) and its install script is run against this
environment with pip's --dry-run, so the offline resolution, the version gate and the hand-over to the
check are real.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
STEPS = 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One CPU smoke run in a fresh interpreter: (exit status, the JSON, the markdown table)."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, "-m", "vgt.gpucheck", "--allow-cpu", "--preset", "tiny", "--out", str(out),
                           "--steps", str(STEPS), "--peak-tflops", "0.5", "--set", "train.activation_checkpointing=true"],
                          capture_output=True, text=True, timeout=240, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu-check.json").read_text()), (out / "gpu-check.md").read_text(), proc.stdout


@pytest.mark.timeout(300)
def test_tiny_cpu_run_measures_every_section(tiny_run):
    result, table, stdout = tiny_run
    assert result["ok"] and not result["errors"]
    assert result["environment"]["imported_not_bundled"] == []  # no ray, pyarrow, s3fs
    grid = result["settings"]["grid"]
    assert grid == [4, 4] and result["settings"]["resolution"] == 112

    train = result["training"]
    for name in ("one_process", "fsdp2"):
        r = train[name]
        assert r["activation_checkpointing"] is True  # --set reached the config
        assert r["seq"] == r["prompt_tokens"] + 1 + 2 * 16
        assert len(r["losses"]) == STEPS + 2 and all(math.isfinite(x) for x in r["losses"])
        seconds = r["ms_per_step"] / 1000
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["seq"] / seconds)
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5)
        assert r["attention"] == "sdpa" and r["compute_dtype"] == "torch.bfloat16"
        assert r["planned_gib"] > 0 and r["reserve_gib"] > 0 and r["peak_gib"] is None  # peaks: CUDA only
    assert train["fsdp2"]["strategy"] == "fsdp2"
    # the same init and batch: FSDP2's bf16 parameters and autocast agree on the first loss
    assert train["fsdp2_first_loss_relative_difference"] <= 2e-2
    agreement = train["bf16_vs_fp32"]
    assert 0 < agreement["relative_difference"] <= 2e-2 and agreement["ok"]  # > 0: bf16 really ran

    kernels = result["attention"]
    assert kernels["kernels"] == ["sdpa", "eager"]
    assert "flash_attention_2 not compared" in kernels["note"] and kernels["note"] in result["notes"]
    assert len(set(kernels["prompt_tokens"])) == 2  # the prompts are right-padded against each other
    assert len(kernels["cases"]) == 3 and any("pairs feed" in c for c in kernels["cases"])
    for case in kernels["cases"].values():
        errors = case["relative_error_vs_fp32_sdpa"]
        assert all(1e-4 < e < 5e-2 for e in errors.values()), errors  # bf16 rounding, not zero, not O(1)
        assert case["ok"]["eager"]

    sampling = result["sampling"]
    assert [c["parallel_tokens"] for c in sampling["cases"]] == [1, 4, 16]
    assert [c["llm_forwards"] for c in sampling["cases"]] == [16, 4, 1]
    assert all(c["seconds"] > 0 and c["sampler"] == "sde" for c in sampling["cases"])

    ae = result["autoencoder"]
    assert ae["latent_shape"] == [32, 4, 4] and ae["encode"]["images_per_s"] > 0 and ae["decode"]["images_per_s"] > 0

    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| check | case | value |") and len(lines) == 1 + len(result["rows"])
    for check in ("AR train step", "AR train MFU", "FSDP2 vs one process", "bf16 vs fp32 loss", "attention output",
                  "sampling latency", "AE encode (prep-latents path)", "AE decode"):
        assert any(line.startswith(f"| {check} |") for line in lines), check
    assert "all passed" in table.splitlines()[0] and "flash_attention_2 not compared" in table
    assert "gpu-check: all passed" in stdout


@pytest.mark.timeout(120)
def test_train_flops_match_torch_flop_counter():
    """The MFU's numerator: dense FLOPs against torch's FlopCounterMode (sdpa's attention is not counted
    there), attention against what eager attention adds (its full, non-causal score matrix: twice ours)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vgt.gpucheck.context import Check, check_config
    from vgt.gpucheck.train import CAPTION, batch_latents, build_model, train_flops
    from vgt.train.data import seeded

    check = Check(check_config("demo"), torch.device("cpu"), torch.float32, 2, 1, 2, None, "")
    model = build_model(check).train()
    captions, latents = [CAPTION] * 2, batch_latents(check, 2)
    counted = {}
    for kernel in ("sdpa", "eager"):
        model.llm.model.config._attn_implementation = kernel
        with FlopCounterMode(display=False) as counter:
            model(captions, latents=latents, generator=seeded(0, 0))["loss"].backward()
        counted[kernel] = counter.get_total_flops()
    prompt = len(model.tokenizer(model.prompt_texts(captions[:1]))["input_ids"][0])
    ours = train_flops(model, 2, prompt + 1 + 2 * 16, 16)
    assert ours["dense"] == pytest.approx(counted["sdpa"], rel=0.01)
    assert ours["attention"] == pytest.approx((counted["eager"] - counted["sdpa"]) / 2, rel=1e-6)


def test_without_cuda_the_check_refuses_in_one_line(tmp_path, capsys):
    from ray_jobs.cli import main

    assert not torch.cuda.is_available()
    assert main(["gpu-check", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: gpu-check needs a CUDA GPU") and "--allow-cpu" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_without_diffusers_the_check_imports_and_skips_the_ae_saying_so(tmp_path):
    code = ("import sys; sys.modules['diffusers'] = None\n"  # what `import diffusers` does where it is missing
            "from vgt.gpucheck import main\n"
            f"sys.exit(main(['--allow-cpu', '--preset', 'tiny', '--only', 'autoencoder', '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    skipped = result["autoencoder"]["skipped"]
    assert skipped.startswith("diffusers does not import") and skipped.endswith("AE encode/decode skipped")
    assert skipped in result["notes"] and skipped in (tmp_path / "gpu-check.md").read_text()


@pytest.mark.timeout(120)
def test_a_section_that_raises_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    from vgt.gpucheck import main, sampling

    def boom(check, tokenizer):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(sampling, "run_sampling", boom)
    argv = ["--allow-cpu", "--preset", "tiny", "--only", "sampling", "--only", "autoencoder", "--out", str(tmp_path)]
    assert main(argv) == 1
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert not result["ok"] and result["errors"] == {"sampling": "RuntimeError: CUDA out of memory (simulated)"}
    assert "boom" in result["sampling"]["traceback"] and result["autoencoder"]["decode"]["images_per_s"] > 0
    table = (tmp_path / "gpu-check.md").read_text()
    assert "FAILED" in table.splitlines()[0]
    assert "| sampling | section raised | n/a |  | FAIL | RuntimeError: CUDA out of memory (simulated) |" in table


@pytest.mark.timeout(120)
def test_a_kernel_that_drops_the_padding_mask_fails_the_output_comparison(tmp_path, monkeypatch):
    """What the comparison is for: a kernel that mishandles right padding (here sdpa without the mask,
    registered with transformers like any attention backend) is flagged in every case."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from vgt.gpucheck import kernels, main

    def no_mask(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("gpucheck-test-no-mask", no_mask)
    AttentionMaskInterface.register("gpucheck-test-no-mask", sdpa_mask)
    monkeypatch.setattr(kernels, "kernels", lambda check: (["sdpa", "gpucheck-test-no-mask"], "test kernels"))
    assert main(["--allow-cpu", "--preset", "tiny", "--only", "attention", "--out", str(tmp_path)]) == 1
    cases = json.loads((tmp_path / "gpu-check.json").read_text())["attention"]["cases"]
    assert len(cases) == 3
    for case in cases.values():
        errors = case["relative_error_vs_fp32_sdpa"]
        assert case["ok"] == {"sdpa": True, "gpucheck-test-no-mask": False}
        assert errors["gpucheck-test-no-mask"] > 5 * errors["sdpa"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "vgt-gpu-bundle"
    subprocess.run([sys.executable, str(REPO / "cluster/gpucheck/build_bundle.py"), "--out", str(out), "--no-download",
                    "--python", f"{sys.version_info.major}.{sys.version_info.minor}"],
                   check=True, capture_output=True, timeout=120, cwd=REPO)
    return out


def run_sh(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(bundle / "run.sh"), "--python", sys.executable, *args], capture_output=True,
                          text=True, timeout=180, env=ENV)


@pytest.mark.timeout(300)
def test_bundle_holds_the_project_wheel_and_the_tested_pins(bundle):
    import importlib.metadata

    manifest = json.loads((bundle / "bundle.json").read_text())
    (wheel,) = bundle.glob("wheels/vgt-*.whl")
    assert manifest["project"] == wheel.name and wheel.name in manifest["wheels"]
    assert Path(f"{bundle}.tar.gz").stat().st_size > 0
    with zipfile.ZipFile(wheel) as z:
        assert {"vgt/gpucheck/cli.py", "vgt/backbones/real_configs.py", "ray_jobs/gpu_check.py"} <= set(z.namelist())
    pins = (bundle / "requirements.txt").read_text().split()
    assert pins == [f"{n}=={importlib.metadata.version(n)}" for n in
                    ("transformers", "tokenizers", "safetensors", "huggingface-hub", "diffusers")]
    assert not any(p.startswith(("torch", "ray")) for p in pins)


@pytest.mark.timeout(300)
def test_bundle_install_script_resolves_offline_and_hands_over_to_the_check(bundle, tmp_path):
    dry = run_sh(bundle, "--dry-run")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "Would install vgt-0.1.0" in dry.stdout  # the pins resolve from what is installed + the bundle
    # no install: straight to `python -m vgt.gpucheck`, which refuses on this CPU machine
    check = run_sh(bundle, "--skip-install", "--", "--out", str(tmp_path / "out"))
    assert check.returncode == 2 and check.stderr.strip().startswith("error: gpu-check needs a CUDA GPU")
    versions = bundle / "python-versions.txt"
    kept = versions.read_text()
    versions.write_text("3.99\n")
    try:
        other = run_sh(bundle, "--dry-run")
    finally:
        versions.write_text(kept)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"error: this bundle holds wheels for Python 3.99 but {sys.executable} is {version}: "
        f"rebuild it with make gpu-bundle GPU_PYTHON={version}"]
