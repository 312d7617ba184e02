"""Our state dicts written back in the reference (hustvl/VGT) names: inverse maps for the converter tests
(round trips with values), and the reference's own key lists (tests/data/reference_*_keys.json, written by
tests/data/reference_keys.py from the reference's module definitions) for the completeness tests."""
import json
import re
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def reference_key_list(file: str, name: str) -> dict[str, tuple[int, ...]]:
    """One complete reference key list, its `{placeholder}` patterns expanded over their ranges."""
    spec = json.loads((DATA / file).read_text())[name]
    out = {}
    for pattern, shape in spec["keys"].items():
        found = re.findall(r"\{(\w+)\}", pattern)
        if not found:
            out[pattern] = tuple(shape)
            continue
        (var,) = found
        out.update({pattern.replace(f"{{{var}}}", str(n)): tuple(shape) for n in range(spec["ranges"][var])})
    return out


_AE_RENAMES = [("embeddings.cls_token", "embeddings.class_embedding"),
               ("embeddings.patch_embeddings.projection", "embeddings.patch_embedding"),
               ("embeddings.position_embeddings", "embeddings.position_embedding"),
               ("attention.projection_layer", "attn.proj"), ("layernorm_before", "norm1"),
               ("layernorm_after", "norm2"), ("lambda_1", "ls1"), ("lambda_2", "ls2"),
               ("encoder.projector.layer_norm", "mlp1.0"), ("encoder.projector.linear_1", "mlp1.1"),
               ("encoder.projector.linear_2", "mlp1.3")]


def reference_ae_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An InternVL-family VGTAutoencoder state dict in the reference's InternViT names (fused qkv)."""
    out = {}
    for key, t in state.items():
        k = key.replace("encoder.vision_tower.", "encoder.").replace("encoder.encoder.layer.", "encoder.encoder.layers.")
        for ours, theirs in _AE_RENAMES:
            k = k.replace(ours, theirs)
        out[k] = t
    for key in [k for k in out if ".attention.q_proj." in k]:
        stem, suffix = key.split(".attention.q_proj.")
        out[f"{stem}.attn.qkv.{suffix}"] = torch.cat([out.pop(f"{stem}.attention.{p}_proj.{suffix}") for p in "qkv"])
    return out


def reference_ar_layout(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A VGTModel state dict in the reference's AR names (docs/reference.md §3.3)."""
    llm = "lmm.language_model.model." if family == "internvl" else "lmm.model.language_model."
    renames = [("llm.model.", llm), ("queries.query_map", "adaptive_metaquery.max_metaquery"),
               ("queries.pos_map", "adaptive_metaquery.pos_encoding.grid_embed"),
               ("in_proj.", "image_in_projector."), ("out_proj.", "image_out_projector."), ("head.", "image_head.net.")]
    out = {}
    for key, t in state.items():
        for ours, theirs in renames:
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        out[key] = t
    return out
