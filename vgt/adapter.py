"""Adapter folders: a LoRA-tuned generator stored as what changed on top of a base pipeline folder.

    model_index.json   {"format_version", "class": "VGTAdapter", "config": <VGTConfig dict of the run>,
                        "components": {"llm": "llm_adapter", "ar": "ar"},
                        "base": {"path": <the base pipeline folder>, "fingerprints": {"ar", "ae"}},
                        "fingerprints": {"llm", "ar"}}
    llm_adapter/       peft's own adapter format for the LLM decoder: adapter_config.json +
                       adapter_model.safetensors (`PeftModel.from_pretrained(decoder, folder)` reads it)
    ar/                config.json + model.safetensors (kind "ar_adapter"): the tensors that trained in full
                       (flow head, queries, projections)

The base is named by its components' fingerprints (`vgt.artifacts`): an adapter loads onto exactly the
pipeline it was trained from (`base.path` by default, or any copy of it), and onto any other it is refused.
`VGTPipeline.from_pretrained(ADAPTER_DIR)` loads the base and applies the adapter; serving keeps one
base resident and swaps adapters on it (`Adapter.apply`).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file

from vgt import io as vio
from vgt.artifacts import FORMAT_VERSION, ArtifactError, fingerprint, load_component, save_component
from vgt.ar import lora
from vgt.config import VGTConfig, from_dict, to_dict

CLASS = "VGTAdapter"
KIND = "ar_adapter"
COMPONENTS = {"llm": "llm_adapter", "ar": "ar"}
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterBase:
    """The base pipeline an adapter folder loads onto: where it was when the adapter was written, and
    the fingerprints of its AR and AE components, which decide."""

    adapter: str  # the adapter folder
    path: str
    fingerprints: dict[str, str]  # {"ar", "ae"}

    def check(self, where: str, fingerprints: dict[str, str]) -> None:
        """ArtifactError unless `fingerprints` ({"ar", "ae"} of the pipeline at `where`) are the base's."""
        wrong = [k for k in ("ar", "ae") if fingerprints.get(k) != self.fingerprints[k]]
        if wrong:
            raise ArtifactError(
                f"adapter {self.adapter!r} was trained on a base pipeline with "
                + ", ".join(f"{k.upper()} fingerprint {self.fingerprints[k]}" for k in wrong)
                + f"; {where!r} has " + ", ".join(f"{fingerprints.get(k)}" for k in wrong)
                + f": load it onto its own base ({self.path!r} when written)")


@dataclass
class Adapter:
    """An adapter folder read into memory (small next to its base)."""

    path: str
    config: VGTConfig  # the run's config (its `sample` is this model's sampling defaults)
    peft_config: object  # peft LoraConfig
    lora: dict[str, torch.Tensor]  # peft adapter tensors of the LLM
    rest: dict[str, torch.Tensor]  # VGTModel tensors outside the LLM (flow head, queries, projections)
    base: AdapterBase

    def apply(self, model, name: str) -> None:
        """Put this adapter into `model` (the base's VGTModel) as adapter `name` and make it the active one:
        its LoRA layers (added on first use) and its head, queries and projections."""
        if not _has_adapter(model, name):
            lora.inject(model, self.peft_config, name)
        lora.load_adapter_tensors(model, self.lora, name)
        lora.activate(model, name)
        model.load_state_dict(self.rest, strict=False)
        model.requires_grad_(False)


def save_adapter(folder: str, config: VGTConfig, peft_config, state_dict: dict[str, torch.Tensor], base: str) -> None:
    """Write an adapter folder from an adapted VGTModel state dict, on top of the pipeline folder `base`."""
    from vgt.pipeline import read_index

    base_prints = read_index(base)["fingerprints"]
    lora_tensors, rest = lora.split_state_dict(state_dict)
    vio.makedirs(folder)
    with tempfile.TemporaryDirectory(prefix="vgt-adapter-") as tmp:
        peft_config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in lora_tensors.items()}, os.path.join(tmp, PEFT_WEIGHTS))
        vio.upload(tmp, vio.join(folder, COMPONENTS["llm"]))
    prints = {"llm": fingerprint(lora_tensors),
              "ar": save_component(vio.join(folder, COMPONENTS["ar"]), kind=KIND,
                                   config={"base": base_prints}, state_dict=rest)}
    vio.write_json(vio.join(folder, "model_index.json"), {
        "format_version": FORMAT_VERSION, "class": CLASS, "config": to_dict(config), "components": COMPONENTS,
        "base": {"path": base, "fingerprints": {"ar": base_prints["ar"], "ae": base_prints["ae"]}},
        "fingerprints": prints})


def is_adapter(index: dict) -> bool:
    return index.get("class") == CLASS


def adapter_base(path: str, index: dict | None = None) -> AdapterBase:
    """The base an adapter folder names (only its model_index.json is read)."""
    from vgt.pipeline import read_index

    index = index or read_index(path)
    if not is_adapter(index):
        raise ArtifactError(f"{path!r} is a {index.get('class')!r} folder, not an adapter folder")
    return AdapterBase(path, index["base"]["path"], index["base"]["fingerprints"])


def read_adapter(path: str) -> Adapter:
    """An adapter folder's contents, every fingerprint checked."""
    from peft import LoraConfig

    from vgt.pipeline import read_index

    index = read_index(path)
    base = adapter_base(path, index)
    llm = vio.join(path, index["components"]["llm"])
    peft_config = LoraConfig.from_peft_type(**json.loads(vio.read_bytes(vio.join(llm, PEFT_CONFIG))))
    tensors = st_load(vio.read_bytes(vio.join(llm, PEFT_WEIGHTS)))
    if fingerprint(tensors) != index["fingerprints"]["llm"]:
        raise ArtifactError(f"{vio.join(llm, PEFT_WEIGHTS)!r} is corrupted: its content fingerprint does not match "
                            f"{index['fingerprints']['llm']} recorded in model_index.json")
    _, rest, _ = load_component(vio.join(path, index["components"]["ar"]), kind=KIND)
    return Adapter(path, from_dict(VGTConfig, index["config"]), peft_config, tensors, rest, base)


def load_adapter_pipeline(path: str, base: str | None = None):
    """The VGTPipeline of adapter folder `path` on `base` (default: the base folder it names)."""
    from vgt.pipeline import VGTPipeline

    adapter = read_adapter(path)
    base = base or adapter.base.path
    pipe = VGTPipeline.from_pretrained(base)
    return adapted(pipe, adapter, base)


def adapted(pipe, adapter: Adapter, where: str, name: str = lora.ADAPTER):
    """`pipe` (the base, loaded from `where`) with `adapter` applied, its config the adapter run's."""
    adapter.base.check(where, {"ar": pipe.model.fingerprint, "ae": pipe.autoencoder.fingerprint})
    adapter.apply(pipe.model, name)
    config = copy.deepcopy(adapter.config)
    config.ae, config.ar = pipe.config.ae, pipe.config.ar
    pipe.config = config
    return pipe


def _has_adapter(model, name: str) -> bool:
    return any(f".lora_A.{name}." in k for k, _ in model.llm.model.named_parameters())
