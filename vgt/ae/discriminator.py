"""The VGT-AE discriminator, its hinge loss and the LeCam regulariser (docs/reference.md §1.6).

`NLayerDiscriminator` mirrors the reference (MaskGIT/TiTok style) layer for layer, including the
state-dict layout (`block_in`, `blocks.{i}.{0,2}`, `to_logits.{0,2}`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BlurDownsample(nn.Module):
    """Depthwise blur with the separable kernel (1,3,3,1)/8 (outer product), stride 2, "same" padding."""

    def __init__(self, kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        k = torch.tensor(kernel, dtype=torch.float32)
        k = k[None, :] * k[:, None]
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.shape[-1]
        pad_h, pad_w = (_same_pad(n, k, 2) for n in x.shape[-2:])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        weight = self.kernel.to(x.dtype).expand(x.shape[1], -1, -1, -1)
        return F.conv2d(x, weight, stride=2, groups=x.shape[1])


def _same_pad(size: int, kernel: int, stride: int) -> int:
    """TF-style "same" padding total so that the output has ceil(size/stride) elements."""
    return max((-(-size // stride) - 1) * stride + kernel - size, 0)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)  # odd kernel, stride 1: "same" padding


class NLayerDiscriminator(nn.Module):
    """Conv5x5(3->128)+LReLU; 3x [Conv3x3 -> blur-down -> GroupNorm(32) -> LReLU] (128->128->256->512);
    AdaptiveMaxPool 16x16; Conv1x1 + LReLU + Conv5x5 -> 1-channel logit map. Input images in [0,1]."""

    def __init__(self, in_channels: int = 3, hidden: int = 128, num_stages: int = 3,
                 pool_size: int = 16, slope: float = 0.1):
        super().__init__()
        self.block_in = nn.Sequential(_conv(in_channels, hidden, 5), nn.LeakyReLU(slope))
        widths = [hidden] + [hidden * 2**i for i in range(num_stages)]
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 3), BlurDownsample(), nn.GroupNorm(32, cout), nn.LeakyReLU(slope))
            for cin, cout in zip(widths[:-1], widths[1:]))
        self.pool = nn.AdaptiveMaxPool2d((pool_size, pool_size))
        self.to_logits = nn.Sequential(_conv(widths[-1], widths[-1], 1), nn.LeakyReLU(slope),
                                       _conv(widths[-1], 1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block_in(x)
        for block in self.blocks:
            h = block(h)
        return self.to_logits(self.pool(h))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class LeCamEMA(nn.Module):
    """EMAs of the batch-mean real/fake logits and the LeCam penalty against them.

    Kept out of the discriminator so DDP never broadcasts these buffers from rank 0 (docs/reference.md §6.3):
    the train loop all-reduces the batch means across ranks and passes them to `update`, so every
    rank holds the same, globally averaged EMAs.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def penalty(self, real_mean: torch.Tensor, fake_mean: torch.Tensor) -> torch.Tensor:
        """ReLU(m_real - e_fake)^2 + ReLU(e_real - m_fake)^2 with the current (pre-update) EMAs."""
        return F.relu(real_mean - self.ema_fake) ** 2 + F.relu(self.ema_real - fake_mean) ** 2

    @torch.no_grad()
    def update(self, real_mean: torch.Tensor, fake_mean: torch.Tensor) -> None:
        """e <- decay * e + (1 - decay) * m, with m the (already all-reduced) batch means."""
        self.ema_real.mul_(self.decay).add_(real_mean.detach().to(self.ema_real), alpha=1 - self.decay)
        self.ema_fake.mul_(self.decay).add_(fake_mean.detach().to(self.ema_fake), alpha=1 - self.decay)
