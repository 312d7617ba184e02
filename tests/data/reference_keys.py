"""Writes reference_ae_keys.json and reference_ar_keys.json: the state-dict keys (and shapes) of the
reference's released checkpoints, derived from the reference's own module definitions.

    python tests/data/reference_keys.py          # rewrite both JSON files next to this script
    python tests/data/reference_keys.py --check  # exit 1 if the committed files differ

Source: the public repository https://github.com/hustvl/VGT at commit
56bd80e2a1ceef490627e0c1df5805aa5bb13ddf, read with `git show <commit>:<path>`. No code of it is
copied here: every name the reference itself chooses (its wrapper attributes, its Sequential
layouts, its parameter names) is written out below by hand, next to the file and line that define
it (`NAMES` lists them again and goes into the JSON metadata). Files read:

    src/models/vgt_internvl3.py                        the AR model (VGT_InternVL3)
    src/models/flow_head.py                            FlowMatchingHead / SimpleMLPAdaLN / build_mlp
    src/models/adaptive_metaquery.py                   the query and position maps
    src/models/dinov3_feature_extractor.py             the REPA teacher wrapper
    src/models/internvl3/modeling_internvl_chat.py     InternVLChatModel (the `lmm`)
    tokenizer/modeling/__init__.py, vlvae_intervl.py   the InternVL AE (VLVAE_InterVL3_Train)
    tokenizer/modeling/internvl3/modeling_intern_vit.py  InternViT (identical blob in src/models/internvl3/)
    tokenizer/configs/vgtae_intervl3/vlvae_intervl3_p28_448px_stage2.yaml  the AE config the AR configs load
    src/models/vgtae_qwen25vl.py                       the Qwen AE (VGTAE_Qwen25VL)
    configs/models/vgt_internvl3_{0_6B,1_6B}_448px.py  head width/depth, query-map size, which AE
    configs/pretrain/vgt_internvl3_0_6B_448px_pretrain.py, configs/finetune/..._sft.py  repa_loss_weight = 0.5
    src/hooks/ema_hook.py, src/utils.py                what `state_dict` / `ema_state_dict` hold

Parts whose names are not the reference's own are taken from their owners:

* the LLM inside the `lmm` is transformers' `Qwen2ForCausalLM` (modeling_internvl_chat.py:70-71) and
  the Qwen AE's encoder is transformers' Qwen2.5-VL vision model (vgtae_qwen25vl.py:126-134): their
  keys come from instantiating those transformers classes on the meta device;
* the AE decoder is diffusers' `AutoencoderDC(...).decoder` (vlvae_intervl.py:211-212,
  vgtae_qwen25vl.py:157-158): its keys come from instantiating diffusers' class;
* the REPA teacher is timm's `vit_base_patch16_dinov3` (an `Eva`), created with num_classes=0
  (dinov3_feature_extractor.py:59-63): timm is not installed here, so its keys are written out from
  timm's source, https://github.com/huggingface/pytorch-image-models tag v1.0.20 (commit
  234907eca5d801a369b536e001ec0b45d8ec9d60, the first release with the `...dinov3.lvd1689m` name the
  reference uses), lines cited in `dinov3()`.

Architecture numbers (widths, depths, vocabularies) are those of vgt/backbones/real_configs.py.
Keys are listed after stripping the `module.` prefix that the reference's checkpoints carry; a key
pattern holds at most one `{name}`, expanded over `ranges[name]`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = "https://github.com/hustvl/VGT"
COMMIT = "56bd80e2a1ceef490627e0c1df5805aa5bb13ddf"
TIMM = ("https://github.com/huggingface/pytorch-image-models", "v1.0.20", "234907eca5d801a369b536e001ec0b45d8ec9d60")

# Where each reference-chosen name is defined (path:line at COMMIT).
NAMES = {
    "lmm": "src/models/vgt_internvl3.py:129 (self.lmm = InternVLChatModel; vision_model and mlp1 deleted at :133-134)",
    "lmm.language_model": "src/models/internvl3/modeling_internvl_chat.py:70-71 (Qwen2ForCausalLM)",
    "vgt_ae": "src/models/vgt_internvl3.py:139-142 (model_map[...] of the stage-2 yaml, configs/models/*:38-41)",
    "dinov3_extractor": "src/models/vgt_internvl3.py:147-151 (only when repa_loss_weight > 0)",
    "dinov3_extractor.model": "src/models/dinov3_feature_extractor.py:59-63 (timm.create_model(..., num_classes=0))",
    "adaptive_metaquery": "src/models/vgt_internvl3.py:167",
    "adaptive_metaquery.max_metaquery": "src/models/adaptive_metaquery.py:161-163 ([1, D, 64, 64]; max_size=(64,64) "
                                        "in configs/models/*:27)",
    "adaptive_metaquery.pos_encoding": "src/models/adaptive_metaquery.py:167",
    "adaptive_metaquery.pos_encoding.grid_embed": "src/models/adaptive_metaquery.py:44-46",
    "image_in_projector": "src/models/vgt_internvl3.py:172 (Linear(latent_dim, D))",
    "image_out_projector": "src/models/vgt_internvl3.py:177-180 (Linear(D, D))",
    "image_head": "src/models/vgt_internvl3.py:194 (FlowMatchingHead, dim=1536, layers=12 in configs/models/*:30-35)",
    "image_head.net": "src/models/flow_head.py:341 (SimpleMLPAdaLN)",
    "net.time_embed.mlp.{0,2}": "src/models/flow_head.py:31-35, 111 (TimestepEmbedder, 256 frequencies)",
    "net.cond_embed / net.input_proj": "src/models/flow_head.py:112-113",
    "net.res_blocks.{j}.{in_ln, mlp.{0,2}, adaLN_modulation.1}": "src/models/flow_head.py:69-75, 115-118 (mlp_ratio 1)",
    "net.repa_projector.{0,2,4}": "src/models/flow_head.py:15-23, 121-123 (build_mlp(dim, 2048, 768)); enabled "
                                  "by src/models/vgt_internvl3.py:190 with repa_loss_weight 0.5 "
                                  "(configs/pretrain/*:17, configs/finetune/*:16)",
    "net.final_layer.{linear, adaLN_modulation.1}": "src/models/flow_head.py:84-88, 126 (norm_final has no affine)",
    "vgt_ae.encoder / mlp1": "tokenizer/modeling/vlvae_intervl.py:177-179 (InternVL3-1B's vision_model and mlp1)",
    "vgt_ae.teacher / teacher_mlp1": "tokenizer/modeling/vlvae_intervl.py:181-182 (deep copies; kept, :409)",
    "vgt_ae.down_blocks.{j}.mlp.{0,1,3}": "tokenizer/modeling/vlvae_intervl.py:100-111, 187-190 (3 blocks)",
    "vgt_ae.down_mlp.{0,1,3}": "tokenizer/modeling/vlvae_intervl.py:201-206 (kl=False; embed_dim 32 in the yaml)",
    "vgt_ae.decoder": "tokenizer/modeling/vlvae_intervl.py:211-212 (AutoencoderDC(...).decoder)",
    "mlp1.{0,1,3}": "src/models/internvl3/modeling_internvl_chat.py:78-83 (LN(4h), Linear(4h, D), GELU, Linear(D, D))",
    "InternViT embeddings": "tokenizer/modeling/internvl3/modeling_intern_vit.py:141-152 "
                            "(class_embedding, patch_embedding, position_embedding)",
    "InternViT encoder.layers.{i}": "tokenizer/modeling/internvl3/modeling_intern_vit.py:196-208 (attn.qkv, "
                                    "attn.proj), 256-257 (mlp.fc1/fc2), 273-279 (norm1, norm2, ls1, ls2), "
                                    "313-314, 375-376",
    "qwen AE encoder": "src/models/vgtae_qwen25vl.py:134 (self.encoder = model.visual)",
    "qwen AE down_blocks / down_mlp / decoder": "src/models/vgtae_qwen25vl.py:54-65, 143-158",
    "state_dict vs ema_state_dict": "src/hooks/ema_hook.py:164-178, 223-231 (EMA and raw swapped before saving; "
                                    "'module.' prefixes on both); src/utils.py:88-117 (the reference's loader "
                                    "prefers ema_state_dict)",
}

# The reference's fixed numbers (not architecture numbers of the backbones).
HEAD_WIDTH, HEAD_DEPTH = 1536, 12  # configs/models/vgt_internvl3_*_448px.py:30-35
REPA_HIDDEN = 2048  # src/models/flow_head.py:123
DINO_WIDTH, DINO_DEPTH, DINO_REGS, DINO_PATCH = 768, 12, 4, 16  # timm eva.py:2727-2748 (vit_base_patch16_dinov3)
LATENT = 32  # embed_dim in tokenizer/configs/vgtae_intervl3/vlvae_intervl3_p28_448px_stage2.yaml
MAP_SIDE = 64  # max_size in configs/models/vgt_internvl3_*_448px.py:27
AE_BLOCKS = 3  # tokenizer/modeling/vlvae_intervl.py:188, src/models/vgtae_qwen25vl.py:144


def linear(prefix: str, out: int, inp: int, bias: bool = True) -> dict[str, list[int]]:
    keys = {f"{prefix}.weight": [out, inp]}
    if bias:
        keys[f"{prefix}.bias"] = [out]
    return keys


def layer_norm(prefix: str, width: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [width], f"{prefix}.bias": [width]}


def meta_keys(build, prefix: str) -> dict[str, list[int]]:
    """Keys and shapes of a third-party module (transformers / diffusers), built on the meta device."""
    with torch.device("meta"):
        module = build()
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def fold(keys: dict[str, list[int]], stem: str, var: str) -> dict[str, list[int]]:
    """`{stem}.N.rest` keys -> `{stem}.{var}.rest` patterns, after checking every N has the same ones."""
    pattern = re.compile(re.escape(stem) + r"\.(\d+)\.(.+)$")
    layers: dict[int, dict[str, list[int]]] = {}
    out = {}
    for key, shape in keys.items():
        m = pattern.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = shape
        else:
            out[key] = shape
    if sorted(layers) != list(range(len(layers))) or any(v != layers[0] for v in layers.values()):
        raise ValueError(f"{stem}.N.* differ between layers: cannot fold them into one pattern")
    out.update({f"{stem}.{{{var}}}.{rest}": shape for rest, shape in layers.get(0, {}).items()})
    return out


def internvit(prefix: str, vision: dict, var: str) -> dict[str, list[int]]:
    """InternViT in its remote-code names (modeling_intern_vit.py lines in NAMES)."""
    h, inner = vision["hidden_size"], vision["intermediate_size"]
    patch, size = vision["patch_size"][0], vision["image_size"][0]
    keys = {f"{prefix}embeddings.class_embedding": [1, 1, h],
            f"{prefix}embeddings.patch_embedding.weight": [h, 3, patch, patch],
            f"{prefix}embeddings.patch_embedding.bias": [h],
            f"{prefix}embeddings.position_embedding": [1, (size // patch) ** 2 + 1, h]}
    layer = f"{prefix}encoder.layers.{{{var}}}."
    keys.update(linear(layer + "attn.qkv", 3 * h, h, bias=vision["attention_bias"]))
    if vision["use_qk_norm"]:  # InternRMSNorm over the full width (modeling_intern_vit.py:202-204)
        keys.update({layer + "attn.q_norm.weight": [h], layer + "attn.k_norm.weight": [h]})
    keys.update(linear(layer + "attn.proj", h, h))
    keys.update(linear(layer + "mlp.fc1", inner, h))
    keys.update(linear(layer + "mlp.fc2", h, inner))
    for norm in ("norm1", "norm2"):  # NORM2FN: layer_norm has a bias, rms_norm does not
        with_bias = vision["norm_type"] == "layer_norm"
        keys.update(layer_norm(layer + norm, h) if with_bias else {layer + norm + ".weight": [h]})
    keys.update({layer + "ls1": [h], layer + "ls2": [h]})
    return keys


def internvl_mlp1(prefix: str, vit: int, llm: int, downsample: float) -> dict[str, list[int]]:
    wide = vit * int(1 / downsample) ** 2
    return {**layer_norm(f"{prefix}.0", wide), **linear(f"{prefix}.1", llm, wide), **linear(f"{prefix}.3", llm, llm)}


def bottleneck(width: int, var: str) -> dict[str, list[int]]:
    """down_blocks (ResBlock: mlp = LN, Linear, GELU, Linear) and down_mlp (LN, Linear, GELU, Linear)."""
    block = f"down_blocks.{{{var}}}.mlp"
    return {**layer_norm(f"{block}.0", width), **linear(f"{block}.1", width, width),
            **linear(f"{block}.3", width, width), **layer_norm("down_mlp.0", width),
            **linear("down_mlp.1", LATENT, width), **linear("down_mlp.3", LATENT, LATENT)}


def dc_ae_decoder() -> dict[str, list[int]]:
    from diffusers import AutoencoderDC

    from vgt.backbones.real_configs import DC_AE_F32C32_SANA

    return meta_keys(lambda: AutoencoderDC(**DC_AE_F32C32_SANA).decoder, "decoder.")


def internvl_ae(vit_var: str = "i", block_var: str = "j") -> dict[str, list[int]]:
    """VLVAE_InterVL3_Train on InternVL3-1B (the AE both InternVL AR configs load)."""
    from vgt.backbones.real_configs import INTERNVL3_1B

    vision, llm = INTERNVL3_1B["vision_config"], INTERNVL3_1B["text_config"]["hidden_size"]
    keys = {}
    for tower, mlp in (("encoder.", "mlp1"), ("teacher.", "teacher_mlp1")):
        keys.update(internvit(tower, vision, vit_var))
        keys.update(internvl_mlp1(mlp, vision["hidden_size"], llm, INTERNVL3_1B["downsample_ratio"]))
    return {**keys, **bottleneck(llm, block_var), **dc_ae_decoder()}


def qwen_ae() -> dict[str, list[int]]:
    """VGTAE_Qwen25VL on Qwen2.5-VL-3B-Instruct: transformers' vision model (with its merger) as `encoder`."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from vgt.backbones.real_configs import QWEN25VL_3B

    vision = Qwen2_5_VLConfig(**QWEN25VL_3B).vision_config
    encoder = meta_keys(lambda: Qwen2_5_VisionTransformerPretrainedModel._from_config(vision), "encoder.")
    return {**fold(encoder, "encoder.blocks", "i"), **bottleneck(QWEN25VL_3B["text_config"]["hidden_size"], "j"),
            **dc_ae_decoder()}


