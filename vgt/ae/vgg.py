"""VGG16 `features` in plain torch, torchvision's state-dict layout (`features.{i}.weight/bias`).

Only the convolutional trunk LPIPS needs; unverified until real torchvision IMAGENET1K_V1 weights
are tried (layout and op order follow torchvision's `vgg16`, configuration "D").
"""
from __future__ import annotations

import torch
from torch import nn

# torchvision cfg "D": conv widths, "M" = 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# Indices into `features` after which LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, item, kernel_size=3, padding=1), nn.ReLU()]
                cin = item
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at the LPIPS taps (relu1_2 ... relu5_3)."""
        taps = []
        for i, layer in enumerate(self.features[: LPIPS_TAPS[-1] + 1]):
            x = layer(x)
            if i in LPIPS_TAPS:
                taps.append(x)
        return taps
