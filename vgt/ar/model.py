"""`VGTModel`: the autoregressive generator (docs/reference.md §2.1-2.4).

Backbone LLM (decoder stack, no LM head) + `in_proj` Linear(C->D) + `out_proj` Linear(D->D) +
learned position queries + the per-token flow head. Training sequence per sample:

    [prompt ids, right-padded] [<img>] q_{o1} e_{o1} q_{o2} e_{o2} ... q_{oL} e_{oL}

with o a random order of the L raster positions, `q_k = query_k + pos_k`, `e_k = in_proj(z_k) + pos_k`,
causal attention with the padding mask and contiguous per-row positions `cumsum(mask) - 1`. The
condition of token k is `out_proj` of the hidden state at q_k, so it sees the prompt and every pair
before it in the order, never its own latent.

The frozen `VGTAutoencoder` (`attach_autoencoder`) and the REPA teacher (`attach_repa_teacher`)
are deliberately not registered submodules, so they stay out of this model's state dict,
optimizer, `.to()` and FSDP wrapping (the pipeline saves the AE as its own component).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vgt.artifacts import load_model, read_component_config, save_component
from vgt.backbones import apply_attn_implementation, load_language_model, load_tokenizer
from vgt.config import ARConfig, from_dict, to_dict

from .flow import flow_loss
from .flow_head import FlowHead
from .prompts import format_prompts, load_tokenizer_folder, marker_ids, sibling_tokenizer, tokenize
from .queries import PositionQueries, token_order

KIND = "ar"
UNREGISTERED = ("ae", "repa_teacher")  # frozen helpers that never enter the state dict or optimizer


def tokens_of(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C] raster order."""
    return latents.flatten(2).transpose(1, 2)


def grid_of(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h*w, C] -> [B, C, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Contiguous per-row positions that skip padding: cumsum(mask) - 1, clamped at 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, n, D] x2 -> [B, 2n, D] as a_0 b_0 a_1 b_1 ..."""
    return torch.stack([a, b], dim=2).flatten(1, 2)


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-row gather along dim 1: x [B or 1, L, D], idx [B, n] -> [B, n, D]."""
    x = x.expand(idx.shape[0], -1, -1)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


