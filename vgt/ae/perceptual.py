"""Perceptual losses: LPIPS-VGG16 + ConvNeXt-S logit MSE (docs/reference.md §1.6), weights from local files,
and an EfficientNet-Lite0 feature term whose weights ship in a pip package (usable offline).

Weight files are safetensors in torchvision's state-dict layout (`vgg16` features, `convnext_small`)
plus the LPIPS linear heads (`lin{0..4}.model.1.weight`, the taming/lpips `vgg.pth` layout). The
released files are pickles (`.pth`); convert them once, outside the training path, e.g.
`safetensors.torch.save_file(torch.load(p, weights_only=True), out)`. Loading is strict: every
expected key with its exact shape. All of this is unverified until the real weights are tried.
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from .convnext import ConvNeXt
from .vgg import LPIPS_CHANNELS, VGG16Features
from vgt.eval import efficientnet_lite
from vgt.errors import VGTError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS "ScalingLayer" constants, applied to [-1,1] inputs.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class PerceptualWeightsError(VGTError):
    """A perceptual-net weight file is missing, unreadable or does not fit the network."""


def load_strict(module: nn.Module, path: str | None, what: str, ignore_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """Load safetensors `path` into `module`: every key present with its shape, nothing unknown.

    `ignore_prefixes` names file keys that belong to parts we do not build (VGG16's classifier).
    """
    if not path:
        raise PerceptualWeightsError(f"{what} weights are needed (its loss weight is > 0) but no file is set")
    if not os.path.isfile(path):
        raise PerceptualWeightsError(f"{what} weight file not found: {path!r}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise PerceptualWeightsError(f"{what} weight file {path!r} is not a safetensors file ({err}); "
                                     "convert .pth files first (see vgt/ae/perceptual.py)") from err
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.startswith(ignore_prefixes))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise PerceptualWeightsError(f"{what} weights in {path!r} do not fit: missing {missing[:5]}"
                                     f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}, "
                                     f"wrong shapes {wrong[:5]}")
    module.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    return module


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


class LPIPSHeads(nn.Module):
    """The five learned 1x1 "lin" layers (`lin{i}.model.1.weight`; `model.0` was a Dropout)."""

    def __init__(self, channels=LPIPS_CHANNELS):
        super().__init__()
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", nn.Module())
            getattr(self, f"lin{i}").model = nn.Sequential(nn.Identity(), nn.Conv2d(c, 1, 1, bias=False))

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"lin{i}").model(x)


def _unit_normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG16 on [0,1] images -> per-sample distance [B]."""

    def __init__(self, vgg: VGG16Features, heads: LPIPSHeads):
        super().__init__()
        self.vgg, self.heads = _frozen(vgg), _frozen(heads)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_files(cls, vgg16_path: str | None, heads_path: str | None) -> "LPIPS":
        vgg = load_strict(VGG16Features(), vgg16_path, "VGG16 (train.perceptual.vgg16_path)",
                          ignore_prefixes=("classifier.",))
        heads = load_strict(LPIPSHeads(), heads_path, "LPIPS heads (train.perceptual.lpips_heads_path)")
        return cls(vgg, heads)

    def forward(self, x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
        fx, fy = (self.vgg(((2 * t - 1) - self.shift) / self.scale) for t in (x01, y01))
        per_layer = [self.heads(i, (_unit_normalise(a) - _unit_normalise(b)) ** 2).mean(dim=(1, 2, 3))
                     for i, (a, b) in enumerate(zip(fx, fy))]
        return torch.stack(per_layer).sum(0)


class ConvNeXtLogitLoss(nn.Module):
    """MSE between ConvNeXt 1000-class logits of two [0,1] images (224 px, ImageNet-normalised)."""

    def __init__(self, net: ConvNeXt, size: int = 224):
        super().__init__()
        self.net, self.size = _frozen(net), size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | None) -> "ConvNeXtLogitLoss":
        return cls(load_strict(ConvNeXt(), path, "ConvNeXt-S (train.perceptual.convnext_path)"))

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x01, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)

    def forward(self, x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.logits(x01), self.logits(y01))


# After MBConv blocks 0, 2 and 4: the first three stages (16, 24, 40 channels at strides 2, 4, 8),
# edge- and corner-level features. The proxy Fréchet distance (vgt.eval.frechet) reads the 1280-d
# head after all 16 blocks, which this loss never sees, so the loss cannot game that measure.
EFFNET_BLOCKS = (0, 2, 4)


class EfficientNetFeatureLoss(nn.Module):
    """Mean squared difference of channel-unit-normalised EfficientNet-Lite0 early features (LPIPS-style,
    without learned heads) of two [0,1] images, at their own resolution, averaged over the three stages."""

    def __init__(self, net: efficientnet_lite.EfficientNetLite0, blocks: tuple[int, ...] = EFFNET_BLOCKS):
        super().__init__()
        self.net, self.blocks = _frozen(net), blocks

    @classmethod
    def pretrained(cls) -> "EfficientNetFeatureLoss":
        return cls(efficientnet_lite.load_pretrained())

    def forward(self, x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
        fx, fy = (self.net.block_outputs(t, self.blocks) for t in (x01, y01))
        return torch.stack([(_unit_normalise(a) - _unit_normalise(b)).pow(2).sum(1).mean()
                            for a, b in zip(fx, fy)]).mean()


class PerceptualLoss(nn.Module):
    """Holds only the nets whose loss weight is > 0; `forward` returns the unweighted terms."""

    def __init__(self, lpips: LPIPS | None = None, convnext: ConvNeXtLogitLoss | None = None,
                 effnet: EfficientNetFeatureLoss | None = None):
        super().__init__()
        self.lpips, self.convnext, self.effnet = lpips, convnext, effnet

    @classmethod
    def from_config(cls, perceptual_cfg, lpips_weight: float, convnext_weight: float,
                    effnet_weight: float = 0.0) -> "PerceptualLoss":
        """Build from `TrainConfig.perceptual` and a stage's weights; weight 0 builds nothing."""
        lpips = (LPIPS.from_files(perceptual_cfg.vgg16_path, perceptual_cfg.lpips_heads_path)
                 if lpips_weight > 0 else None)
        convnext = ConvNeXtLogitLoss.from_file(perceptual_cfg.convnext_path) if convnext_weight > 0 else None
        effnet = EfficientNetFeatureLoss.pretrained() if effnet_weight > 0 else None
        return cls(lpips, convnext, effnet)

    def forward(self, x01: torch.Tensor, y01: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {}
        if self.lpips is not None:
            terms["lpips"] = self.lpips(x01, y01).mean()
        if self.convnext is not None:
            terms["convnext"] = self.convnext(x01, y01)
        if self.effnet is not None:
            terms["effnet"] = self.effnet(x01, y01)
        return terms