def flow_head(prefix: str, cond: int, repa_dim: int) -> dict[str, list[int]]:
    w = HEAD_WIDTH
    keys = {**linear(f"{prefix}time_embed.mlp.0", w, 256), **linear(f"{prefix}time_embed.mlp.2", w, w),
            **linear(f"{prefix}cond_embed", w, cond), **linear(f"{prefix}input_proj", w, LATENT)}
    block = f"{prefix}res_blocks.{{j}}."
    keys.update({**layer_norm(block + "in_ln", w), **linear(block + "mlp.0", w, w), **linear(block + "mlp.2", w, w),
                 **linear(block + "adaLN_modulation.1", 3 * w, w)})
    if repa_dim:
        keys.update({**linear(f"{prefix}repa_projector.0", REPA_HIDDEN, w),
                     **linear(f"{prefix}repa_projector.2", REPA_HIDDEN, REPA_HIDDEN),
                     **linear(f"{prefix}repa_projector.4", repa_dim, REPA_HIDDEN)})
    keys.update({**linear(f"{prefix}final_layer.linear", LATENT, w),
                 **linear(f"{prefix}final_layer.adaLN_modulation.1", 2 * w, w)})
    return keys


def dinov3(prefix: str) -> dict[str, list[int]]:
    """timm v1.0.20 `Eva` as vit_base_patch16_dinov3 configures it (timm/models/eva.py:2727-2748: qkv_bias=False,
    init_values=1e-5, use_abs_pos_emb=False, num_reg_tokens=4, use_fc_norm=False, RoPE), num_classes=0."""
    d = DINO_WIDTH
    keys = {f"{prefix}cls_token": [1, 1, d],  # eva.py:600
            f"{prefix}reg_token": [1, DINO_REGS, d],  # eva.py:601 (no pos_embed: :605 with use_abs_pos_emb=False)
            f"{prefix}patch_embed.proj.weight": [d, 3, DINO_PATCH, DINO_PATCH],  # layers/patch_embed.py:59
            f"{prefix}patch_embed.proj.bias": [d]}  # bias=not use_pre_transformer_norm (eva.py:594)
    # RoPE buffers are non-persistent (layers/pos_embed_sincos.py:985, 990); norm_pre, fc_norm, head: Identity
    block = f"{prefix}blocks.{{k}}."
    keys.update({**layer_norm(block + "norm1", d),  # eva.py:290
                 block + "attn.qkv.weight": [3 * d, d],  # eva.py:157; q_bias/v_bias absent without qkv_bias (:159-163)
                 **linear(block + "attn.proj", d, d),  # eva.py:175
                 block + "gamma_1": [d],  # eva.py:305 (layer scale)
                 **layer_norm(block + "norm2", d),  # eva.py:308
                 # eva.py:331, timm/layers/mlp.py:36-40 (Mlp, bias on both)
                 **linear(block + "mlp.fc1", 4 * d, d), **linear(block + "mlp.fc2", d, 4 * d),
                 block + "gamma_2": [d]})  # eva.py:338
    keys.update(layer_norm(f"{prefix}norm", d))  # eva.py:666 (post norm, since use_fc_norm=False)
    return keys


