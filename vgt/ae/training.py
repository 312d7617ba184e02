"""`AETrainingModule`: the trainable VGT-AE plus its frozen self-distillation teacher (docs/reference.md §1.4).

The teacher (vision tower + projector) lives only here, never in `VGTAutoencoder`, so exported AE
folders and AR-time memory carry no duplicate encoder (docs/reference.md §6.2).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .model import VGTAutoencoder


@dataclass
class AEForward:
    recon: torch.Tensor  # [B,3,H,W], nominally [-1,1]
    student_features: torch.Tensor  # [B,N,D] projector output of the trainable encoder
    teacher_features: torch.Tensor  # [B,N,D] projector output of the frozen teacher (no grad)
    latents: torch.Tensor  # [B,C,h,w] (noised in train mode)


def apply_stage(ae: VGTAutoencoder, stage) -> None:
    """Copy a stage's latent switches (`AEStageConfig.encoder_norm`, `.noise_gamma`) into the AE config.

    Stage 1 trains without the channel LayerNorm and without noise, stage 2 with both (docs/reference.md §1.5);
    the exported config then records what the decoder was trained on.
    """
    ae.config.encoder_norm = stage.encoder_norm
    ae.config.noise_gamma = stage.noise_gamma


class AETrainingModule(nn.Module):
    """`ae` (trainable) + `teacher` (frozen, always eval).

    By default the teacher is a deep copy of `ae.encoder` taken now, before any checkpoint is
    loaded into `ae`. For stage 2 (initialised from a stage-1 export), pass the original pretrained
    encoder instead (`vgt.backbones.load_vision_encoder(preset.ae.backbone)`), as the reference does.
    """

    def __init__(self, ae: VGTAutoencoder, teacher: nn.Module | None = None):
        super().__init__()
        self.ae = ae
        self.teacher = copy.deepcopy(ae.encoder) if teacher is None else teacher
        self.teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "AETrainingModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> AEForward:
        student = self.ae.encode_features(pixels)
        with torch.no_grad():
            teacher = self.teacher(pixels, input_range=(-1.0, 1.0))
        latents = self.ae.features_to_latents(student, self.ae.grid_size(pixels), generator)
        return AEForward(self.ae.decode(latents), student, teacher, latents)
