"""VGT-AE losses: hand-computed values, discriminator and LeCam behaviour, perceptual-net loading."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vgt.ae.convnext import ConvNeXt
from vgt.ae.discriminator import BlurDownsample, LeCamEMA, NLayerDiscriminator, hinge_d_loss
from vgt.ae.losses import (discriminator_loss, distill_mse, frozen_params, gan_active, generator_loss,
                           reconstruction_mse)
from vgt.ae.perceptual import (EFFNET_BLOCKS, LPIPS, LPIPS_SCALE, LPIPS_SHIFT, ConvNeXtLogitLoss,
                               EfficientNetFeatureLoss, LPIPSHeads, PerceptualLoss, PerceptualWeightsError,
                               load_strict)
from vgt.ae.vgg import LPIPS_TAPS, VGG16Features
from vgt.config import PerceptualConfig, TrainConfig

STAGE1, STAGE2 = TrainConfig().ae_stage1, TrainConfig().ae_stage2


def _images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- reconstruction / distillation --------------------------------------------------------------

def test_mse_is_on_unit_range_images():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2)
    r = torch.tensor([1.0, 0.0, 0.0, -0.5]).view(1, 1, 2, 2)
    # [0,1] values: x -> 0, .5, 1, .75; r -> 1, .5, .5, .25; squared diffs 1, 0, .25, .25
    assert reconstruction_mse(x, r).item() == pytest.approx((1 + 0 + 0.25 + 0.25) / 4, abs=1e-7)


def test_distill_mse_and_teacher_gets_no_gradient():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 2.0], [5.0, 4.0]]], requires_grad=True)
    loss = distill_mse(s, t)
    assert loss.item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    loss.backward()
    assert t.grad is None
    assert torch.equal(s.grad, torch.tensor([[[0.5, 0.0], [-1.0, 0.0]]]))  # 2*(s-t)/4


# -- discriminator pieces -------------------------------------------------------------------------

def test_hinge_loss_hand_computed():
    real = torch.tensor([0.5, 2.0, -1.0])  # ReLU(1 - r) = .5, 0, 2
    fake = torch.tensor([-2.0, 0.5, 0.0])  # ReLU(1 + f) = 0, 1.5, 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 2.5 / 3))


def test_lecam_penalty_with_given_emas_and_update():
    lecam = LeCamEMA(decay=0.9)
    lecam.ema_real.fill_(0.3)
    lecam.ema_fake.fill_(-0.2)
    real_mean, fake_mean = torch.tensor(0.5), torch.tensor(0.1)
    # ReLU(0.5 - (-0.2))^2 + ReLU(0.3 - 0.1)^2
    assert lecam.penalty(real_mean, fake_mean).item() == pytest.approx(0.7**2 + 0.2**2)
    # both ReLUs clipped: real mean below the fake EMA, fake mean above the real EMA
    assert lecam.penalty(torch.tensor(-0.5), torch.tensor(0.4)).item() == 0.0
    lecam.update(real_mean, fake_mean)
    assert lecam.ema_real.item() == pytest.approx(0.9 * 0.3 + 0.1 * 0.5)
    assert lecam.ema_fake.item() == pytest.approx(0.9 * -0.2 + 0.1 * 0.1)


def _blur_by_hand(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    w = torch.outer(k, k) / 64
    xp = torch.nn.functional.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    n = (xp.shape[-1] - 4) // 2 + 1
    out = torch.empty(*x.shape[:2], n, n)
    for i in range(n):
        for j in range(n):
            out[..., i, j] = (xp[..., 2 * i:2 * i + 4, 2 * j:2 * j + 4] * w).sum((-1, -2))
    return out


@pytest.mark.parametrize("size,pad", [(4, (1, 1)), (5, (1, 2))])
def test_blur_downsample_matches_hand_convolution(size, pad):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = BlurDownsample()(x)
    assert y.shape[-1] == -(-size // 2)
    torch.testing.assert_close(y, _blur_by_hand(x, pad), rtol=0, atol=1e-6)


def test_discriminator_layout_and_logit_map():
    d = NLayerDiscriminator()
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes["block_in.0.weight"] == (128, 3, 5, 5)
    assert [shapes[f"blocks.{i}.0.weight"] for i in range(3)] == [(128, 128, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3)]
    assert [d.blocks[i][2].num_groups for i in range(3)] == [32, 32, 32]
    assert shapes["to_logits.0.weight"] == (512, 512, 1, 1) and shapes["to_logits.2.weight"] == (1, 512, 5, 5)
    assert d.blocks[0][3].negative_slope == 0.1
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 16, 16)  # AdaptiveMaxPool 16x16, 1 channel


def test_discriminator_loss_terms_and_gan_start():
    torch.manual_seed(0)
    d, lecam = NLayerDiscriminator(hidden=32), LeCamEMA(STAGE2.lecam_decay)
    lecam.ema_real.fill_(2.0)
    lecam.ema_fake.fill_(-2.0)
    x, r = _images(1), _images(2)
    lr, lf = d((x + 1) / 2), d((r + 1) / 2)
    hinge = hinge_d_loss(lr, lf)
    penalty = torch.relu(lr.mean() + 2.0) ** 2 + torch.relu(2.0 - lf.mean()) ** 2
    on = discriminator_loss(STAGE2, STAGE2.disc_start, d, lecam, x, r)
    torch.testing.assert_close(on.total, hinge + STAGE2.lecam_weight * penalty)
    off = discriminator_loss(STAGE2, STAGE2.disc_start - 1, d, lecam, x, r)
    torch.testing.assert_close(off.total, STAGE2.lecam_weight * penalty)
    assert on.terms["real_mean"].item() == pytest.approx(lr.mean().item())
    assert lecam.ema_real.item() == 2.0  # the loss never updates the EMAs itself


def test_one_discriminator_step_lowers_hinge_and_moves_emas():
    torch.manual_seed(0)
    d, lecam = NLayerDiscriminator(hidden=32), LeCamEMA(STAGE2.lecam_decay)
    lecam.ema_real.fill_(0.5)
    lecam.ema_fake.fill_(-0.5)
    opt = torch.optim.AdamW(d.parameters(), lr=STAGE2.disc_lr, betas=STAGE2.betas)
    x, r = _images(3, size=64), _images(4, size=64)
    before = discriminator_loss(STAGE2, STAGE2.disc_start, d, lecam, x, r)
    before.total.backward()
    nn.utils.clip_grad_norm_(d.parameters(), STAGE2.grad_clip)
    opt.step()
    ema_before = (lecam.ema_real.clone(), lecam.ema_fake.clone())
    lecam.update(before.terms["real_mean"], before.terms["fake_mean"])
    with torch.no_grad():
        after = discriminator_loss(STAGE2, STAGE2.disc_start, d, lecam, x, r)
    assert after.terms["hinge"] < before.terms["hinge"]
    for ema, old, mean in zip((lecam.ema_real, lecam.ema_fake), ema_before,
                              (before.terms["real_mean"], before.terms["fake_mean"])):
        assert abs(ema - mean) < abs(old - mean)
        assert ema.item() == pytest.approx(STAGE2.lecam_decay * old.item() + (1 - STAGE2.lecam_decay) * mean.item())


# -- generator assembly -------------------------------------------------------------------------

class _FixedPerceptual(nn.Module):
    """Stands in for PerceptualLoss with known term values that still depend on the recon."""

    def forward(self, x01, r01):
        return {"lpips": (r01 - x01).abs().mean(), "convnext": (r01 - x01).pow(2).sum(),
                "effnet": (r01 - x01).pow(4).mean()}


class _LinearD(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.fill_(0.25)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("stage", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_generator_loss_assembly(stage):
    x, r0 = _images(5), _images(6)
    r = r0.clone().requires_grad_(True)
    fs, ft = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    x01, r01 = (x + 1) / 2, (r0 + 1) / 2
    mse = ((r01 - x01) ** 2).mean()
    distill = ((fs - ft) ** 2).mean()
    lp, cn = (r01 - x01).abs().mean(), (r01 - x01).pow(2).sum()
    gan = -(0.5 * r01.sum(1) + 0.25).mean()  # D = 1x1 conv, weights .5, bias .25
    base = stage.mse_weight * mse + stage.distill_weight * distill + stage.lpips_weight * lp + stage.convnext_weight * cn
    d = _LinearD()

    before = generator_loss(stage, stage.disc_start - 1, x, r, fs, ft, _FixedPerceptual(), d)
    torch.testing.assert_close(before.total, base)
    assert set(before.terms) == {"mse", "distill", "lpips", "convnext"}

    after = generator_loss(stage, stage.disc_start, x, r, fs, ft, _FixedPerceptual(), d)
    torch.testing.assert_close(after.total, base + stage.gan_weight * gan)
    after.total.backward()
    assert r.grad is not None and d.conv.weight.grad is None  # D frozen during the generator pass
    assert all(p.requires_grad for p in d.parameters())  # ... and unfrozen afterwards


def test_effnet_term_is_weighted_in_when_set():
    x, r = _images(11), _images(12)
    fs = torch.zeros(1, 2, 3)
    stage = dataclasses.replace(STAGE2, effnet_weight=0.0)
    off = generator_loss(stage, 0, x, r, fs, fs, _FixedPerceptual(), None)
    on = generator_loss(dataclasses.replace(stage, effnet_weight=0.5), 0, x, r, fs, fs, _FixedPerceptual(), None)
    assert "effnet" not in off.terms
    torch.testing.assert_close(on.total, off.total + 0.5 * (((r + 1) / 2 - (x + 1) / 2) ** 4).mean())


def test_effnet_feature_loss_matches_its_definition():
    """Unit-normalised early features (after blocks 0, 2, 4) of the packaged EfficientNet-Lite0, squared
    difference summed over channels, averaged over positions, then over the three stages; the net is frozen
    and the head path (the proxy Fréchet distance's features) is unchanged by the refactor."""
    from torch.nn import functional as F

    from vgt.eval.efficientnet_lite import load_pretrained

    net = load_pretrained()
    loss = EfficientNetFeatureLoss(net)
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(1)).requires_grad_(True)

    def stem_blocks(t):  # the network run by hand, keeping every block's output
        h = F.relu6(net._bn0(net._conv_stem((t * 255.0 - 127.0) / 128.0)))
        outs = []
        for block in net._blocks:
            h = block(h)
            outs.append(h)
        return outs

    fx, fy = stem_blocks(x), stem_blocks(y)
    unit = lambda f: f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # noqa: E731
    expected = sum((unit(fx[i]) - unit(fy[i])).pow(2).sum(1).mean() for i in EFFNET_BLOCKS) / len(EFFNET_BLOCKS)
    value = loss(x, y)
    torch.testing.assert_close(value, expected)
    assert loss(x, x).item() == 0.0
    value.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    with torch.no_grad():
        head = F.relu6(net._bn1(net._conv_head(fx[-1]))).mean((2, 3))
        torch.testing.assert_close(net(x), head)
    assert PerceptualLoss.from_config(PerceptualConfig(), 0.0, 0.0, effnet_weight=0.1).effnet is not None