class VGTModel(nn.Module):
    def __init__(self, config: ARConfig, latent_dim: int = 32, tokenizer=None):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.latent_dim = latent_dim
        if config.repa_weight > 0 and config.head.repa_dim <= 0:
            raise ValueError("ar.repa_weight > 0 needs a REPA projector: set ar.head.repa_dim to the teacher width")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.backbone)
        self.marker_ids = marker_ids(self.tokenizer, config.image_start_token)
        self.llm = load_language_model(config.backbone, num_layers=config.llm_num_layers)
        # the VLM config as loaded (pretrained or built from hf_config), the LLM's as truncated
        self.config.backbone.hf_config = self.llm.hf_config()
        dim = self.llm.hidden_size
        self.in_proj = nn.Linear(latent_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for lin in (self.in_proj, self.out_proj):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.queries = PositionQueries(dim, config.max_grid)
        self.head = FlowHead(latent_dim, dim, config.head.width, config.head.depth, config.head.repa_dim,
                             config.head.time_scale)
        self.ae = None  # see attach_autoencoder
        self.repa_teacher = None  # see attach_repa_teacher
        self.fingerprint: str | None = None

    def __setattr__(self, name: str, value) -> None:
        if name in UNREGISTERED:  # plain attributes even when the value is a Module (module docstring)
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    # -- components ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.in_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.in_proj.weight.dtype

    def use_attention(self, device: torch.device | str, compute_dtype: torch.dtype) -> str:
        """Set the LLM's attention kernel for computing on `device` in `compute_dtype` (the autocast or weight
        dtype; `ar.backbone.attn_implementation`, see `vgt.backbones.choose_attn_implementation`)."""
        return apply_attn_implementation(self, self.config.backbone.attn_implementation, device, compute_dtype, "AR")

    def attach_autoencoder(self, ae) -> None:
        """Use `ae` (frozen, eval mode) to encode pixels in `forward`; not part of this state dict."""
        if ae is not None:
            if ae.config.latent_channels != self.latent_dim:
                raise ValueError(f"AE has {ae.config.latent_channels} latent channels, the AR model expects "
                                 f"{self.latent_dim}")
            ae.eval().requires_grad_(False)
        self.ae = ae

    def attach_repa_teacher(self, teacher) -> None:
        """`teacher(pixels [B,3,H,W] in [-1,1], (h, w)) -> [B, h*w, repa_dim]` (e.g. `repa.dinov3_teacher()`),
        used when `forward` gets pixels but no `teacher_features`; kept out of the state dict."""
        self.repa_teacher = teacher

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_texts(self, captions: list[str], drop: torch.Tensor | None = None) -> list[str]:
        return format_prompts(captions, self.config.prompt_template, self.config.uncond_prompt, drop)

    def embed_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chat texts -> (embeds [B, T+k, D], mask [B, T+k]): right-padded ids, then the `<img>` marker."""
        ids, mask = tokenize(self.tokenizer, texts, self.config.max_prompt_tokens)
        marker = torch.tensor(self.marker_ids).expand(ids.shape[0], -1)
        ids = torch.cat([ids, marker], dim=1).to(self.device)
        mask = torch.cat([mask, torch.ones_like(marker)], dim=1).to(self.device)
        return self.llm.embed(ids), mask

    # -- training --------------------------------------------------------------------------------
    def sample_orders(self, batch: int, num_tokens: int, generator: torch.Generator | None) -> torch.Tensor:
        """[B, L] generation orders: one per sample, or (reference parity) one shared by the batch, or raster."""
        if self.config.train_order != "random":
            return token_order(num_tokens, self.config.train_order).expand(batch, -1)
        if self.config.per_sample_order:
            return torch.stack([token_order(num_tokens, "random", generator) for _ in range(batch)])
        return token_order(num_tokens, "random", generator).expand(batch, -1)

    def training_conditions(self, embeds: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                            grid: tuple[int, int], orders: torch.Tensor) -> torch.Tensor:
        """Teacher-forced conditions [B, L, D] in raster order for latent tokens [B, L, C] fed in `orders`."""
        queries, pos = self.queries(*grid)
        orders = orders.to(self.device)
        lat = self.in_proj(tokens.to(self.dtype)) + pos
        seq = interleave(take(queries[None], orders), take(lat, orders))
        full_mask = torch.cat([mask, mask.new_ones(seq.shape[:2])], dim=1)
        hidden, _ = self.llm(torch.cat([embeds, seq], dim=1), attention_mask=full_mask,
                             position_ids=positions_of(full_mask))
        cond = self.out_proj(hidden[:, -seq.shape[1]::2])  # query positions, generation order
        return torch.zeros_like(cond).scatter(1, orders[..., None].expand_as(cond), cond)

    def forward(self, captions: list[str], latents: torch.Tensor | None = None, pixels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, teacher_features: torch.Tensor | None = None) -> dict:
        """Training loss. Give `latents` [B, C, h, w] (precomputed, normalised) or `pixels` [B,3,H,W] in
        [-1,1] (encoded by the attached AE). Randomness (CFG dropout, orders, timesteps, noise) comes
        from `generator`, in that order. Returns {"loss", "flow_loss"[, "repa_loss"]}."""
        latents = self._latents(latents, pixels)
        batch, _, h, w = latents.shape
        if len(captions) != batch:
            raise ValueError(f"{len(captions)} captions for {batch} images")
        drop = torch.rand(batch, generator=generator) < self.config.cfg_dropout
        embeds, mask = self.embed_prompts(self.prompt_texts(captions, drop))
        tokens = tokens_of(latents)
        cond = self.training_conditions(embeds, mask, tokens, (h, w), self.sample_orders(batch, h * w, generator))
        use_repa = self.config.repa_weight > 0
        flow, repa = flow_loss(self.head, tokens.reshape(-1, self.latent_dim), cond.reshape(-1, cond.shape[-1]),
                               generator, shift=self.config.head.timeshift, fp32=self.config.fp32_flow,
                               return_repa=use_repa, batch_mul=self.config.head_batch_mul)
        if not use_repa:
            return {"loss": flow, "flow_loss": flow}
        feats = self._teacher_features(teacher_features, pixels, (h, w))
        repa_loss = -F.cosine_similarity(repa.float(), feats.reshape(repa.shape).float(), dim=-1).mean()
        return {"loss": flow + self.config.repa_weight * repa_loss, "flow_loss": flow, "repa_loss": repa_loss}

    def _latents(self, latents, pixels) -> torch.Tensor:
        if latents is None:
            if pixels is None or self.ae is None:
                raise ValueError("forward needs latents, or pixels with an attached autoencoder")
            with torch.no_grad():
                latents = self.ae.encode(pixels)
        if latents.ndim != 4 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents [B,{self.latent_dim},h,w], got {tuple(latents.shape)}")
        return latents.to(self.device)

    def _teacher_features(self, given, pixels, grid) -> torch.Tensor:
        if given is None:
            if self.repa_teacher is None or pixels is None:
                raise ValueError("ar.repa_weight > 0 needs teacher_features, or pixels and an attached REPA teacher")
            with torch.no_grad():
                given = self.repa_teacher(pixels, grid)
        return given.to(self.device)

    # -- artifacts -------------------------------------------------------------------------------
    def portable_config(self) -> dict:
        cfg = copy.deepcopy(self.config)
        cfg.backbone.pretrained = None  # weights come from the folder; hf_config (as loaded) rebuilds the model
        return {"ar": to_dict(cfg), "latent_dim": self.latent_dim}

    def save_pretrained(self, folder: str) -> str:
        self.fingerprint = save_component(folder, kind=KIND, config=self.portable_config(),
                                          state_dict=self.state_dict())
        return self.fingerprint

    @classmethod
    def from_pretrained(cls, folder: str, tokenizer=None) -> "VGTModel":
        """Load an AR folder, rebuilt from the LLM config it stores (checks: `vgt.artifacts.load_model`).
        Without `tokenizer`: the enclosing pipeline folder's `tokenizer/` if there is one, else the
        tokenizer the config names."""
        if tokenizer is None and (saved := sibling_tokenizer(folder)) is not None:
            tokenizer = load_tokenizer_folder(saved)
        if tokenizer is None:  # built once here, not again for every model the checks build
            stored = read_component_config(folder, KIND)["config"]["ar"]
            tokenizer = load_tokenizer(from_dict(ARConfig, stored).backbone)

        def build(config: dict) -> "VGTModel":
            return cls(from_dict(ARConfig, config["ar"]), latent_dim=config["latent_dim"], tokenizer=tokenizer)

        model, fp = load_model(folder, KIND, build)
        model.fingerprint = fp
        return model.eval()
