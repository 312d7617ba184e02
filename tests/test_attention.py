"""Which attention kernel runs where, and that the flash-attention path computes what sdpa does.

No GPU and no flash-attn here, so (1) the choice is tested with flash-attn's import and the
device/dtype monkeypatched, and (2) transformers' own flash-attention dispatch (unpadding by the 2-D
mask, KV caches, packed-sequence detection) runs on the CPU with reference kernels standing in for
flash-attn's `flash_attn_func` / `flash_attn_varlen_func` (bottom-right causal alignment, as
flash-attn >= 2.1). The GPU check compares the real kernels.
"""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import transformers

from vgt.ae import VGTAutoencoder
from vgt.ar.model import VGTModel
from vgt.ar.sampling import image_generator, sample_latents, teacher_forced_conditions
from vgt.backbones import families
from vgt.config import to_dict
from vgt.presets import get_preset
from vgt.train.distributed import WorkerEnv
from vgt.train.loop import LoopSpec

CUDA = torch.device("cuda", 0)
PROMPTS = ["a red square on a blue background", "two circles", "a very long caption with many words in it"]


@pytest.fixture
def flash_installed(monkeypatch):
    """flash-attn 'installed and importable' (a stand-in module)."""
    monkeypatch.setattr(families, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(__version__="2.7.4"))


# ---------------------------------------------------------------- the choice


@pytest.mark.timeout(30)
def test_auto_takes_flash_on_cuda_with_a_16_bit_compute_dtype(flash_installed):
    choose = families.choose_attn_implementation
    assert choose("auto", CUDA, torch.bfloat16)[0] == "flash_attention_2"
    assert choose("auto", "cuda", torch.float16)[0] == "flash_attention_2"
    impl, why = choose("auto", CUDA, torch.float32)  # fp32 on a GPU without autocast: flash takes no fp32
    assert impl == "sdpa" and "16-bit" in why
    impl, why = choose("auto", "cpu", torch.bfloat16)
    assert impl == "sdpa" and "CUDA only" in why
    assert choose("eager", CUDA, torch.bfloat16) == ("eager", "set in the config")
    assert choose("sdpa", CUDA, torch.bfloat16)[0] == "sdpa"
    # built on the CPU with the CPU choice, whatever the weights' dtype
    assert families.build_hf_config(get_preset("tiny").ar.backbone)._attn_implementation == "sdpa"


@pytest.mark.timeout(30)
def test_flash_that_is_missing_or_does_not_import_falls_back_with_the_reason(monkeypatch):
    monkeypatch.setattr(families, "is_flash_attn_2_available", lambda: False)
    impl, why = families.choose_attn_implementation("auto", CUDA, torch.bfloat16)
    assert impl == "sdpa" and "not installed" in why
    monkeypatch.setattr(families, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # installed, but `import flash_attn` fails
    impl, why = families.choose_attn_implementation("auto", CUDA, torch.bfloat16)
    assert impl == "sdpa" and "does not import" in why


@pytest.mark.timeout(60)
def test_models_switch_every_transformers_part_and_log_why(flash_installed, caplog):
    cfg = get_preset("tiny")
    model = VGTModel(cfg.ar, latent_dim=cfg.ae.latent_channels)
    ae = VGTAutoencoder(cfg.ae)
    hf = [m for mod in (model, ae) for m in mod.modules() if isinstance(m, transformers.PreTrainedModel)]
    assert hf and {m.config._attn_implementation for m in hf} == {"sdpa"}  # as built
    with caplog.at_level(logging.INFO, logger=families.__name__):
        assert model.use_attention(CUDA, torch.bfloat16) == "flash_attention_2"  # bf16 compute on a GPU
        assert ae.use_attention(CUDA, torch.bfloat16) == "flash_attention_2"
    assert {m.config._attn_implementation for m in hf} == {"flash_attention_2"}
    assert "AR attention: flash_attention_2 (CUDA, torch.bfloat16 compute, flash_attn 2.7.4)" in caplog.text
    with caplog.at_level(logging.WARNING, logger=families.__name__):
        assert model.use_attention(CUDA, torch.float32) == "sdpa"  # fp32 on a GPU: a logged fallback
    assert "AR attention: sdpa" in caplog.text and "16-bit" in caplog.text


@pytest.mark.timeout(120)
def test_training_stages_choose_by_the_compute_dtype_not_the_load_dtype(monkeypatch, tmp_path):
    """Weights load fp32; the stages pass the worker's compute dtype (bf16 on a GPU) to the choice."""
    from vgt.train.ae_stage import AEStage
    from vgt.train.ar_stage import ARStage

    calls = []
    real = families.choose_attn_implementation
    monkeypatch.setattr(families, "choose_attn_implementation",
                        lambda name, device, dtype: calls.append((torch.device(device).type, dtype)) or real(
                            name, device, dtype))
    cfg = get_preset("tiny")
    env = WorkerEnv(compute_dtype=torch.bfloat16)  # what a GPU worker computes in (CPU stands in)
    AEStage(LoopSpec(stage="", stage_key="ae_stage1", config=to_dict(cfg), data=[], out=str(tmp_path / "ae"),
                     steps=2), env)
    VGTAutoencoder(cfg.ae).save_pretrained(str(tmp_path / "ae-folder"))
    stage = ARStage(LoopSpec(stage="", stage_key="ar_pretrain", config=to_dict(cfg), data=[],
                             out=str(tmp_path / "ar"), steps=2, ae=str(tmp_path / "ae-folder")), env)
    placed = [c for c in calls if c != ("cpu", torch.float32)]  # building always asks for the CPU choice
    assert placed == [("cpu", torch.bfloat16)] * 3  # AE stage (student + teacher), AR model, its frozen AE
    assert next(stage.model.parameters()).dtype == torch.float32
    assert WorkerEnv(device=CUDA).compute_dtype == torch.bfloat16  # the GPU default the stages pass on


# ---------------------------------------------------------------- the flash path computes what sdpa does


def _attend(q, k, v, scale, causal):
    """One sequence: q [Lq, H, D], k/v [Lk, Hk, D] -> [Lq, H, D]; causal aligned bottom-right."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    mask = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).tril(k.shape[0] - q.shape[0]) if causal else None
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def reference_flash_kernels(calls: list):
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append("dense")
        return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                               dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append("varlen")
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        return torch.cat([_attend(q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]], softmax_scale, causal)
                          for i in range(len(cq) - 1)])

    return flash_attn_func, flash_attn_varlen_func


@pytest.fixture
def cpu_flash(monkeypatch, flash_installed):
    """transformers' flash_attention_2 path with the reference kernels; yields the list of kernel calls."""
    from transformers import modeling_flash_attention_utils as fa
    from transformers.integrations import flash_attention as fa_integration

    assert not fa_integration._use_top_left_mask
    calls: list[str] = []
    func, varlen = reference_flash_kernels(calls)
    monkeypatch.setattr(fa, "_lazy_imports", lambda *a, **k: (func, varlen, None, fa._pad_input, fa._unpad_input))
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
                 "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn"):
        monkeypatch.setattr(fa, name, None)
    yield calls


