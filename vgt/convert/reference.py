"""Reference (hustvl/VGT) AE checkpoints -> `VGTAutoencoder` folders (docs/reference.md §1.8).

The reference saves plain state dicts (`vgt_ae_internvl3.pth`, `vgt_ae_qwen25vl.pth`), possibly
wrapped in {"state_dict": ...} or {"model": ...}. Its InternVL encoder uses the original InternViT
names (fused `attn.qkv`, `ls1`, `norm1`, ...) and `mlp1.{0,1,3}`; we use transformers' native
InternVL names, so those keys are renamed and the fused qkv split into q/k/v. The Qwen encoder
already uses transformers' `visual.*` names. Bottleneck and DC-AE decoder names are ours too.
Teacher copies (`teacher.*`, `teacher_mlp1.*`) are dropped: the teacher is rebuilt from the
pretrained VLM at training time and never ships with the inference AE.

Reading `.pth` is the one place vgt unpickles anything, with `torch.load(weights_only=True)`
(`read_torch_file`: mmengine training checkpoints also pickle plain Python objects, which are read
as inert placeholders).
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field

import torch

DROPPED_PREFIXES = ("teacher.", "teacher_mlp1.")
TEACHER = "teacher.*, teacher_mlp1.*: the AE's self-distillation teacher, not part of the inference AE"

# InternViT layer suffix -> transformers InternVLVisionLayer suffix (qkv handled separately).
_INTERNVIT_LAYER = {
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
}
_INTERNVIT_EMBED = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
    "embeddings.position_embedding": "embeddings.position_embeddings",
}
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_LAYER_RE = re.compile(r"^encoder\.encoder\.layers\.(\d+)\.(.+?)(\.weight|\.bias)?$")


@dataclass
class ConversionReport:
    """What a conversion did: what it read, keys it could not place, keys the target still lacks,
    keys it dropped (each with its reason)."""

    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    dropped_why: dict[str, list[str]] = field(default_factory=dict)  # reason -> the keys dropped for it
    source: str = ""  # which part of the file was read, and why

    @property
    def ok(self) -> bool:
        return not self.unmapped and not self.missing

    def drop(self, key: str, reason: str) -> None:
        self.dropped.append(key)
        self.dropped_why.setdefault(reason, []).append(key)

    def summary(self) -> str:
        lines = [f"read {self.source}"] if self.source else []
        lines.append(f"unmapped: {len(self.unmapped)}, missing: {len(self.missing)}, dropped: {len(self.dropped)}")
        lines += [f"  dropped {len(keys)}: {reason}" for reason, keys in self.dropped_why.items()]
        lines += [f"  unmapped {k}" for k in self.unmapped] + [f"  missing {k}" for k in self.missing]
        return "\n".join(lines)


def _stand_in(name: str) -> type:
    """An inert class for the pickled global `name`: takes any arguments and state, runs no code."""
    return type(name.rpartition(".")[2], (), {"__init__": lambda self, *args, **kwargs: None,
                                             "__setstate__": lambda self, state: None})


def read_torch_file(path: str):
    """`torch.load(weights_only=True)` that also reads mmengine training checkpoints (`iter_N.pth`).

    Besides tensors these pickle Python objects the conversion never uses: mmengine's
    `HistoryBuffer` in `message_hub`, numpy values in `meta`. The weights-only unpickler refuses any
    global it does not know, so each non-torch global the file names is read as an inert placeholder
    instead (it never imports or runs the original); torch globals outside torch's allowlist are
    still refused. Needs `torch.serialization.get_unsafe_globals_in_checkpoint` (recent torch);
    without it such files are refused. Errors: ValueError for a file that is no weights-only torch
    checkpoint."""
    names = []
    if hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:  # not a zip-format torch file: torch.load below says what it is
            names = []
    stand_ins = [(_stand_in(name), name) for name in names if not name.startswith("torch.")]
    try:
        if not stand_ins:
            return torch.load(path, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # not a (weights-only) torch file
        raise ValueError(str(e).splitlines()[0]) from e


def load_reference_state(path: str) -> dict[str, torch.Tensor]:
    """A reference checkpoint's flat state dict (raw, {"state_dict"}, {"model"}; `module.` stripped)."""
    obj = read_torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _internvit_key(rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Reference InternViT key (after `encoder.`) -> our key(s) under `encoder.vision_tower.`."""
    if rest in _INTERNVIT_EMBED:
        return {_INTERNVIT_EMBED[rest]: tensor}
    m = _LAYER_RE.match("encoder." + rest)
    if not m:
        return None
    layer, name, suffix = m.group(1), m.group(2), m.group(3) or ""
    prefix = f"encoder.layer.{layer}."
    if name == "attn.qkv":
        q, k, v = tensor.chunk(3, dim=0)  # rows [q; k; v], as InternViT's reshape(B,N,3,H,d) reads them
        return {f"{prefix}attention.{p}_proj{suffix}": t for p, t in zip("qkv", (q, k, v))}
    if name in ("ls1", "ls2"):
        return {f"{prefix}lambda_{name[-1]}": tensor}
    if name in _INTERNVIT_LAYER:
        return {f"{prefix}{_INTERNVIT_LAYER[name]}{suffix}": tensor}
    return None


def _map_ae_key(key: str, tensor: torch.Tensor, family: str) -> dict[str, torch.Tensor] | None:
    if key.startswith(("down_blocks.", "down_mlp.", "decoder.")):
        return {key: tensor}
    if family == "qwen2_5_vl":
        return {"encoder.visual." + key.removeprefix("encoder."): tensor} if key.startswith("encoder.") else None
    if key.startswith("mlp1."):
        index, _, suffix = key.removeprefix("mlp1.").partition(".")
        return {f"encoder.projector.{_MLP1[index]}.{suffix}": tensor} if index in _MLP1 else None
    if key.startswith("encoder."):
        mapped = _internvit_key(key.removeprefix("encoder."), tensor)
        return {f"encoder.vision_tower.{k}": v for k, v in mapped.items()} if mapped else None
    return None


def map_reference_ae(ref: dict[str, torch.Tensor], family: str,
                     target_keys: set[str]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a reference AE state dict onto our names; report unmapped/missing/dropped keys."""
    out, report = {}, ConversionReport()
    for key, tensor in ref.items():
        if key.startswith(DROPPED_PREFIXES):
            report.drop(key, TEACHER)
            continue
        mapped = _map_ae_key(key, tensor, family)
        if mapped is None or not set(mapped) <= target_keys:
            report.unmapped.append(key)
            continue
        out.update(mapped)
    report.missing = sorted(target_keys - set(out))
    return out, report


def detect_family(ref: dict[str, torch.Tensor]) -> str:
    """InternVL checkpoints carry `mlp1.*`; Qwen ones carry the merger inside `encoder.merger.*`."""
    if any(k.startswith("mlp1.") for k in ref):
        return "internvl"
    if any(k.startswith("encoder.merger.") for k in ref):
        return "qwen2_5_vl"
    raise ValueError("cannot tell the VLM family of this checkpoint: neither mlp1.* (InternVL) nor "
                     "encoder.merger.* (Qwen2.5-VL) keys are present")


def convert_reference_ae(ref: dict[str, torch.Tensor], ae_config) -> tuple[object, ConversionReport]:
    """Build a `VGTAutoencoder` for `ae_config` holding the reference weights.

    Conversion fails if any key is unmapped or missing or any shape differs from the preset's.
    """
    from vgt.ae import VGTAutoencoder

    ae = VGTAutoencoder(ae_config)
    mapped, report = map_reference_ae(ref, ae_config.backbone.family, set(ae.state_dict()))
    load_mapped(ae, mapped, report, "reference AE")
    return ae.eval(), report


def load_mapped(module: torch.nn.Module, mapped: dict[str, torch.Tensor], report: ConversionReport,
                what: str) -> None:
    """Load converted weights (as fp32) into `module`, refusing any gap or shape mismatch."""
    target = module.state_dict()
    bad = [f"{k}: reference {tuple(v.shape)} vs ours {tuple(target[k].shape)}"
           for k, v in mapped.items() if v.shape != target[k].shape]
    if bad:
        raise ValueError(f"{what}: shape mismatch (wrong preset or base model?):\n  " + "\n  ".join(bad))
    if not report.ok:
        raise ValueError(f"{what} does not match the model:\n" + report.summary())
    module.load_state_dict({k: v.float() for k, v in mapped.items()})
