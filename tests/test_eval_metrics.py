"""PSNR / SSIM against hand-computed values, the Fréchet distance, the EfficientNet-Lite0 feature net."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vgt.eval.efficientnet_lite import FEATURE_DIM, EfficientNetLite0, SameConv2d, load_pretrained, weights_path
from vgt.eval.frechet import FeatureStats, frechet_distance, frechet_from_stats
from vgt.eval.image_metrics import psnr, ssim


def const(value: float, shape=(1, 3, 16, 16)) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.float64)


def test_psnr_hand_values():
    assert psnr(const(0.5), const(0.6)).item() == pytest.approx(20.0, abs=1e-12)  # MSE 0.01
    assert psnr(const(0.0), const(0.5)).item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-12)
    assert psnr(const(0.5), const(0.6), data_range=2.0).item() == pytest.approx(10 * math.log10(400), abs=1e-12)
    assert math.isinf(psnr(const(0.3), const(0.3)).item())


@pytest.mark.parametrize("mode,data_range", [("standard", 1.0), ("reference", 2.0)])
def test_ssim_of_constant_images_is_the_luminance_term(mode, data_range):
    # no variance anywhere: SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1) * C2 / C2
    c1 = (0.01 * data_range) ** 2
    expected = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert ssim(const(0.5), const(0.6), mode).item() == pytest.approx(expected, abs=1e-12)


def naive_ssim(x: np.ndarray, y: np.ndarray, window: np.ndarray, cov_norm: float, data_range: float) -> float:
    """The SSIM definition written out window by window, one channel."""
    k = window.shape[0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - k + 1):
        for j in range(x.shape[1] - k + 1):
            a, b = x[i:i + k, j:j + k], y[i:i + k, j:j + k]
            ma, mb = (window * a).sum(), (window * b).sum()
            va = cov_norm * ((window * a * a).sum() - ma * ma)
            vb = cov_norm * ((window * b * b).sum() - mb * mb)
            cab = cov_norm * ((window * a * b).sum() - ma * mb)
            values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition_window_by_window():
    rng = np.random.default_rng(0)
    x = rng.random((2, 14, 13))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    gauss = np.outer(g, g) / g.sum() ** 2
    uniform = np.full((7, 7), 1 / 49)
    cases = {"standard": (gauss, 1.0, 1.0), "reference": (uniform, 49 / 48, 2.0)}
    for mode, (window, cov_norm, data_range) in cases.items():
        expected = np.mean([naive_ssim(x[c], y[c], window, cov_norm, data_range) for c in range(2)])
        got = ssim(torch.tensor(x)[None], torch.tensor(y)[None], mode).item()
        assert got == pytest.approx(expected, abs=1e-12), mode
    # the reference constants (data range 2 on [0,1] data) inflate SSIM over the same window at range 1
    honest = np.mean([naive_ssim(x[c], y[c], uniform, 49 / 48, 1.0) for c in range(2)])
    assert ssim(torch.tensor(x)[None], torch.tensor(y)[None], "reference").item() > honest
    same = torch.tensor(x)[None]
    assert ssim(same, same).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="smaller than"):
        ssim(const(0.1, (1, 3, 8, 8)), const(0.2, (1, 3, 8, 8)))
    with pytest.raises(ValueError, match="unknown SSIM mode"):
        ssim(const(0.1), const(0.2), "skimage")


def test_frechet_distance_hand_values():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == \
        pytest.approx(4 + 1, abs=1e-12)
    # diagonal: sum over dimensions
    fd = frechet_distance(np.zeros(2), np.diag([9.0, 1.0]), np.array([1.0, 1.0]), np.diag([1.0, 4.0]))
    assert fd == pytest.approx(2 + (3 - 1) ** 2 + (1 - 2) ** 2, abs=1e-12)


def test_feature_stats_merge_like_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) * 2 + 1
    parts = FeatureStats().add(a[:20]).merge(FeatureStats().add(a[20:]))
    mu, cov = parts.mean_cov()
    np.testing.assert_allclose(mu, a.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False), atol=1e-12)
    assert frechet_from_stats(parts, parts) == pytest.approx(0.0, abs=1e-9)
    assert frechet_from_stats(parts, FeatureStats().add(b)) > 5
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().add(a[:1]).mean_cov()


def test_same_padding_matches_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 6, 6)
    # TF SAME, stride 2, k 3, size 6: output 3, total padding 1, all of it on the bottom/right
    out = conv(x)[0, 0]
    assert out.shape == (3, 3)
    assert out[0, 0].item() == 9 and out[2, 2].item() == 4 and out[0, 2].item() == 6


def test_pretrained_feature_net_loads_and_separates_images():
    model = load_pretrained()  # strict: every packaged tensor but the classifier has its place
    assert weights_path().endswith(".pth") and not model.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f = model(x)
        f_flat = model(torch.full((1, 3, 64, 64), 0.5))
    assert f.shape == (2, FEATURE_DIM) and torch.isfinite(f).all()
    assert (f[0] - f[1]).abs().max() < (f[0] - f_flat[0]).abs().max()  # two noises are closer than noise vs flat
    assert EfficientNetLite0()(x).shape == (2, FEATURE_DIM)
