"""The VGT-AE training stage (docs/reference.md §1.4-1.6) on the shared loop (vgt/train/loop.py).

Per step: random crop + flip of the un-cropped prepared images; generator pass (student AE + frozen
teacher) -> reconstruction + distillation (+ perceptual, + GAN from `disc_start`) -> backward ->
clip -> AdamW step; then, from `disc_start`, the discriminator on (real, detached recon) ->
backward -> clip -> its own AdamW step, and the LeCam EMAs updated with batch-mean logits
averaged over all ranks. Stage 1 builds the AE from the preset; stage 2 starts from `--init`
(stage 1's export) with a fresh discriminator and the step counter at 0, the teacher being the
preset's original vision tower.
"""
from __future__ import annotations

import torch

from vgt.train.checkpoint import Trainables
from vgt.train.distributed import WorkerEnv, accumulate, clip_and_step, distribute
from vgt.train.images import augmented_pixels, device_generator, image_grid
from vgt.train.loop import LoopSpec
from vgt.train.stage import register
from vgt.train.optim import NO_DECAY_KEYWORDS, adamw, param_groups, scheduler
from vgt.ae.discriminator import LeCamEMA, NLayerDiscriminator
from vgt.ae.losses import discriminator_loss, gan_active, generator_loss
from vgt.ae.model import KIND, VGTAutoencoder
from vgt.ae.perceptual import PerceptualLoss
from vgt.ae.training import AETrainingModule, apply_stage
from vgt.artifacts import save_component
from vgt.backbones import apply_attn_implementation, load_vision_encoder
from vgt.config import VGTConfig, from_dict
from vgt.data.encode import center_crop_pixels

PREVIEW_IMAGES = 4


def lr_multipliers(ae: VGTAutoencoder, s) -> dict[str, float]:
    """Name prefix -> LR multiplier of the AE's parameters (first match wins; the rest train at 1.0).

    The vision tower trains at `encoder_lr_mult`. The reference keeps InternVL's projector as its own
    module (`mlp1`) outside its 0.5x encoder group, so by default ours (`encoder.projector.*`) trains
    at the base LR; `projector_at_encoder_lr` puts it with the tower. Qwen2.5-VL's merger sits inside
    `encoder.visual` (in the reference too, inside its encoder), so it always follows the tower.
    """
    separate = hasattr(ae.encoder, "projector") and not s.projector_at_encoder_lr
    return {**({"encoder.projector.": 1.0} if separate else {}), "encoder.": s.encoder_lr_mult}


