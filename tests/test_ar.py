"""VGT-AR model pieces: flow head, flow matching, queries, schedules, the training forward.

Helpers here (`build_model`, `PROMPTS`) are shared with test_ar_sampling.py and test_pipeline.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from vgt.ar import flow
from vgt.ar.flow_head import FlowHead, timestep_features
from vgt.ar.model import VGTModel, tokens_of
from vgt.ar.prompts import format_prompts
from vgt.ar.queries import PositionQueries, group_sizes, token_order
from vgt.ar.repa import TimmTeacher, patch_tokens_to_grid
from vgt.presets import get_preset

PRESETS = ["tiny", "tiny-qwen"]
# different lengths, so batches are padded
PROMPTS = ["a red apple", "a small dog running across a green field under a blue sky", "two cats"]


def randomize_head(head: torch.nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Perturb every head weight: the zero-initialised output would make conditions irrelevant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def build_model(preset: str, overrides: list[str] | None = None, seed: int = 0, random_head: bool = True):
    cfg = get_preset(preset, overrides)
    torch.manual_seed(seed)
    model = VGTModel(cfg.ar, cfg.ae.latent_channels).eval()
    if random_head:
        randomize_head(model.head, seed + 1)
    return model


def random_latents(n: int, seed: int = 0, grid: int = 4) -> torch.Tensor:
    z = torch.randn(n, grid, grid, 32, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.layer_norm(z, (32,), eps=1e-6).permute(0, 3, 1, 2)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and intra-op threads thrash on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=PRESETS)
def model(request):
    return build_model(request.param)


# -- flow head ---------------------------------------------------------------------------------

def test_time_features_are_cos_then_sin_of_raw_t():
    f = timestep_features(torch.tensor([0.0, 0.5]))
    assert f.shape == (2, 256)
    assert torch.equal(f[0, :128], torch.ones(128)) and torch.equal(f[0, 128:], torch.zeros(128))
    for k in (0, 1, 64, 127):
        freq = math.exp(-math.log(10000.0) * k / 128)
        assert f[1, k].item() == pytest.approx(math.cos(0.5 * freq), abs=1e-7)
        assert f[1, 128 + k].item() == pytest.approx(math.sin(0.5 * freq), abs=1e-7)


def test_zero_initialised_head_predicts_zero():
    head = FlowHead(32, 48, width=64, depth=3)
    v = head(torch.randn(5, 32), torch.rand(5), torch.randn(5, 48))
    assert torch.equal(v, torch.zeros(5, 32))


@pytest.mark.parametrize("preset", ["internvl3-1b", "internvl3-2b", "qwen25vl-3b"])
def test_real_preset_head_has_about_150m_parameters(preset):
    cfg = get_preset(preset).ar
    w, depth, d = cfg.head.width, cfg.head.depth, cfg.backbone.hf_config["text_config"]["hidden_size"]
    with torch.device("meta"):
        head = FlowHead(32, d, w, depth)
    n = sum(p.numel() for p in head.parameters())
    block = 2 * w + 2 * (w * w + w) + (3 * w * w + 3 * w)  # in_ln, mlp, adaLN
    embeds = (256 * w + w + w * w + w) + (d * w + w) + (32 * w + w)  # time MLP, cond, input
    final = (2 * w * w + 2 * w) + (32 * w + 32)
    assert (w, depth) == (1536, 12) and n == depth * block + embeds + final
    assert 145e6 < n < 155e6, n


def test_repa_projector_reads_block_depth_half():
    head = FlowHead(32, 16, width=24, depth=4, repa_dim=8)
    randomize_head(head)
    x, t, c = torch.randn(3, 32), torch.rand(3), torch.randn(3, 16)
    v, feats = head(x, t, c, return_repa=True)
    y = head.time_embed(t) + head.cond_embed(c)
    h = head.input_proj(x)
    for block in head.res_blocks[:2]:
        h = block(h, y)
    assert torch.equal(feats, head.repa_projector(h)) and torch.equal(v, head(x, t, c))


# -- flow matching -----------------------------------------------------------------------------

def test_time_shift_and_timesteps_hand_computed():
    t = flow.time_shift(torch.tensor([0.0, 0.5, 1.0]), 1.4)
    assert torch.allclose(t, torch.tensor([1.0, 1 - 0.7 / 1.2, 0.0]), atol=1e-7)
    s = torch.randn(6, generator=torch.Generator().manual_seed(3))
    expect = 1 - 1.4 * torch.sigmoid(s) / (1 + 0.4 * torch.sigmoid(s))
    assert torch.equal(flow.sample_timesteps(6, torch.Generator().manual_seed(3), 1.4), expect)
    assert torch.equal(flow.sample_timesteps(6, torch.Generator().manual_seed(3)), torch.sigmoid(s))


@pytest.mark.parametrize("batch_mul", [1, 3])
def test_flow_loss_is_velocity_mse_with_noise_at_t0(batch_mul):
    """Every token is scored at `batch_mul` independent (t, noise) draws, all from the generator."""
    seen = {}

    def head(x_t, t, c, return_repa=False):
        seen.update(x_t=x_t, t=t, c=c)
        return c[:, :4] * 0.5

    x1, c = torch.randn(5, 4), torch.randn(5, 4)
    loss, _ = flow.flow_loss(head, x1, c, torch.Generator().manual_seed(7), batch_mul=batch_mul)
    n, g = 5 * batch_mul, torch.Generator().manual_seed(7)
    t = torch.sigmoid(torch.randn(n, generator=g))
    eps = torch.randn(n, 4, generator=g)
    x1k, ck = x1.repeat(batch_mul, 1), c.repeat(batch_mul, 1)
    assert torch.equal(seen["t"], t) and torch.equal(seen["c"], ck)
    assert torch.allclose(seen["x_t"], t[:, None] * x1k + (1 - t[:, None]) * eps, atol=1e-7)
    assert loss.item() == pytest.approx(((ck * 0.5 - (x1k - eps)) ** 2).mean().item(), rel=1e-6)


def test_flow_loss_refuses_a_batch_mul_below_one():
    with pytest.raises(ValueError, match="batch_mul must be >= 1"):
        flow.flow_loss(lambda x_t, t, c, return_repa=False: c, torch.randn(2, 4), torch.randn(2, 4),
                       torch.Generator(), batch_mul=0)



def exact_velocity(target):
    """The true velocity field of a point mass at `target`: (x1 - x) / (1 - t)."""
    def head(x, t, c, return_repa=False):
        return (target - x) / (1 - t[:, None])
    return head


@pytest.mark.parametrize("method", ["sde", "ode"])
def test_samplers_reach_a_point_mass_exactly(method):
    target = torch.randn(6, 32)
    g = torch.Generator().manual_seed(0)
    x = flow.sample_tokens(exact_velocity(target), torch.zeros(6, 8), lambda: torch.randn(6, 32, generator=g),
                           num_steps=5, method=method)
    assert torch.allclose(x, target, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_sde_sampler_matches_the_reference_update(temperature):
    """The reference's update at temperature 1; below it every noise draw shrinks (MAR's temperature)."""
    head = FlowHead(32, 8, width=16, depth=1)
    randomize_head(head)
    cond = torch.randn(3, 8)
    noises = [torch.randn(3, 32, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    it = iter(noises)
    x = flow.sample_tokens(head, cond, lambda: next(it), num_steps=5, method="sde", temperature=temperature)
    ref, grid = temperature * noises[0], torch.linspace(0, 0.96, 5)
    for i in range(4):  # score form of the reference: drift = v + (1 - t) * (t v - x) / (1 - t)
        t, dt = grid[i], grid[i + 1] - grid[i]
        v = head(ref, t.expand(3), cond)
        score = (t * v - ref) / (1 - t)
        ref = ref + (v + (1 - t) * score) * dt + temperature * torch.sqrt(2 * (1 - t) * dt) * noises[i + 1]
    ref = ref + head(ref, grid[-1].expand(3), cond) * 0.04
    assert torch.allclose(x, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ode_sampler_starts_from_the_scaled_noise(temperature):
    """The ODE's one noise draw is its start: Euler steps from temperature * noise (a hand-rolled loop)."""
    head = FlowHead(32, 8, width=16, depth=1)
    randomize_head(head)
    cond, start = torch.randn(3, 8), torch.randn(3, 32, generator=torch.Generator().manual_seed(9))
    x = flow.sample_tokens(head, cond, lambda: start.clone(), num_steps=4, method="ode", temperature=temperature)
    ref = temperature * start
    for t in (0.0, 0.25, 0.5, 0.75):
        ref = ref + head(ref, torch.full((3,), t), cond) * 0.25
    assert torch.allclose(x, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature must be >= 0, got -0.1"):
        flow.sample_tokens(head, cond, lambda: start, num_steps=4, method="ode", temperature=-0.1)


def test_cfg_scale_one_equals_unguided_head_path():
    head = FlowHead(32, 8, width=16, depth=2)
    randomize_head(head)
    cond, uncond = torch.randn(4, 8), torch.randn(4, 8)

    def run(**kw):
        g = torch.Generator().manual_seed(5)
        return flow.sample_tokens(head, cond, lambda: torch.randn(4, 32, generator=g), num_steps=4,
                                 method="sde", **kw)

    plain = run()
    assert torch.allclose(run(uncond=uncond, scale=1.0), plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run(uncond=uncond, scale=3.0), plain, atol=1e-2)


def test_guidance_schedules_hand_computed():
    linear = [flow.guidance_at("linear", 4.5, g, 4) for g in range(4)]
    assert linear == pytest.approx([4.5, 1 + 3.5 * 3 / 4, 1 + 3.5 * 2 / 4, 1 + 3.5 / 4])
    assert [flow.guidance_at("constant", 4.5, g, 4) for g in range(4)] == [4.5] * 4
    with pytest.raises(ValueError, match="cfg schedule"):
        flow.guidance_at("cosine", 4.5, 0, 4)


# -- queries and orders ------------------------------------------------------------------------

def test_queries_are_centre_crops_in_raster_order():
    q = PositionQueries(dim=6, max_grid=8)
    queries, pos = q(4, 2)
    assert queries.shape == pos.shape == (8, 6)
    assert torch.equal(pos[3], q.pos_map[0, :, 2 + 1, 3 + 1])  # row 1, col 1 of the crop
    assert torch.equal(queries, q.query_map[0, :, 2:6, 3:5].flatten(1).T + pos)
    with pytest.raises(ValueError, match="outside the learned"):
        q(9, 4)


def test_group_sizes_and_orders():
    assert group_sizes(16, 5) == [6, 5, 5]
    assert group_sizes(16, 1) == [1] * 16 and group_sizes(16, 16) == [16]
    with pytest.raises(ValueError, match="parallel_tokens"):
        group_sizes(16, 17)
    assert torch.equal(token_order(5, "raster"), torch.arange(5))
    a = token_order(16, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a, token_order(16, "random", torch.Generator().manual_seed(1)))
    assert torch.equal(a.sort().values, torch.arange(16))


def test_prompts_use_template_and_cfg_prompt():
    texts = format_prompts(["a {b} cat", "dog"], "U: {caption}!", "U: none", torch.tensor([False, True]))
    assert texts == ["U: a {b} cat!", "U: none"]


# -- training forward --------------------------------------------------------------------------

def test_no_leak_condition_sees_only_earlier_tokens(model):
    lat, orders = random_latents(2), torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i))
                                                   for i in range(2)])
    embeds, mask = model.embed_prompts(model.prompt_texts(PROMPTS[:2]))
    with torch.no_grad():
        base = model.training_conditions(embeds, mask, tokens_of(lat), (4, 4), orders)
        k_step = 5
        changed = lat.clone()
        for row in range(2):  # change the latent of the token generated at step 5
            k = orders[row, k_step]
            changed[row, :, k // 4, k % 4] += 1.0
        after = model.training_conditions(embeds, mask, tokens_of(changed), (4, 4), orders)
    for row in range(2):
        upto, later = orders[row, :k_step + 1], orders[row, k_step + 1:]
        assert torch.allclose(after[row, upto], base[row, upto], atol=1e-6)
        assert (after[row, later] - base[row, later]).abs().amax(-1).min() > 1e-4


def test_forward_randomness_comes_from_the_generator(model):
    lat = random_latents(3)

    def loss(seed):
        return model(PROMPTS, latents=lat, generator=torch.Generator().manual_seed(seed))["loss"]

    with torch.no_grad():
        assert torch.equal(loss(0), loss(0)) and not torch.equal(loss(0), loss(1))


def test_orders_per_sample_or_shared():
    model = build_model("tiny")
    per = model.sample_orders(3, 16, torch.Generator().manual_seed(0))
    assert not torch.equal(per[0], per[1])
    model.config.per_sample_order = False
    shared = model.sample_orders(3, 16, torch.Generator().manual_seed(0))
    assert torch.equal(shared[0], shared[2]) and torch.equal(shared[0].sort().values, torch.arange(16))
    model.config.train_order = "raster"
    assert torch.equal(model.sample_orders(3, 16, None), torch.arange(16).expand(3, -1))
    model.config.train_order = "spiral"
    with pytest.raises(ValueError, match="unknown token order 'spiral'"):
        model.sample_orders(3, 16, None)


def test_cfg_dropout_replaces_every_caption_at_rate_one():
    model = build_model("tiny", ["ar.cfg_dropout=1.0"])
    lat = random_latents(2)
    with torch.no_grad():
        a = model(["a red apple", "two cats"], latents=lat, generator=torch.Generator().manual_seed(0))
        b = model(["something else", "x"], latents=lat, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["loss"], b["loss"])


class FakeAE(torch.nn.Module):
    """Stands in for VGTAutoencoder.encode: a fixed linear map of 28x28 patches to 32 channels."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"latent_channels": 32})()
        self.proj = torch.nn.Conv2d(3, 32, 28, stride=28)

    def encode(self, pixels):
        return torch.nn.functional.layer_norm(self.proj(pixels).permute(0, 2, 3, 1), (32,)).permute(0, 3, 1, 2)


def test_pixels_are_encoded_by_the_attached_frozen_ae():
    model = build_model("tiny")
    ae = FakeAE()
    model.attach_autoencoder(ae)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    assert not any(k.startswith("ae.") or "proj.weight" == k for k in model.state_dict())
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        a = model(PROMPTS[:2], pixels=pixels, generator=torch.Generator().manual_seed(0))
        b = model(PROMPTS[:2], latents=ae.encode(pixels), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["loss"], b["loss"])


def test_llm_num_layers_keeps_the_first_layers():
    full, cut = build_model("tiny-qwen"), build_model("tiny-qwen", ["ar.llm_num_layers=1"])
    assert len(full.llm.model.layers) == 2 and len(cut.llm.model.layers) == 1
    assert not any(".layers.1." in k for k in cut.state_dict())
    cut_sd, full_sd = cut.state_dict(), full.state_dict()
    assert set(cut_sd) == {k for k in full_sd if ".layers.1." not in k}
    for k in cut_sd:  # same seed -> the kept layer is the same first layer
        assert torch.equal(cut_sd[k], full_sd[k]), k


@pytest.mark.parametrize("preset", PRESETS)
def test_repa_gradient_reaches_the_llm_only_with_weight(preset):
    lat, feats = random_latents(2), torch.randn(2, 16, 8)

    def llm_grads(weight: float, term: str):
        model = build_model(preset, ["ar.head.repa_dim=8", f"ar.repa_weight={weight}"])
        out = model(PROMPTS[:2], latents=lat, generator=torch.Generator().manual_seed(0), teacher_features=feats)
        out[term].backward()
        return out, torch.cat([p.grad.flatten() for p in model.llm.parameters() if p.grad is not None])

    out0, total0 = llm_grads(0.0, "loss")
    _, flow_only = llm_grads(0.0, "flow_loss")
    assert "repa_loss" not in out0 and torch.equal(total0, flow_only)
    out5, repa_grad = llm_grads(0.5, "repa_loss")
    assert repa_grad.abs().max() > 0
    assert out5["loss"].item() == pytest.approx(out5["flow_loss"].item() + 0.5 * out5["repa_loss"].item(), rel=1e-6)
    _, total5 = llm_grads(0.5, "loss")
    assert not torch.allclose(total5, flow_only)


class FakeViT(torch.nn.Module):
    """timm-like: one class token, then 4x4 row-major patch tokens of a 1x1 conv over 16 px patches."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, 16, stride=16)

    def forward_features(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], 1)


