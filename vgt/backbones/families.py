"""The two VLM families we borrow from, and how to build (parts of) them with transformers.

Everything goes through the real transformers classes, never `trust_remote_code`:
InternVL = `InternVLForConditionalGeneration` (the native "-hf" checkpoints), Qwen2.5-VL =
`Qwen2_5_VLForConditionalGeneration`. Random weights build only the parts that are kept, so a
random encoder of a 3B VLM never allocates its LLM.
"""
from __future__ import annotations

import difflib
import logging

import torch
import transformers
from transformers.utils import is_flash_attn_2_available

FAMILIES = ("internvl", "qwen2_5_vl")
log = logging.getLogger(__name__)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        close = difflib.get_close_matches(family, FAMILIES, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backbone family {family!r} (known: {', '.join(FAMILIES)}){hint}")
    return family


def vlm_config_class(family: str) -> type:
    return {"internvl": transformers.InternVLConfig,
            "qwen2_5_vl": transformers.Qwen2_5_VLConfig}[check_family(family)]


def vlm_model_class(family: str) -> type:
    return {"internvl": transformers.InternVLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[check_family(family)]


HALF_DTYPES = (torch.bfloat16, torch.float16)


def flash_attention_importable() -> tuple[bool, str]:
    """(True, version) when flash-attn 2 is installed for this torch and CUDA and imports; else (False, why).

    The import is tried for real: a wheel built against another torch is installed but fails to load."""
    if not is_flash_attn_2_available():
        return False, "flash-attn is not installed (or older than 2.3.3, or torch has no CUDA)"
    try:
        import flash_attn
    except Exception as err:  # noqa: BLE001 - an ABI mismatch raises ImportError, OSError or RuntimeError
        return False, f"flash_attn does not import: {type(err).__name__}: {err}"
    return True, f"flash_attn {getattr(flash_attn, '__version__', '?')}"


def choose_attn_implementation(name: str, device: torch.device | str = "cpu",
                               compute_dtype: torch.dtype = torch.float32,
                               flash: tuple[bool, str] | None = None) -> tuple[str, str]:
    """(implementation, reason) for attention computed on `device` in `compute_dtype`.

    `compute_dtype` is what the attention's inputs are in, not how the weights were loaded: bf16 under
    GPU training (autocast, FSDP2's bf16 parameters) and bf16 serving even though weights load as fp32.
    "auto" -> flash_attention_2 on a CUDA device with a 16-bit compute dtype when flash_attn imports,
    else sdpa; any other name is used as given. The AR model passes flash-attention what it handles: 2-D
    padding masks (also in the middle of a row and with KV caches), never a custom 4-D mask, and its
    positions never reach the kernel (see `vgt.backbones.language`). `flash`: the answer of
    `flash_attention_importable()` to assume (e.g. for another machine); None asks this one."""
    if name != "auto":
        return name, "set in the config"
    device = torch.device(device)
    if device.type != "cuda":
        return "sdpa", f"{device.type}: flash-attention kernels run on CUDA only"
    if compute_dtype not in HALF_DTYPES:
        return "sdpa", f"{compute_dtype} compute: flash-attention kernels take 16-bit inputs only"
    ok, why = flash_attention_importable() if flash is None else flash
    return ("flash_attention_2", f"CUDA, {compute_dtype} compute, {why}") if ok else ("sdpa", why)


def resolve_attn_implementation(name: str, device: torch.device | str = "cpu",
                                compute_dtype: torch.dtype = torch.float32) -> str:
    """The implementation `choose_attn_implementation` picks (without its reason)."""
    return choose_attn_implementation(name, device, compute_dtype)[0]


def apply_attn_implementation(module: torch.nn.Module, name: str, device: torch.device | str,
                              compute_dtype: torch.dtype, what: str = "model") -> str:
    """Resolve `name` for where `module` computes and switch every transformers model inside it to that
    attention (transformers reads `config._attn_implementation` at each forward). Models are built with
    the CPU choice; whoever places them on a device with a compute dtype calls this. Logs the choice and
    its reason; returns the implementation."""
    impl, reason = choose_attn_implementation(name, device, compute_dtype)
    for sub in module.modules():
        if isinstance(sub, transformers.PreTrainedModel):
            sub.config._attn_implementation = impl
    fell_back = name == "auto" and impl != "flash_attention_2" and torch.device(device).type == "cuda"
    (log.warning if fell_back else log.info)("%s attention: %s (%s)", what, impl, reason)
    return impl


def build_hf_config(backbone_cfg) -> transformers.PretrainedConfig:
    """The VLM's transformers config from `backbone_cfg.hf_config` (kwargs or `to_dict()` form), with the
    attention for building on the CPU ("auto": sdpa; `apply_attn_implementation` switches it on a GPU)."""
    if not backbone_cfg.hf_config:
        raise ValueError(f"backbone ({backbone_cfg.family}) has pretrained=None and an empty hf_config: "
                         "nothing to build random weights from")
    cfg = vlm_config_class(backbone_cfg.family).from_dict(dict(backbone_cfg.hf_config))
    cfg._attn_implementation = resolve_attn_implementation(backbone_cfg.attn_implementation)
    for sub in (cfg.vision_config, cfg.text_config):
        sub._attn_implementation = cfg._attn_implementation
    return cfg


def loaded_hf_config(vlm_config: transformers.PretrainedConfig, vision_config=None, text_config=None) -> dict:
    """The VLM's full transformers config in `to_dict()` form as it was loaded, with the sub-configs of
    the modules actually built (`vision_config`, `text_config`: their own config objects, e.g. an LLM
    truncated to fewer layers) in place of the VLM's. What an artifact stores and rebuilds from."""
    out = vlm_config.to_dict()
    if vision_config is not None:
        out["vision_config"] = vision_config.to_dict()
    if text_config is not None:
        out["text_config"] = text_config.to_dict()
    return out


def load_pretrained_vlm(backbone_cfg, dtype: torch.dtype) -> torch.nn.Module:
    """The whole pretrained VLM (HF id or local folder), on the CPU; callers keep the parts they need."""
    cls = vlm_model_class(backbone_cfg.family)
    attn = resolve_attn_implementation(backbone_cfg.attn_implementation)
    try:
        return cls.from_pretrained(backbone_cfg.pretrained, dtype=dtype, attn_implementation=attn)
    except OSError as err:
        raise OSError(f"cannot load {cls.__name__} from {backbone_cfg.pretrained!r}: {err}") from err


def random_vlm(backbone_cfg) -> torch.nn.Module:
    """The whole VLM with random weights from `hf_config` (tests compare our adapters against it)."""
    cfg = build_hf_config(backbone_cfg)
    return vlm_model_class(backbone_cfg.family)._from_config(cfg, attn_implementation=cfg._attn_implementation).eval()