def test_stage_weights_follow_the_spec_table():
    assert (STAGE1.distill_weight, STAGE2.distill_weight) == (1.0, 0.1)
    assert (STAGE1.disc_start, STAGE2.disc_start) == (30_000, 10_000)
    assert (STAGE1.lpips_weight, STAGE1.convnext_weight, STAGE1.gan_weight) == (1.0, 0.1, 0.1)
    assert not gan_active(STAGE2, 9_999) and gan_active(STAGE2, 10_000)


def test_zero_weights_need_no_perceptual_nets_or_discriminator():
    stage = dataclasses.replace(STAGE2, lpips_weight=0.0, convnext_weight=0.0, gan_weight=0.0)
    pl = PerceptualLoss.from_config(PerceptualConfig(), stage.lpips_weight, stage.convnext_weight)
    assert pl.lpips is None and pl.convnext is None and pl.effnet is None and not list(pl.parameters())
    x, r = _images(7), _images(8)
    out = generator_loss(stage, 10**6, x, r, torch.zeros(1, 2, 3), torch.ones(1, 2, 3), None, None)
    torch.testing.assert_close(out.total, reconstruction_mse(x, r) + stage.distill_weight * 1.0)


def test_missing_perceptual_module_or_discriminator_is_a_clear_error():
    x = _images(9)
    with pytest.raises(ValueError, match="no PerceptualLoss"):
        generator_loss(STAGE2, 0, x, x, x, x, None, None)
    stage = dataclasses.replace(STAGE2, lpips_weight=0.0, convnext_weight=0.0)
    with pytest.raises(ValueError, match="no discriminator"):
        generator_loss(stage, stage.disc_start, x, x, x, x, None, None)


