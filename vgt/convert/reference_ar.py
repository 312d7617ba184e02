"""Reference (hustvl/VGT) AR checkpoints -> `VGTPipeline` folders (docs/reference.md §3.3).

The reference trains with mmengine: `iter_N.pth` holds `state_dict` and `ema_state_dict`, keys
prefixed `module.`. Its EMA hook swaps the two before saving, so `state_dict` carries the EMA
weights and `ema_state_dict` the raw ones (plus a `steps` counter); `weights="ema"` (default)
therefore reads `state_dict`. Names:

    lmm.language_model.model.*        (InternVL; Qwen: lmm.model.language_model.*, maybe duplicated
                                       as lmm.language_model.*)        -> llm.model.*
    adaptive_metaquery.max_metaquery / .pos_encoding.grid_embed       -> queries.query_map / .pos_map
    image_in_projector.* / image_out_projector.*                      -> in_proj.* / out_proj.*
    image_head.net.*                                                  -> head.*
    vgt_ae.*                                                          -> the AE (vgt.convert.reference)
    lm_head, teacher copies, dinov3_extractor.*, steps                -> dropped (unused at inference)

The number of decoder layers is read from the checkpoint, so a layer-pruned LLM is converted with
exactly its layers (loading it into the full-depth config would silently keep untuned layers).
"""
from __future__ import annotations

import re

import torch

from vgt.convert.reference import ConversionReport, load_mapped

_LLM_PREFIXES = ("lmm.language_model.model.", "lmm.model.language_model.", "lmm.language_model.")
_RENAMES = {
    "adaptive_metaquery.max_metaquery": "queries.query_map",
    "adaptive_metaquery.pos_encoding.grid_embed": "queries.pos_map",
}
_PREFIX_RENAMES = {"image_in_projector.": "in_proj.", "image_out_projector.": "out_proj.", "image_head.net.": "head."}
_DROPPED = ("lmm.language_model.lm_head.", "lmm.lm_head.", "dinov3_extractor.", "vgt_ae.teacher.",
            "vgt_ae.teacher_mlp1.", "steps")
_LAYER = re.compile(r"^llm\.model\.layers\.(\d+)\.")


def load_reference_ar(path: str, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The flat state dict of an mmengine AR checkpoint (`module.` stripped)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    key = {"ema": "state_dict", "raw": "ema_state_dict"}[weights]
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a checkpoint saved without EMA
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def ar_family(state: dict[str, torch.Tensor]) -> str | None:
    """"internvl" / "qwen2_5_vl" for AR checkpoints (by where the LLM lives), None for others."""
    if any(k.startswith("lmm.model.language_model.") for k in state):
        return "qwen2_5_vl"
    if any(k.startswith("lmm.language_model.") for k in state):
        return "internvl"
    return None


def llm_hidden_size(state: dict[str, torch.Tensor]) -> int:
    (width,) = {v.shape[-1] for k, v in state.items() if k.endswith("embed_tokens.weight")}
    return width


def _rename(key: str) -> str | None:
    if key in _RENAMES:
        return _RENAMES[key]
    for src, dst in _PREFIX_RENAMES.items():
        if key.startswith(src):
            return dst + key.removeprefix(src)
    for src in _LLM_PREFIXES:
        if key.startswith(src) and not key.startswith("lmm.language_model.lm_head."):
            return "llm.model." + key.removeprefix(src)
    return None


def map_reference_ar(ref: dict[str, torch.Tensor],
                     target_keys: set[str]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename the AR part of a reference checkpoint onto `VGTModel` names (the AE part is skipped)."""
    out, report = {}, ConversionReport()
    for key, tensor in ref.items():
        if key.startswith(_DROPPED):
            report.dropped.append(key)
            continue
        if key.startswith("vgt_ae."):
            continue
        new = _rename(key)
        if new is None or new not in target_keys:
            report.unmapped.append(key)
        elif new in out:  # Qwen's duplicated registration of the same LLM module
            if not torch.equal(out[new], tensor):
                raise ValueError(f"{key!r} duplicates {new!r} with different values")
            report.dropped.append(key)
        else:
            out[new] = tensor
    report.missing = sorted(target_keys - set(out))
    return out, report


def checkpoint_llm_layers(ref: dict[str, torch.Tensor]) -> int:
    """Decoder layers present in the checkpoint (layer pruning keeps the first N)."""
    layers = {int(m.group(1)) for k in ref if (n := _rename(k)) and (m := _LAYER.match(n))}
    if not layers:
        raise ValueError("no LLM decoder layers found (expected lmm.*.layers.N.* keys)")
    return max(layers) + 1


def reference_ae_part(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `vgt_ae.*` weights of an AR checkpoint, in reference AE names (empty if absent)."""
    return {k.removeprefix("vgt_ae."): v for k, v in ref.items() if k.startswith("vgt_ae.")}


def convert_reference_ar(ref: dict[str, torch.Tensor], config, tokenizer, ae):
    """A `VGTPipeline` holding the reference AR weights, the given AE and tokenizer.

    `config` is the run config whose `ar` section describes this checkpoint (its llm_num_layers is
    set from the checkpoint here). Fails unless every weight finds its place with its shape.
    """
    from vgt.ar.model import VGTModel
    from vgt.pipeline import VGTPipeline

    config.ar.llm_num_layers = checkpoint_llm_layers(ref)
    model = VGTModel(config.ar, latent_dim=config.ae.latent_channels, tokenizer=tokenizer)
    mapped, report = map_reference_ar(ref, set(model.state_dict()))
    load_mapped(model, mapped, report, "reference AR checkpoint")
    return VGTPipeline(config, model.eval(), ae.eval(), tokenizer), report

