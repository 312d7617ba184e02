"""The VGT-AR training stage (docs/reference.md §2-3) on the shared loop (vgt/train/loop.py).

The finished autoencoder (`--ae`: ours or converted) is frozen. A source whose `latent` column was
made by exactly this AE (fingerprint in its manifest) is read as latents; any other source is
centre-cropped and encoded on the fly with the same code prep-latents uses. The LLM's decoder
layers are the FSDP2 units (and the activation-checkpointing units). AdamW (wd 0.05 on >= 2-d
tensors), warm-up + cosine, clip 1.0, EMA from `ema_start`, CFG dropout inside the model,
optional REPA. `pretrain` starts from the preset (pretrained VLM or random); `sft` from `--init`
(a pipeline folder, e.g. pretrain's export). The export is a pipeline folder with EMA weights.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import torch

from vgt.train.checkpoint import Trainables
from vgt.train.distributed import WorkerEnv, accumulate, clip_and_step, distribute, gathered, split_micro_batches
from vgt.train.images import image_grid
from vgt.train.loop import LoopSpec
from vgt.train.stage import register
from vgt.train.optim import adamw, param_groups, scheduler
from vgt.train.ema import EMA
from vgt import io as vio
from vgt.ae.model import VGTAutoencoder
from vgt.adapter import save_adapter
from vgt.ar import lora
from vgt.ar.model import KIND, VGTModel
from vgt.ar.sampling import image_generator, sample_latents
from vgt.artifacts import ArtifactError, check_same_backbone, load_component
from vgt.config import AEConfig, VGTConfig, from_dict
from vgt.data.encode import center_crop_pixels, encode_pixels
from vgt.data.latents import latents_from_columns
from vgt.data.reader import LatentMismatchError
from vgt.footprint import MemoryPlan, ar_activation_shape, device_memory_bytes, plan_ar_memory
from vgt.pipeline import VGTPipeline, read_index

log = logging.getLogger(__name__)
PREVIEW_IMAGES = 4


@register("ar")
class ARStage:
    export_modules = ["model"]

    def __init__(self, spec: LoopSpec, env: WorkerEnv):
        self.env = env
        self.cfg = cfg = from_dict(VGTConfig, spec.config)
        self.s = s = getattr(cfg.train, spec.stage_key)
        self.ae = VGTAutoencoder.from_pretrained(spec.ae).to(env.device).eval().requires_grad_(False)
        cfg.ae = from_dict(AEConfig, self.ae.portable_config())  # the exported pipeline's AE
        self.model = self._model(spec, cfg)
        self.init = spec.init
        self.lora = self._lora(spec)
        self.model.attach_autoencoder(self.ae)
        # attention for where and in what dtype forwards compute (bf16 autocast / FSDP2 params on GPU)
        attention = self.model.use_attention(env.device, env.compute_dtype)
        self.ae.use_attention(env.device, env.compute_dtype)
        if cfg.ar.repa_weight > 0:
            self.model.repa_teacher = self._repa_teacher
        self.size = cfg.data.resolution
        self.grid = (self.size // self.ae.stride,) * 2
        self.memory = self._memory_plan(attention)
        if env.is_main:
            (log.info if self.memory.fits() else log.warning)("%s", self.memory.describe())
        blocks = list(self.model.llm.model.layers)
        wrapped = distribute(self.model, env, blocks, self.memory.checkpointing)
        opt = adamw(param_groups(self.model.named_parameters(), s.lr, s.weight_decay), s.lr, s.betas)
        self.trainables = Trainables({"model": wrapped}, {"model": opt},
                                     {"model": scheduler(opt, s.warmup_steps, spec.steps, s.end_lr / s.lr)},
                                     {"model": EMA(self.model, s.ema_decay, s.ema_start)})
        self.rows_per_step = s.batch_size * s.grad_accum
        self.tokens_per_sample = 2 * self.grid[0] * self.grid[1]  # + prompt tokens, counted per step

    def _lora(self, spec: LoopSpec):
        """The peft LoraConfig when the stage tunes the LLM by LoRA (injected into the model here), else None.
        An adapter export names its base pipeline: the --init folder, whose AE must be the stage's --ae."""
        if not self.s.lora.enabled:
            return None
        if self.s.lora.export == "adapter":
            if spec.init is None:
                raise ValueError(f"train.{spec.stage_key}.lora.export=adapter needs --init PIPELINE_DIR: the base "
                                 "pipeline the adapter loads onto")
            base_ae = read_index(spec.init)["fingerprints"]["ae"]
            if base_ae != self.ae.fingerprint:
                raise ValueError(f"train.{spec.stage_key}.lora.export=adapter: --ae {spec.ae!r} (fingerprint "
                                 f"{self.ae.fingerprint}) is not the AE of the --init pipeline ({base_ae}), which "
                                 "the adapter decodes with")
        config = lora.peft_config(self.s.lora)
        lora.inject(self.model, config)
        return config

    def _memory_plan(self, attention: str) -> MemoryPlan:
        """Per-GPU memory of this stage, and whether to checkpoint activations (train.activation_checkpointing,
        null: when the estimate without it does not fit the device)."""
        env, model = self.env, self.model
        shape = ar_activation_shape(model, self.s.batch_size, self.grid[0] * self.grid[1])
        layer = model.llm.model.layers[0]
        return plan_ar_memory(
            shape, trainable=_count(model, trainable=True), frozen=sum(p.numel() for p in self.ae.parameters()),
            layer_params=_count(layer), base=_count(model, trainable=False),
            layer_trainable=_count(layer, trainable=True), strategy=env.strategy,
            world=env.world, compute_dtype=env.compute_dtype, attention=attention, device_type=env.device.type,
            device_bytes=device_memory_bytes(env.device), setting=self.cfg.train.activation_checkpointing)

    def _model(self, spec: LoopSpec, cfg: VGTConfig) -> VGTModel:
        model = VGTModel(cfg.ar, latent_dim=self.ae.config.latent_channels)
        if spec.init is None:
            if spec.stage_key == "ar_sft":
                raise ValueError("sft starts from a pretrained pipeline: pass --init PIPELINE_DIR")
            return model.train()
        folder = vio.join(spec.init, read_index(spec.init)["components"]["ar"])
        stored, state, _ = load_component(folder, kind=KIND)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ArtifactError(f"--init {spec.init!r} does not fit the preset's AR architecture: {err}") from err
        # shapes fit; eps, rope, activations must too (the folder records the LLM config it was trained with)
        check_same_backbone(f"--init {spec.init!r}", stored["ar"]["backbone"]["hf_config"],
                            model.config.backbone.hf_config, "ar.backbone.hf_config")
        return model.train()

    def _repa_teacher(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """REPA target: the frozen AE's vision-tower features (DINOv3 needs timm, kept out of the deps)."""
        return self.ae.encode_features(pixels.to(self.env.device))

    def columns(self, dataset) -> list[str]:
        """Latents where this AE made them, images otherwise (and for REPA)."""
        try:
            dataset.check_latents(self.ae.fingerprint)
            latents = True
        except LatentMismatchError as err:
            log.warning("%s: encoding centre crops on the fly (%s)", dataset.uri, err)
            latents = False
        images = not latents or self.cfg.ar.repa_weight > 0
        return ["caption"] + (["latent", "latent_shape"] if latents else []) + (["image"] if images else [])

    def lr(self) -> float:
        return self.trainables.schedulers["model"].get_last_lr()[0]

    def inputs(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents [B, C, h, w] fp32, centre-crop pixels when every row has its image, else None).
        Stored latents where a row has them; the others are encoded now."""
        imaged = [i for i, r in enumerate(rows) if "image" in r]
        pixels = center_crop_pixels([rows[i]["image"] for i in imaged], self.size) if imaged else None
        stored = [i for i, r in enumerate(rows) if "latent" in r]
        missing = [i for i in range(len(rows)) if "latent" not in rows[i]]
        out = torch.empty(len(rows), self.ae.config.latent_channels, *self.grid)
        if stored:
            arr = latents_from_columns(pa.array([rows[i]["latent"] for i in stored], pa.binary()),
                                       pa.array([rows[i]["latent_shape"] for i in stored]))
            out[stored] = torch.from_numpy(arr).float()
        if missing:
            crops = pixels[[imaged.index(i) for i in missing]]
            out[missing] = torch.from_numpy(encode_pixels(self.ae, crops)).float()
        return out, pixels if len(imaged) == len(rows) else None

    def step(self, rows: list[dict], step: int, generator: torch.Generator) -> dict:
        s, env, t = self.s, self.env, self.trainables
        model = t.modules["model"]
        tokens = 0

        def loss_fn(micro: list[dict], _):
            nonlocal tokens
            latents, pixels = self.inputs(micro)
            captions = [r["caption"] for r in micro]
            out = model(captions, latents=latents.to(env.device), pixels=_to(pixels, env.device),
                        generator=generator)
            tokens += len(micro) * self.tokens_per_sample + sum(self._prompt_tokens(captions))
            return out["loss"], {k: v for k, v in out.items() if k != "loss"}

        metrics = accumulate(model, env, split_micro_batches(rows, s.grad_accum), loss_fn)
        metrics["grad_norm"] = clip_and_step(list(model.parameters()), t.optimizers["model"],
                                             t.schedulers["model"], s.grad_clip)
        metrics["tokens"] = tokens
        return metrics

    def _prompt_tokens(self, captions: list[str]) -> list[int]:
        texts = self.model.prompt_texts(captions)
        return [min(len(ids), self.cfg.ar.max_prompt_tokens) for ids in self.model.tokenizer(texts)["input_ids"]]

    @torch.no_grad()
    def preview(self, step: int, rows: list[dict]):
        """Samples for the batch's first captions (live weights), the same on every rank, with the
        run's `config.sample` (every setting, as the exported pipeline folder samples by default)."""
        if not self.env.is_main and self.env.strategy != "fsdp2":
            return None  # FSDP2 forwards are collective: every rank samples
        captions = [r["caption"] for r in rows[:PREVIEW_IMAGES]]
        settings = self.cfg.sample.resolve(num_tokens=self.grid[0] * self.grid[1])
        self.model.eval()
        with gathered(self.model), self.env.autocast():
            latents = sample_latents(self.model, captions, [image_generator(step, i) for i in range(len(captions))],
                                     self.grid, **settings.as_kwargs())
        self.model.train()
        return image_grid([self.ae.decode(latents.to(self.env.device))])

    def export(self, folder: str, weights: dict) -> None:
        """A pipeline folder (VGTPipeline.from_pretrained): EMA (or live) AR weights + the AE + tokenizer; under
        LoRA the adapters merged into the LLM, or (lora.export=adapter) an adapter folder on the --init pipeline."""
        state = weights["model"]
        if self.lora is not None and self.s.lora.export == "adapter":
            save_adapter(folder, self.cfg, self.lora, state, base=self.init)
            return
        if self.lora is not None:
            state = lora.merge_state_dict(state, self.lora)
        model = VGTModel(self.cfg.ar, latent_dim=self.ae.config.latent_channels, tokenizer=self.model.tokenizer)
        model.load_state_dict(state)
        VGTPipeline(self.cfg, model.eval(), self.ae, self.model.tokenizer).save_pretrained(folder)


def _count(module: torch.nn.Module, trainable: bool | None = None) -> int:
    """Parameters of `module`: all, or those that train (`trainable`) / stay frozen."""
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def _to(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.to(device)