def test_frozen_params_restores_mixed_flags():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m[0].bias.requires_grad_(False)
    with frozen_params(m):
        assert not any(p.requires_grad for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()] == [True, False, True, True]


# -- perceptual nets: layout, strict loading, values ---------------------------------------------

def test_perceptual_nets_match_torchvision_parameter_totals():
    with torch.device("meta"):
        vgg, cnx = VGG16Features(), ConvNeXt()
    # torchvision docs: VGG16_Weights.IMAGENET1K_V1 num_params 138,357,544, of which the classifier
    # (Linear 25088->4096, 4096->4096, 4096->1000) is not built here.
    classifier = 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert sum(p.numel() for p in vgg.parameters()) == 138_357_544 - classifier
    # torchvision docs: ConvNeXt_Small_Weights.IMAGENET1K_V1 num_params 50,223,688
    assert sum(p.numel() for p in cnx.parameters()) == 50_223_688
    shapes = {k: tuple(v.shape) for k, v in cnx.state_dict().items()}
    assert shapes["features.0.0.weight"] == (96, 3, 4, 4)
    assert shapes["features.1.0.block.0.weight"] == (96, 1, 7, 7)
    assert shapes["features.1.0.layer_scale"] == (96, 1, 1)
    assert shapes["features.5.26.block.5.weight"] == (384, 1536)
    assert shapes["features.6.1.weight"] == (768, 384, 2, 2)
    assert shapes["classifier.2.weight"] == (1000, 768)
    assert [k for k in vgg.state_dict() if k.endswith("weight")][-1] == "features.28.weight"


