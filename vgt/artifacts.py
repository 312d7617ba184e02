"""Artifact folders: `config.json` + `model.safetensors`, versioned and fingerprinted.

Every component folder (AE, AR model, ...) carries the format version it was written with and a
content fingerprint (sha256 over tensor names, dtypes, shapes and bytes). Loading checks both, so
a folder from another format version or with a corrupted tensor fails loudly instead of loading
garbage. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vgt import io as vio
from vgt.errors import VGTError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactError(VGTError):
    """A folder is missing, of another format version, of another kind, or corrupted."""


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict: independent of file layout and insertion order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def save_component(folder: str, kind: str, config: dict, state_dict: dict[str, torch.Tensor],
                   extra: dict[str, Any] | None = None) -> str:
    """Write `folder/config.json` and `folder/model.safetensors`; returns the fingerprint."""
    tensors = _unshared(state_dict)
    fp = fingerprint(tensors)
    vio.makedirs(folder)
    vio.atomic_write_bytes(vio.join(folder, WEIGHTS_FILE),
                           st_save(tensors, metadata={"format_version": str(FORMAT_VERSION),
                                                      "fingerprint": fp, "kind": kind}))
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "fingerprint": fp, "config": config}
    vio.write_json(vio.join(folder, CONFIG_FILE), {**meta, **(extra or {})})
    return fp


def read_component_config(folder: str, kind: str) -> dict:
    """The checked `config.json` of a component folder (no weights read)."""
    path = vio.join(folder, CONFIG_FILE)
    if not vio.exists(path):
        raise ArtifactError(f"{folder!r} is not a vgt {kind} folder: {CONFIG_FILE} is missing")
    meta = vio.read_json(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{folder!r} has format version {version!r}; this vgt reads version "
                            f"{FORMAT_VERSION}. Re-export it with a matching vgt release.")
    if meta.get("kind") != kind:
        raise ArtifactError(f"{folder!r} holds a {meta.get('kind')!r} component, not {kind!r}")
    return meta


def load_component(folder: str, kind: str) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config, state_dict, fingerprint) of a component folder, after checking version and content."""
    meta = read_component_config(folder, kind)
    weights = vio.join(folder, WEIGHTS_FILE)
    if not vio.exists(weights):
        raise ArtifactError(f"{folder!r}: {WEIGHTS_FILE} is missing")
    try:
        state_dict = st_load(vio.read_bytes(weights))
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise ArtifactError(f"{weights!r} is not a readable safetensors file: {e}") from e
    actual = fingerprint(state_dict)
    if actual != meta["fingerprint"]:
        raise ArtifactError(f"{weights!r} is corrupted: content fingerprint {actual} does not match "
                            f"{meta['fingerprint']} recorded in {CONFIG_FILE}")
    return meta["config"], state_dict, actual


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no shared storage (safetensors refuses tied tensors)."""
    seen: set[int] = set()
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out
