"""VGT-AE training losses (docs/reference.md §1.6): generator assembly and discriminator step, fp32 throughout.

Generator:  mse_w*MSE(x,x̂) + distill_w*MSE(f_s,f_t) + lpips_w*LPIPS(x,x̂) + convnext_w*ConvNeXt(x,x̂)
            + gan_w*[step >= disc_start]*(-mean D(x̂))
Discriminator: [step >= disc_start]*hinge(D(x), D(x̂)) + lecam_w*LeCam(mean D(x), mean D(x̂); EMAs)
Images enter in [-1,1] and are mapped to [0,1] here. Weights come from an `AEStageConfig`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .discriminator import LeCamEMA, hinge_d_loss
from .perceptual import PerceptualLoss


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1], in fp32."""
    return (x.float() + 1) / 2


def reconstruction_mse(pixels: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """MSE on [0,1] images (inputs in [-1,1])."""
    return F.mse_loss(to_unit(recon), to_unit(pixels))


def distill_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Self-distillation: MSE between student and (detached) teacher projector features."""
    return F.mse_loss(student.float(), teacher.detach().float())


def gan_active(stage, step: int) -> bool:
    """The adversarial terms (generator and discriminator) start at `stage.disc_start`."""
    return step >= stage.disc_start


@contextlib.contextmanager
def frozen_params(module: nn.Module):
    """Generator pass through D: no gradients into D's parameters (restored afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # unweighted, detached; for logging


def generator_loss(stage, step: int, pixels: torch.Tensor, recon: torch.Tensor,
                   student: torch.Tensor, teacher: torch.Tensor,
                   perceptual: PerceptualLoss | None = None,
                   discriminator: nn.Module | None = None) -> LossOutput:
    """Weighted generator loss of one step; terms with weight 0 are not computed.

    Pass the bare discriminator, not a DDP wrapper: its parameters are frozen for this pass, and a
    DDP forward whose parameters get no gradient would stall the next reduction.
    """
    with _no_autocast(pixels.device):
        x01, r01 = to_unit(pixels), to_unit(recon)
        weighted = {"mse": (stage.mse_weight, reconstruction_mse(pixels, recon))}
        if stage.distill_weight > 0:
            weighted["distill"] = (stage.distill_weight, distill_mse(student, teacher))
        perceptual_weights = (("lpips", stage.lpips_weight), ("convnext", stage.convnext_weight),
                              ("effnet", stage.effnet_weight))
        if any(w > 0 for _, w in perceptual_weights):
            if perceptual is None:
                raise ValueError("perceptual weights are > 0 but no PerceptualLoss was given")
            terms = perceptual(x01, r01)
            for name, w in perceptual_weights:
                if w > 0:
                    weighted[name] = (w, terms[name])
        if stage.gan_weight > 0 and gan_active(stage, step):
            if discriminator is None:
                raise ValueError(f"step {step} >= disc_start {stage.disc_start} but no discriminator was given")
            with frozen_params(discriminator):
                weighted["gan"] = (stage.gan_weight, -discriminator(r01).float().mean())
        total = sum(w * v for w, v in weighted.values())
    return LossOutput(total, {k: v.detach() for k, (_, v) in weighted.items()})


def discriminator_loss(stage, step: int, discriminator: nn.Module, lecam: LeCamEMA,
                       pixels: torch.Tensor, recon: torch.Tensor) -> LossOutput:
    """Discriminator loss on (real, detached recon); EMAs are NOT updated here.

    `terms["real_mean"]` / `terms["fake_mean"]` are the batch-mean logits: all-reduce them across
    ranks, then call `lecam.update(real_mean, fake_mean)` after the optimizer step.
    """
    with _no_autocast(pixels.device):
        logits_real = discriminator(to_unit(pixels).detach()).float()
        logits_fake = discriminator(to_unit(recon).detach()).float()
        hinge = hinge_d_loss(logits_real, logits_fake)
        real_mean, fake_mean = logits_real.mean(), logits_fake.mean()
        lecam_term = lecam.penalty(real_mean, fake_mean)
        total = float(gan_active(stage, step)) * hinge + stage.lecam_weight * lecam_term
    terms = {"hinge": hinge, "lecam": lecam_term, "real_mean": real_mean, "fake_mean": fake_mean}
    return LossOutput(total, {k: v.detach() for k, v in terms.items()})
