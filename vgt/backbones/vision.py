"""Image features of a VLM: vision tower + projector/merger, in the VLM's LLM embedding space.

`enc(pixels[B,3,H,W], input_range=(-1, 1)) -> [B, (H//28)*(W//28), out_dim]`, tokens in raster
order of the (H/28)x(W/28) grid. The value range of `pixels` is an explicit argument (never guessed
from the data as the reference does with `x.min() < 0`); each family then applies its own
normalisation and patch layout so the pretrained weights see exactly what they were trained on.
"""
from __future__ import annotations

import torch
from torch import nn

from vgt.backbones import families

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternVL
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2.5-VL (OpenAI CLIP statistics)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _VisionEncoder(nn.Module):
    """Shared input handling: range -> [0,1] -> (x - mean) / std, and the size check."""

    stride: int
    out_dim: int
    tower: nn.Module  # the transformers vision model (its `config` is the vision config it was built with)

    def __init__(self, mean: tuple, std: tuple, vlm_config):
        super().__init__()
        self.mean, self.std = mean, std  # plain floats: stay fp32 whatever dtype the module gets
        self.vlm_config = vlm_config  # the VLM's transformers config this encoder was built from

    def hf_config(self) -> dict:
        """The VLM's full transformers config as loaded (`to_dict()` form), vision config from the tower."""
        return families.loaded_hf_config(self.vlm_config, vision_config=self.tower.config)

    def normalise(self, pixels: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [B,3,H,W], got shape {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the encoder stride {self.stride}")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        unit = (pixels.float() - lo) / (hi - lo)
        mean, std = (torch.tensor(v, device=pixels.device).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return (unit - mean) / std


def pixel_shuffle(grid: torch.Tensor, factor: int) -> torch.Tensor:
    """[B,h,w,C] -> [B,h/f,w/f,f*f*C]; out (i,j) channel di*f*C + dj*C + c = in (f*i+di, f*j+dj, c).

    The ordering of InternVL's "pixel shuffle v2" (= transformers' `InternVLModel.pixel_shuffle`
    for square grids), so the pretrained projector weights apply; written directly so that
    non-square grids work too.
    """
    b, h, w, c = grid.shape
    x = grid.reshape(b, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // factor, w // factor, factor * factor * c)


class InternVLVisionEncoder(_VisionEncoder):
    """InternViT (`vision_tower`) -> drop CLS -> pixel shuffle -> `multi_modal_projector`."""

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, config):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD, config)
        if config.vision_feature_select_strategy != "default":
            raise ValueError("only vision_feature_select_strategy='default' (drop CLS) is supported, "
                             f"got {config.vision_feature_select_strategy!r}")
        self.vision_tower, self.projector = vision_tower, projector
        self.feature_layer = config.vision_feature_layer
        self.factor = round(1 / config.downsample_ratio)
        self.patch = config.vision_config.patch_size[0]
        self.stride = self.patch * self.factor
        self.out_dim = config.text_config.hidden_size

    @property
    def tower(self) -> nn.Module:
        return self.vision_tower

    def forward(self, pixels: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        x = self.normalise(pixels, input_range).to(self.projector.linear_1.weight.dtype)
        want_all = self.feature_layer != -1
        out = self.vision_tower(pixel_values=x, output_hidden_states=want_all, return_dict=True)
        feats = out.hidden_states[self.feature_layer] if want_all else out.last_hidden_state
        b, (h, w) = x.shape[0], (s // self.patch for s in x.shape[-2:])
        grid = feats[:, 1:].reshape(b, h, w, feats.shape[-1])  # row-major patch grid
        shuffled = pixel_shuffle(grid, self.factor)
        return self.projector(shuffled.reshape(b, -1, shuffled.shape[-1]))


def qwen_patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """[B,C,H,W] -> [B*(H/p)*(W/p), C*T*p*p] in `Qwen2VLImageProcessor`'s layout.

    Patches are ordered (H/(p*m), W/(p*m), m, m) so that each merger group of m*m patches is
    contiguous and merged tokens come out in raster order; each patch vector is (C, T, py, px) with
    the still image repeated T times along time, as the processor does for images.
    """
    b, c, h, w = x.shape
    gh, gw = h // (patch * merge), w // (patch * merge)
    x = x.reshape(b, c, gh, merge, patch, gw, merge, patch).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    return x.reshape(b * gh * gw * merge * merge, c * temporal * patch * patch)


class QwenVisionEncoder(_VisionEncoder):
    """Qwen2.5-VL `visual` (ViT with window attention + 2x2 PatchMerger), one image per grid_thw row."""

    def __init__(self, visual: nn.Module, config):
        super().__init__(CLIP_MEAN, CLIP_STD, config)
        vc = config.vision_config
        self.visual = visual
        self.patch, self.merge, self.temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        self.stride = self.patch * self.merge
        self.out_dim = vc.out_hidden_size

    @property
    def tower(self) -> nn.Module:
        return self.visual

    def forward(self, pixels: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
        x = self.normalise(pixels, input_range)
        b, (h, w) = x.shape[0], (s // self.patch for s in x.shape[-2:])
        patches = qwen_patchify(x, self.patch, self.merge, self.temporal).to(self.visual.dtype)
        grid_thw = torch.tensor([[1, h, w]], device=x.device).expand(b, 3)
        out = self.visual(patches, grid_thw=grid_thw)
        merged = out if isinstance(out, torch.Tensor) else out.pooler_output  # tensor before 5.x
        return merged.reshape(b, -1, merged.shape[-1])


def encoder_from_vlm(vlm: nn.Module, family: str) -> _VisionEncoder:
    """Wrap the vision parts of an already-built VLM (shares its modules)."""
    inner = vlm.model
    if families.check_family(family) == "internvl":
        return InternVLVisionEncoder(inner.vision_tower, inner.multi_modal_projector, vlm.config)
    return QwenVisionEncoder(inner.visual, vlm.config)


def _random_encoder(backbone_cfg) -> _VisionEncoder:
    cfg = families.build_hf_config(backbone_cfg)
    attn = cfg._attn_implementation
    if backbone_cfg.family == "internvl":
        from transformers.models.internvl.modeling_internvl import (InternVLMultiModalProjector,
                                                                    InternVLVisionModel)
        tower = InternVLVisionModel._from_config(cfg.vision_config, attn_implementation=attn)
        return InternVLVisionEncoder(tower, InternVLMultiModalProjector(cfg), cfg)
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    return QwenVisionEncoder(Qwen2_5_VisionTransformerPretrainedModel._from_config(
        cfg.vision_config, attn_implementation=attn), cfg)


def load_vision_encoder(backbone_cfg, dtype: torch.dtype = torch.float32) -> _VisionEncoder:
    """Vision tower + projector/merger of `backbone_cfg`'s VLM, in eval mode (dropout off).

    Random weights from `hf_config` when `pretrained` is None, else `from_pretrained(pretrained)`
    with the LLM discarded.
    """
    families.check_family(backbone_cfg.family)
    if backbone_cfg.pretrained is None:
        enc = _random_encoder(backbone_cfg).to(dtype)
    else:
        enc = encoder_from_vlm(families.load_pretrained_vlm(backbone_cfg, dtype), backbone_cfg.family)
    return enc.eval()