def internvl_ar(text_config: dict) -> dict[str, list[int]]:
    """VGT_InternVL3 trained with REPA: its state dict after stripping `module.`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dim = text_config["hidden_size"]
    llm = meta_keys(lambda: Qwen2ForCausalLM(Qwen2Config(**text_config)), "lmm.language_model.")
    keys = fold(llm, "lmm.language_model.model.layers", "i")
    keys.update({"adaptive_metaquery.max_metaquery": [1, dim, MAP_SIDE, MAP_SIDE],
                 "adaptive_metaquery.pos_encoding.grid_embed": [1, dim, MAP_SIDE, MAP_SIDE],
                 **linear("image_in_projector", dim, LATENT), **linear("image_out_projector", dim, dim),
                 **flow_head("image_head.net.", dim, DINO_WIDTH)})
    keys.update({f"vgt_ae.{k}": v for k, v in internvl_ae(vit_var="vit", block_var="ae").items()})
    keys.update(dinov3("dinov3_extractor.model."))
    return keys


def metadata(what: str) -> dict:
    return {"what": what, "repository": REPO, "commit": COMMIT, "names_from": NAMES,
            "timm": {"repository": TIMM[0], "tag": TIMM[1], "commit": TIMM[2]},
            "generator": "tests/data/reference_keys.py (architecture numbers: vgt/backbones/real_configs.py)",
            "placeholders": "a key holds at most one {name}, expanded over ranges[name] = 0 .. n-1"}


def ae_lists() -> dict:
    from vgt.backbones.real_configs import INTERNVL3_1B, QWEN25VL_3B

    return {
        "_source": metadata("reference AE checkpoints (vgt_ae_internvl3.pth, vgt_ae_qwen25vl.pth): the state dict of "
                            "VLVAE_InterVL3_Train / VGTAE_Qwen25VL. The InternVL one keeps its distillation teacher "
                            "(teacher.*, teacher_mlp1.*). The Qwen AE's training class is not public; its keys are "
                            "those of the class that loads it."),
        "internvl3": {"ranges": {"i": INTERNVL3_1B["vision_config"]["num_hidden_layers"], "j": AE_BLOCKS},
                      "keys": internvl_ae()},
        "qwen25vl": {"ranges": {"i": QWEN25VL_3B["vision_config"]["depth"], "j": AE_BLOCKS}, "keys": qwen_ae()},
    }


def ar_lists() -> dict:
    from vgt.backbones.real_configs import INTERNVL3_1B, INTERNVL3_2B

    vit_layers = INTERNVL3_1B["vision_config"]["num_hidden_layers"]  # the AE is InternVL3-1B's for both
    out = {"_source": metadata(
        "reference AR checkpoints trained with REPA (weight 0.5): `state_dict` (and, with `module.` and an extra "
        "`steps` counter, `ema_state_dict`) of VGT_InternVL3 on InternVL3-1B (the '0.6B' model) and InternVL3-2B "
        "(the released '1.6B' model, hustvl/vgt_internvl3_1_6B_{pretrain,sft}); both carry the InternVL3-1B AE "
        "under vgt_ae.* and the DINOv3 REPA teacher under dinov3_extractor.*")}
    for name, vlm in (("internvl3_1b_repa", INTERNVL3_1B), ("internvl3_2b_repa", INTERNVL3_2B)):
        text = vlm["text_config"]
        out[name] = {"ranges": {"i": text["num_hidden_layers"], "j": HEAD_DEPTH, "k": DINO_DEPTH,
                                "vit": vit_layers, "ae": AE_BLOCKS},
                     "keys": internvl_ar(text)}
    return out


def render(obj: dict) -> str:
    """Indented JSON with each shape on its key's line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def main(argv: list[str]) -> int:
    files = {HERE / "reference_ae_keys.json": render(ae_lists()), HERE / "reference_ar_keys.json": render(ar_lists())}
    if "--check" in argv:
        stale = [p.name for p, text in files.items() if p.read_text() != text]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    raise SystemExit(main(sys.argv[1:]))