@pytest.fixture(scope="module")
def perceptual_files(tmp_path_factory):
    """Random full-size VGG16 (with torchvision's classifier keys), LPIPS heads and ConvNeXt-S files."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("perceptual")
    vgg = VGG16Features().state_dict()
    vgg["classifier.6.bias"] = torch.zeros(1000)  # a full torchvision file also carries these
    heads = {k: torch.rand_like(v) for k, v in LPIPSHeads().state_dict().items()}  # real heads are >= 0
    files = PerceptualConfig(vgg16_path=str(folder / "vgg16.safetensors"),
                             lpips_heads_path=str(folder / "lpips_heads.safetensors"),
                             convnext_path=str(folder / "convnext_small.safetensors"))
    save_file(vgg, files.vgg16_path)
    save_file(heads, files.lpips_heads_path)
    save_file(ConvNeXt().state_dict(), files.convnext_path)
    return files


def test_perceptual_loss_loads_strictly_and_lpips_is_zero_only_for_identical_images(perceptual_files):
    pl = PerceptualLoss.from_config(perceptual_files, lpips_weight=1.0, convnext_weight=0.1)
    torch.testing.assert_close(pl.lpips.heads.lin2.model[1].weight,
                               load_strict(LPIPSHeads(), perceptual_files.lpips_heads_path, "h").lin2.model[1].weight)
    assert not any(p.requires_grad for p in pl.parameters())
    x, y = (_images(10, size=64) + 1) / 2, (_images(11, size=64) + 1) / 2
    with torch.no_grad():
        same, diff = pl(x, x), pl(x, y)
    assert same["lpips"].item() == 0.0 and same["convnext"].item() == 0.0
    assert diff["lpips"].item() > 0 and diff["convnext"].item() > 0


def test_lpips_formula_by_hand():
    torch.manual_seed(1)
    vgg, heads = VGG16Features(), LPIPSHeads()
    with torch.no_grad():
        for p in heads.parameters():
            p.uniform_(0, 1)
    lp = LPIPS(vgg, heads)
    x, y = (_images(12) + 1) / 2, (_images(13) + 1) / 2
    shift, scale = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
    expected = torch.zeros(2)
    with torch.no_grad():
        a, b = ((2 * x - 1 - shift) / scale), ((2 * y - 1 - shift) / scale)
        for i, layer in enumerate(vgg.features[: LPIPS_TAPS[-1] + 1]):
            a, b = layer(a), layer(b)
            if i in LPIPS_TAPS:
                k = LPIPS_TAPS.index(i)
                na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
                nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
                w = getattr(heads, f"lin{k}").model[1].weight.view(1, -1, 1, 1)
                expected += ((na - nb) ** 2 * w).sum(1).mean((1, 2))
        torch.testing.assert_close(lp(x, y), expected, rtol=1e-5, atol=1e-7)


def test_convnext_term_is_logit_mse_at_224_imagenet_normalised():
    torch.manual_seed(2)
    net = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    loss = ConvNeXtLogitLoss(net)
    x, y = (_images(14) + 1) / 2, (_images(15) + 1) / 2
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def logits(t):
        t = torch.nn.functional.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return net((t - mean) / std)

    y.requires_grad_(True)
    value = loss(x, y)
    torch.testing.assert_close(value, ((logits(x) - logits(y)) ** 2).mean())
    value.backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())


def test_perceptual_weight_errors_name_the_problem(tmp_path, perceptual_files):
    with pytest.raises(PerceptualWeightsError, match=r"train\.perceptual\.vgg16_path.*no file is set"):
        LPIPS.from_files(None, perceptual_files.lpips_heads_path)
    missing = str(tmp_path / "nowhere" / "vgg16.safetensors")
    with pytest.raises(PerceptualWeightsError, match=f"not found: '{missing}'"):
        LPIPS.from_files(missing, perceptual_files.lpips_heads_path)

    heads = LPIPSHeads().state_dict()
    heads["lin3.model.1.weight"] = torch.zeros(1, 256, 1, 1)  # should be 512 channels
    bad = str(tmp_path / "bad_heads.safetensors")
    save_file(heads, bad)
    with pytest.raises(PerceptualWeightsError, match=r"lin3\.model\.1\.weight: file \(1, 256, 1, 1\) vs model \(1, 512, 1, 1\)"):
        load_strict(LPIPSHeads(), bad, "LPIPS heads")

    heads = LPIPSHeads().state_dict()
    heads["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    del heads["lin0.model.1.weight"]
    save_file(heads, bad)
    with pytest.raises(PerceptualWeightsError, match=r"missing \['lin0\.model\.1\.weight'\], unexpected \['lin5"):
        load_strict(LPIPSHeads(), bad, "LPIPS heads")

    pickled = tmp_path / "vgg.pth"
    pickled.write_bytes(b"\x80\x02}q\x00.")  # a pickle header, as the released .pth files are
    with pytest.raises(PerceptualWeightsError, match="not a safetensors file"):
        load_strict(LPIPSHeads(), str(pickled), "LPIPS heads")