def test_timm_teacher_drops_prefix_tokens_and_resizes_to_the_latent_grid():
    teacher = TimmTeacher(FakeViT(), (64, 64), [0.5] * 3, [0.25] * 3)
    pixels = torch.rand(2, 3, 112, 112) * 2 - 1
    feats = teacher(pixels, (4, 4))
    x = torch.nn.functional.interpolate((pixels + 1) / 2, size=(64, 64), mode="bicubic", antialias=True)
    assert torch.allclose(feats, teacher.vit.patch((x - 0.5) / 0.25).flatten(2).transpose(1, 2), atol=1e-6)
    assert teacher(pixels, (2, 2)).shape == (2, 4, 8)
    grid = torch.arange(16.0).view(1, 16, 1)  # 4x4 ramp 0..15 row-major
    assert torch.allclose(patch_tokens_to_grid(grid, (2, 2)).flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))


def test_repa_features_from_an_attached_teacher_match_given_ones():
    model = build_model("tiny", ["ar.head.repa_dim=8", "ar.repa_weight=0.5"])
    teacher = TimmTeacher(FakeViT(), (64, 64), [0.5] * 3, [0.25] * 3)
    model.attach_repa_teacher(teacher)
    assert not any(k.startswith("repa_teacher") for k in model.state_dict())
    pixels, lat = torch.rand(2, 3, 112, 112) * 2 - 1, random_latents(2)
    with torch.no_grad():
        a = model(PROMPTS[:2], latents=lat, pixels=pixels, generator=torch.Generator().manual_seed(0))
        b = model(PROMPTS[:2], latents=lat, generator=torch.Generator().manual_seed(0),
                  teacher_features=teacher(pixels, (4, 4)))
    assert torch.equal(a["repa_loss"], b["repa_loss"])


def test_repa_weight_without_projector_is_a_config_error():
    with pytest.raises(ValueError, match="repa_dim"):
        build_model("tiny", ["ar.repa_weight=0.5"])


@pytest.mark.timeout(30)
def test_flow_head_time_scale_multiplies_t_before_its_features():
    torch.manual_seed(0)
    reference = FlowHead(32, 16, width=24, depth=2)
    scaled = FlowHead(32, 16, width=24, depth=2, time_scale=1000.0)
    scaled.load_state_dict(reference.state_dict())
    t = torch.tensor([0.001, 0.25, 0.9])
    assert torch.equal(scaled.time_embed(t), reference.time_embed(t * 1000))
    # why the switch exists: with raw t in [0, 1], 164 of the 256 features move by less than 0.01
    moved = (timestep_features(torch.tensor([1.0])) - timestep_features(torch.tensor([0.0]))).abs()
    assert int((moved < 0.01).sum()) == 164
    assert int(((timestep_features(torch.tensor([1000.0])) - timestep_features(torch.tensor([0.0]))).abs()
                < 0.01).sum()) < 16
