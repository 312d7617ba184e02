"""Reference (hustvl/VGT) AR checkpoints -> `VGTPipeline` folders (docs/reference.md §3.3).

The reference trains with mmengine: `iter_N.pth` holds `state_dict` and `ema_state_dict`, keys
prefixed `module.`. Its EMA hook swaps the two before saving, so, whatever the names say,
`state_dict` carries the EMA weights and `ema_state_dict` the raw ones (plus a `steps` counter).
The reference's own loader (`load_checkpoint_with_ema(use_ema=True)`, used by its sampling and
evaluation scripts) prefers `ema_state_dict`, i.e. it runs the raw weights. Here the choice is
explicit: `weights="ema"` (default) reads `state_dict`, `weights="raw"` reads `ema_state_dict`,
and the report names the key that was read and why. Names:

    lmm.language_model.model.*        (InternVL; Qwen: lmm.model.language_model.*, maybe duplicated
                                       as lmm.language_model.*)        -> llm.model.*
    adaptive_metaquery.max_metaquery / .pos_encoding.grid_embed       -> queries.query_map / .pos_map
    image_in_projector.* / image_out_projector.*                      -> in_proj.* / out_proj.*
    image_head.net.*                                                  -> head.*
    image_head.net.repa_projector.*   -> head.repa_projector.* if the target keeps a REPA projector
                                         (ar.head.repa_dim > 0), else dropped (training only)
    vgt_ae.*                                                          -> the AE (vgt.convert.reference)
    lm_head, dinov3_extractor.* (the REPA teacher), steps             -> dropped (unused at inference)

Every dropped key is counted in the report under its reason. The number of decoder layers is read
from the checkpoint, so a layer-pruned LLM is converted with exactly its layers (loading it into
the full-depth config would silently keep untuned layers).
"""
from __future__ import annotations

import re

import torch

from vgt.convert.reference import ConversionReport, load_mapped, read_torch_file

_LLM_PREFIXES = ("lmm.language_model.model.", "lmm.model.language_model.", "lmm.language_model.")
_RENAMES = {
    "adaptive_metaquery.max_metaquery": "queries.query_map",
    "adaptive_metaquery.pos_encoding.grid_embed": "queries.pos_map",
}
_PREFIX_RENAMES = {"image_in_projector.": "in_proj.", "image_out_projector.": "out_proj.", "image_head.net.": "head."}
_LM_HEAD = ("lmm.language_model.lm_head.", "lmm.lm_head.")
_DROPPED = (
    (_LM_HEAD, "lm_head: the LLM's output head, unused (the AR model reads hidden states)"),
    (("dinov3_extractor.",), "dinov3_extractor.*: the frozen DINOv3 REPA teacher (training only; vgt builds it "
                             "from timm when REPA is on)"),
)
_DROPPED_KEYS = {"steps": "steps: the EMA hook's update counter"}
_REPA = "image_head.net.repa_projector."
NO_REPA = ("image_head.net.repa_projector.*: the REPA projector (training only), and the target has none "
           "(ar.head.repa_dim=0); --set ar.head.repa_dim=768 keeps it")
DUPLICATE = "lmm.language_model.*: the Qwen model's second registration of its LLM (equal values)"
_LAYER = re.compile(r"^llm\.model\.layers\.(\d+)\.")

# --weights -> (the top-level key it reads, why that key holds those weights)
WEIGHTS = {
    "ema": ("state_dict", "--weights ema: the reference's EMA hook swaps the two dicts before saving, so "
                          "'state_dict' holds the EMA weights"),
    "raw": ("ema_state_dict", "--weights raw: after the reference's EMA-hook swap 'ema_state_dict' holds the raw "
                              "training weights, the ones the reference's own sampling scripts load"),
}


def load_reference_ar(path: str, weights: str = "ema") -> tuple[dict[str, torch.Tensor], str]:
    """The flat state dict of an mmengine AR checkpoint (`module.` stripped), and which top-level key
    it came from and why (for the conversion report)."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    wanted, why = WEIGHTS[weights]
    other = "ema_state_dict" if wanted == "state_dict" else "state_dict"
    if isinstance(obj.get(wanted), dict):
        state, source = obj[wanted], f"'{wanted}' ({why})"
    elif isinstance(obj.get(other), dict):
        what = ("EMA weights if the reference's EMA hook saved the file, training weights otherwise"
                if other == "state_dict" else "after the EMA-hook swap, the raw training weights")
        state, source = obj[other], f"'{other}' (the file has no '{wanted}', so '{other}' holds its only " \
                                    f"weights: {what})"
    else:
        state, source = obj, "the file's top level (a bare state dict, no 'state_dict' or 'ema_state_dict')"
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}, source


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
        if key.startswith(src) and not key.startswith(_LM_HEAD):
            return "llm.model." + key.removeprefix(src)
    return None


def _drop_reason(key: str, keeps_repa: bool) -> str | None:
    if key in _DROPPED_KEYS:
        return _DROPPED_KEYS[key]
    for prefixes, reason in _DROPPED:
        if key.startswith(prefixes):
            return reason
    if key.startswith(_REPA) and not keeps_repa:
        return NO_REPA
    return None


def map_reference_ar(ref: dict[str, torch.Tensor],
                     target_keys: set[str]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename the AR part of a reference checkpoint onto `VGTModel` names (the AE part is skipped).

    The REPA projector is mapped when `target_keys` has one, dropped (and counted) otherwise."""
    out, report = {}, ConversionReport()
    keeps_repa = any(k.startswith("head.repa_projector.") for k in target_keys)
    for key, tensor in ref.items():
        if key.startswith("vgt_ae."):
            continue
        reason = _drop_reason(key, keeps_repa)
        if reason is not None:
            report.drop(key, reason)
            continue
        new = _rename(key)
        if new is None or new not in target_keys:
            report.unmapped.append(key)
        elif new in out:  # Qwen's duplicated registration of the same LLM module
            if not torch.equal(out[new], tensor):
                raise ValueError(f"{key!r} duplicates {new!r} with different values")
            report.drop(key, DUPLICATE)
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


def convert_reference_ar(ref: dict[str, torch.Tensor], config, tokenizer, ae, source: str = ""):
    """A `VGTPipeline` holding the reference AR weights, the given AE and tokenizer, and the report.

    `config` is the run config whose `ar` section describes this checkpoint (its llm_num_layers is
    set from the checkpoint here; `ar.head.repa_dim` decides whether the REPA projector is kept).
    `source` (from `load_reference_ar`) goes into the report. Fails unless every weight finds its
    place with its shape.
    """
    from vgt.ar.model import VGTModel
    from vgt.pipeline import VGTPipeline

    config.ar.llm_num_layers = checkpoint_llm_layers(ref)
    model = VGTModel(config.ar, latent_dim=config.ae.latent_channels, tokenizer=tokenizer)
    mapped, report = map_reference_ar(ref, set(model.state_dict()))
    report.source = source
    load_mapped(model, mapped, report, "reference AR checkpoint")
    return VGTPipeline(config, model.eval(), ae.eval(), tokenizer), report