@register("ae")
class AEStage:
    columns = ["image"]
    export_modules = ["ae"]

    def __init__(self, spec: LoopSpec, env: WorkerEnv):
        self.env = env
        self.cfg = cfg = from_dict(VGTConfig, spec.config)
        self.s = s = getattr(cfg.train, spec.stage_key)
        self.ae, teacher = self._models(spec, cfg)
        apply_stage(self.ae, s)
        ae = AETrainingModule(self.ae, teacher).train()
        # student and teacher towers: attention for where and in what dtype forwards compute (bf16 on GPU)
        apply_attn_implementation(ae, cfg.ae.backbone.attn_implementation, env.device, env.compute_dtype, "AE")
        ae = distribute(ae, env)
        self.disc = NLayerDiscriminator(hidden=s.disc_hidden)
        disc = distribute(self.disc, env)
        self.lecam = LeCamEMA(s.lecam_decay).to(env.device)
        self.perceptual = PerceptualLoss.from_config(cfg.train.perceptual, s.lpips_weight, s.convnext_weight,
                                                     s.effnet_weight).to(env.device).eval()
        opt_g = adamw(param_groups(self.ae.named_parameters(), s.lr, s.weight_decay,
                                   lr_multipliers(self.ae, s), NO_DECAY_KEYWORDS), s.lr, s.betas)
        opt_d = adamw(param_groups(self.disc.named_parameters(), s.disc_lr, s.weight_decay,
                                   no_decay_keywords=NO_DECAY_KEYWORDS), s.disc_lr, s.betas)
        end = s.end_lr / s.lr
        # The discriminator's schedule spans only the steps it trains (from disc_start).
        self.trainables = Trainables(
            modules={"ae": ae, "disc": disc, "lecam": self.lecam},
            optimizers={"ae": opt_g, "disc": opt_d},
            schedulers={"ae": scheduler(opt_g, s.warmup_steps, spec.steps, end),
                        "disc": scheduler(opt_d, s.warmup_steps, max(1, spec.steps - s.disc_start), end)})
        self.rows_per_step = s.batch_size
        self.size = cfg.data.resolution
        self.tokens_per_sample = (self.size // self.ae.stride) ** 2

    @staticmethod
    def _models(spec: LoopSpec, cfg: VGTConfig):
        if spec.init is None:
            if spec.stage_key == "ae_stage2":
                raise ValueError("stage2 starts from stage 1's export: pass --init AE_DIR")
            return VGTAutoencoder.from_config(cfg.ae), None  # teacher: a copy of the initial tower
        # Built first, right after the seed: with random weights it equals stage 1's initial tower.
        teacher = load_vision_encoder(cfg.ae.backbone)
        return VGTAutoencoder.from_pretrained(spec.init).train(), teacher

    def lr(self) -> float:
        return self.trainables.schedulers["ae"].get_last_lr()[0]

    def step(self, rows: list[dict], step: int, generator: torch.Generator) -> dict:
        s, env, t = self.s, self.env, self.trainables
        pixels = augmented_pixels(rows, self.size, generator).to(env.device)
        noise = device_generator(env.device, generator)
        gan = gan_active(s, step)
        out = {}

        def generator_pass(batch, _):
            out["fwd"] = fwd = t.modules["ae"](batch, noise)
            loss = generator_loss(s, step, batch, fwd.recon, fwd.student_features, fwd.teacher_features,
                                  self.perceptual, self.disc if gan else None)
            return loss.total, loss.terms

        metrics = accumulate(t.modules["ae"], env, [pixels], generator_pass)
        metrics["grad_norm"] = clip_and_step(list(self.ae.parameters()), t.optimizers["ae"],
                                             t.schedulers["ae"], s.grad_clip)
        if gan:
            metrics.update(self._disc_step(step, pixels, out["fwd"].recon))
        return metrics

    def _disc_step(self, step: int, pixels: torch.Tensor, recon: torch.Tensor) -> dict:
        s, t = self.s, self.trainables
        d = discriminator_loss(s, step, t.modules["disc"], self.lecam, pixels, recon)
        d.total.backward()
        norm = clip_and_step(list(self.disc.parameters()), t.optimizers["disc"], t.schedulers["disc"], s.grad_clip)
        # LeCam EMAs track the global batch means, the same on every rank (docs/reference.md §6.3).
        real, fake = self.env.mean(torch.stack([d.terms["real_mean"], d.terms["fake_mean"]])).float()
        self.lecam.update(real, fake)
        return {"disc_loss": d.total.detach(), "disc_grad_norm": norm, **{f"disc_{k}": v for k, v in d.terms.items()}}

    @torch.no_grad()
    def preview(self, step: int, rows: list[dict]):
        """Originals (centre crops) over their reconstructions."""
        if not self.env.is_main and self.env.strategy != "fsdp2":
            return None
        pixels = center_crop_pixels([r["image"] for r in rows[:PREVIEW_IMAGES]], self.size).to(self.env.device)
        self.ae.eval()
        with self.env.autocast():  # the compute dtype its attention kernel was chosen for
            recon = self.ae(pixels).float()
        self.ae.train()
        return image_grid([pixels, recon])

    def export(self, folder: str, weights: dict) -> None:
        """An AE folder (VGTAutoencoder.from_pretrained): student weights only, no teacher/discriminator."""
        state = {k[len("ae."):]: v for k, v in weights["ae"].items() if k.startswith("ae.")}
        save_component(folder, kind=KIND, config=self.ae.portable_config(), state_dict=state)

