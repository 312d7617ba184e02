"""VGT-AE model: shapes, latent normalisation and noise, gradients, teacher, artifacts round trip."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vgt.ae import AETrainingModule, VGTAutoencoder, apply_stage
from vgt.ae.bottleneck import LATENT_LN_EPS, tokens_to_grid
from vgt.ae.losses import generator_loss
from vgt.artifacts import ArtifactError
from vgt.presets import get_preset

PRESETS = ["tiny", "tiny-qwen"]


def _ae(preset: str = "tiny", seed: int = 0, **overrides) -> VGTAutoencoder:
    torch.manual_seed(seed)
    cfg = get_preset(preset).ae
    return VGTAutoencoder.from_config(dataclasses.replace(cfg, **overrides))


def _pixels(n: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w or h, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _raw_latents(ae: VGTAutoencoder, pixels: torch.Tensor) -> torch.Tensor:
    """Bottleneck output before the channel LayerNorm, computed from the parts."""
    x = ae.encode_features(pixels)
    for block in ae.down_blocks:
        x = block(x)
    return tokens_to_grid(ae.down_mlp(x), *ae.grid_size(pixels))


@pytest.mark.parametrize("preset", PRESETS)
def test_latent_and_decode_shapes_at_112_and_224(preset):
    ae = _ae(preset).eval()
    with torch.no_grad():
        for h, w in [(112, 112), (224, 224), (112, 224)]:
            z = ae.encode(_pixels(2, h, w))
            assert z.shape == (2, 32, h // 28, w // 28) and z.dtype == torch.float32
            assert ae.decode(z).shape == (2, 3, h, w)


@pytest.mark.parametrize("preset", PRESETS)
def test_latent_tokens_have_zero_mean_unit_variance_over_channels(preset):
    ae = _ae(preset).eval()
    with torch.no_grad():
        pixels = _pixels(3, 112)
        z, raw = ae.encode(pixels), _raw_latents(ae, pixels)
    torch.testing.assert_close(z.mean(1), torch.zeros_like(z.mean(1)), rtol=0, atol=1e-5)
    var = z.var(1, unbiased=False)
    raw_var = raw.var(1, unbiased=False)
    # LayerNorm gives var = v / (v + eps): ~1, and exactly that value for this eps
    torch.testing.assert_close(var, raw_var / (raw_var + LATENT_LN_EPS), rtol=1e-4, atol=0)
    assert var.min() > 0.9
    torch.testing.assert_close(z, (raw - raw.mean(1, keepdim=True)) / (raw_var.unsqueeze(1) + LATENT_LN_EPS).sqrt(),
                               rtol=1e-5, atol=1e-5)


def test_encoder_norm_off_leaves_bottleneck_output():
    ae = _ae(encoder_norm=False, noise_gamma=0.0).eval()
    with torch.no_grad():
        pixels = _pixels(2, 112)
        assert torch.equal(ae.encode(pixels), _raw_latents(ae, pixels))


def test_noise_only_in_train_mode_and_within_gamma():
    ae = _ae(noise_gamma=0.1)
    pixels = _pixels(4, 112)
    with torch.no_grad():
        clean = ae.eval().encode(pixels)
        assert torch.equal(ae.encode(pixels, torch.Generator().manual_seed(1)), clean)  # eval: no noise at all
        noisy = ae.train().encode(pixels, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)  # replay the draws: a ~ U[0, gamma] per sample, then eps
    a = torch.rand(4, 1, 1, 1, generator=gen) * 0.1
    eps = torch.randn(clean.shape, generator=gen)
    diff = (noisy - clean).abs().flatten(1).amax(1)
    bound = 0.1 * eps.abs().flatten(1).amax(1)
    assert (diff > 0).all() and (diff <= bound + 1e-6).all()
    torch.testing.assert_close(noisy - clean, a * eps, rtol=0, atol=1e-6)
    assert len(set(a.flatten().tolist())) == 4 and (a >= 0).all() and (a <= 0.1).all()


def test_bottleneck_layout_and_init_follow_the_reference():
    ae = _ae()
    sd = ae.state_dict()
    dim = ae.encoder.out_dim
    for i in range(3):
        for j in (0, 1, 3):
            assert f"down_blocks.{i}.mlp.{j}.weight" in sd and f"down_blocks.{i}.mlp.{j}.bias" in sd
    assert sd["down_mlp.1.weight"].shape == (32, dim) and sd["down_mlp.3.weight"].shape == (32, 32)
    assert ae.down_blocks[0].mlp[0].eps == 1e-6 and ae.down_mlp[0].eps == 1e-5
    linears = [m for m in [*ae.down_blocks.modules(), *ae.down_mlp.modules()] if isinstance(m, torch.nn.Linear)]
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert any(k.startswith("decoder.") for k in sd) and any(k.startswith("encoder.") for k in sd)


@pytest.mark.parametrize("preset", PRESETS)
def test_gradients_reach_encoder_bottleneck_decoder_but_never_the_teacher(preset):
    ae = _ae(preset)
    module = AETrainingModule(ae).train()
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    stage = get_preset(preset).train.ae_stage2
    pixels = _pixels(2, 112)
    out = module(pixels, torch.Generator().manual_seed(0))
    assert out.recon.shape == pixels.shape and out.latents.shape == (2, 32, 4, 4)
    assert out.student_features.shape == out.teacher_features.shape == (2, 16, ae.encoder.out_dim)
    assert not out.teacher_features.requires_grad
    loss = generator_loss(stage, 0, pixels, out.recon, out.student_features, out.teacher_features)
    loss.total.backward()
    for part in ("encoder", "down_blocks", "down_mlp", "decoder"):
        grads = [p.grad for p in getattr(ae, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part
    assert all(p.grad is None for p in module.teacher.parameters())
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    opt.step()
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items())


def test_teacher_is_never_part_of_the_inference_module(tmp_path):
    ae = _ae()
    module = AETrainingModule(ae)
    assert not any(k.startswith("teacher") for k in ae.state_dict())
    assert any(k.startswith("teacher.") for k in module.state_dict())
    # the default teacher equals the encoder it was copied from, but shares no storage with it
    with torch.no_grad():
        out = module(_pixels(1, 112))
    assert torch.equal(out.student_features, out.teacher_features)
    assert module.teacher.projector.linear_1.weight.data_ptr() != ae.encoder.projector.linear_1.weight.data_ptr()
    ae.save_pretrained(str(tmp_path / "ae"))
    assert not any(k.startswith("teacher") for k in load_file(str(tmp_path / "ae" / "model.safetensors")))


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_round_trip_is_bit_identical(tmp_path, preset):
    ae = _ae(preset, seed=3).eval()
    folder = str(tmp_path / "ae")
    fp = ae.save_pretrained(folder)
    assert ae.fingerprint == fp
    loaded = VGTAutoencoder.from_pretrained(folder)
    assert loaded.fingerprint == fp and not loaded.training
    assert loaded.config == ae.config
    a, b = ae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pixels = _pixels(2, 112, seed=5)
    with torch.no_grad():
        z_a, z_b = ae.encode(pixels), loaded.encode(pixels)
        assert torch.equal(z_a, z_b)
        assert torch.equal(ae.decode(z_a), loaded.decode(z_b))


def test_pretrained_decoder_is_used_and_saved_config_rebuilds_offline(tmp_path):
    from diffusers import AutoencoderDC

    cfg = get_preset("tiny").ae
    torch.manual_seed(7)
    dc = AutoencoderDC(**cfg.decoder.dc_config)
    dc.save_pretrained(str(tmp_path / "dc"))
    cfg.decoder.pretrained = str(tmp_path / "dc")
    cfg.decoder.dc_config = {}  # the architecture must come from the pretrained folder
    ae = VGTAutoencoder.from_config(cfg).eval()
    assert all(torch.equal(v, dc.decoder.state_dict()[k]) for k, v in ae.decoder.state_dict().items())
    ae.save_pretrained(str(tmp_path / "ae"))
    saved = json.loads((tmp_path / "ae" / "config.json").read_text())["config"]
    assert saved["decoder"]["pretrained"] is None and saved["backbone"]["pretrained"] is None
    assert saved["decoder"]["dc_config"]["decoder_block_out_channels"] == list(dc.config.decoder_block_out_channels)
    (tmp_path / "dc" / "diffusion_pytorch_model.safetensors").unlink()  # nothing refers to it any more
    loaded = VGTAutoencoder.from_pretrained(str(tmp_path / "ae"))
    z = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ae.decode(z))


def test_other_format_version_fails_clearly(tmp_path):
    folder = tmp_path / "ae"
    _ae().save_pretrained(str(folder))
    meta = json.loads((folder / "config.json").read_text())
    meta["format_version"] += 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"has format version {meta['format_version']}; this vgt reads version"):
        VGTAutoencoder.from_pretrained(str(folder))


def test_corrupted_tensor_fails_clearly(tmp_path):
    folder = tmp_path / "ae"
    _ae().save_pretrained(str(folder))
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["down_mlp.3.bias"][0] += 1.0  # same shapes and header size, different content
    save_file(tensors, str(weights))
    with pytest.raises(ArtifactError, match="is corrupted: content fingerprint .* does not match"):
        VGTAutoencoder.from_pretrained(str(folder))


def test_weights_that_do_not_fit_the_config_fail_clearly(tmp_path):
    folder = tmp_path / "ae"
    ae = _ae()
    ae.save_pretrained(str(folder))
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["num_res_blocks"] = 2
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"(?s)weights do not fit the model its config builds.*Unexpected.*down_blocks\.2"):
        VGTAutoencoder.from_pretrained(str(folder))


def test_bad_inputs_are_clear_errors():
    ae = _ae().eval()
    with pytest.raises(ValueError, match=r"expected pixels \[B,3,H,W\]"):
        ae.encode(torch.zeros(3, 112, 112))
    with pytest.raises(ValueError, match="smaller than the AE stride 28"):
        ae.encode(torch.zeros(1, 3, 14, 112))
    with pytest.raises(ValueError, match=r"expected latents \[B,32,h,w\]"):
        ae.decode(torch.zeros(1, 16, 4, 4))


def test_apply_stage_switches_latent_norm_and_noise():
    ae = _ae()
    train = get_preset("tiny").train
    apply_stage(ae, train.ae_stage1)
    pixels = _pixels(2, 112)
    with torch.no_grad():
        assert torch.equal(ae.train().encode(pixels), _raw_latents(ae, pixels))  # no LN, no noise
        apply_stage(ae, train.ae_stage2)
        assert (ae.config.encoder_norm, ae.config.noise_gamma) == (True, train.ae_stage2.noise_gamma)
        assert not torch.equal(ae.encode(pixels), ae.eval().encode(pixels))


def test_bf16_model_keeps_fp32_latents_and_decodes_in_bf16():
    ae = _ae().eval()
    pixels = _pixels(2, 112)
    with torch.no_grad():
        z32 = ae.encode(pixels)
        ae.to(torch.bfloat16)
        z = ae.encode(pixels)
        recon = ae.decode(z)
    assert z.dtype == torch.float32 and recon.dtype == torch.bfloat16 and recon.shape == pixels.shape
    torch.testing.assert_close(z, z32, rtol=0, atol=0.1)  # bf16 weights, unit-variance latents