def build(preset: str):
    cfg = get_preset(preset)
    torch.manual_seed(0)
    return VGTModel(cfg.ar, latent_dim=cfg.ae.latent_channels).eval(), VGTAutoencoder(cfg.ae).eval()


def conditions(model, latents):
    """Every LLM path of the AR model: training (right-padded prompts, one pass), and the sampler's
    KV-cached steps in both feed modes, batched (padding) and alone (the pairs mode's gapped positions)."""
    n, c, h, w = latents.shape
    g = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(h * w, generator=g) for _ in range(n)])
    embeds, mask = model.embed_prompts(model.prompt_texts(PROMPTS[:n]))
    out = {"train": model.training_conditions(embeds, mask, latents.flatten(2).transpose(1, 2), (h, w), orders)}
    for mode in ("pairs", "parity"):
        for p in (1, 3):
            out[f"{mode}-P{p}-batch"] = teacher_forced_conditions(model, PROMPTS[:n], latents, orders, p, mode)
            out[f"{mode}-P{p}-alone"] = teacher_forced_conditions(model, PROMPTS[:1], latents[:1], orders[:1], p, mode)
    settings = dict(cfg_schedule="linear", num_steps=2, parallel_tokens=3, order="random", sampler="ode",
                    feed_mode="pairs", temperature=1.0)
    for scale in (1.0, 3.0):  # alone (no padding, batch 1) and with the unconditional rows
        out[f"sample-cfg{scale}"] = sample_latents(model, PROMPTS[:1], [image_generator(0, 0)], (h, w),
                                                   guidance_scale=scale, **settings)
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen"])
def test_flash_attention_path_matches_sdpa(preset, cpu_flash):
    model, ae = build(preset)
    latents = torch.randn(3, model.latent_dim, 3, 3, generator=torch.Generator().manual_seed(1))
    pixels = torch.rand(2, 3, 112, 84, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected, expected_features = conditions(model, latents), ae.encode_features(pixels)
        assert model.use_attention(CUDA, torch.bfloat16) == "flash_attention_2"  # as a GPU would choose
        assert ae.use_attention(CUDA, torch.bfloat16) == "flash_attention_2"
        got, features = conditions(model, latents), ae.encode_features(pixels)
    assert "varlen" in cpu_flash and "dense" in cpu_flash  # both flash kernels ran (padded and unpadded)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(30)
def test_the_llm_refuses_a_4d_mask():
    model, _ = build("tiny")
    embeds = torch.zeros(1, 2, model.llm.hidden_size)
    with pytest.raises(ValueError, match="2-D padding mask"):
        model.llm(embeds, attention_mask=torch.ones(1, 1, 2, 2, dtype=torch.bool))
