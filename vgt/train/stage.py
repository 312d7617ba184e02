"""What a training stage is to the loop: the `Stage` protocol and the registry of stage names.

A stage (the AE stage, the AR stage, or a test's toy model) is built on every worker as
`Stage(spec, env)`; `vgt.train.loop.run_loop` owns everything else (resume, data position,
checkpoints, metrics, the export). Stages register under a short name
(`"ae"`, `"ar"`), which is what a `LoopSpec` carries across processes.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Protocol, Union

import torch

if TYPE_CHECKING:
    from PIL import Image

    from vgt.train.checkpoint import Trainables


class Stage(Protocol):
    trainables: "Trainables"  # wrapped modules, optimisers, schedulers, EMAs
    columns: Union[list[str], Callable]  # prepared-dataset columns to read (or a function of the dataset)
    rows_per_step: int  # rows per worker per optimiser step (batch x accumulation)
    tokens_per_sample: int  # for tokens/s (or a "tokens" entry in step's metrics)
    export_modules: list[str]  # modules whose full weights `export` receives

    def step(self, rows: list[dict], step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimiser step on every rank; the same keys on every rank (averaged in one all-reduce)."""

    def lr(self) -> float:
        """The base learning rate the next step uses."""

    def export(self, folder: str, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        """Rank 0 writes the loadable folder."""

    # Optional: `preview(step, rows) -> PIL image | None`, called on every rank (FSDP2 forwards are collective).


# name -> module that defines and registers it (imported on first use: the AR stage pulls in transformers)
_MODULES = {"ae": "vgt.train.ae_stage", "ar": "vgt.train.ar_stage"}
_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a stage constructible by name."""
    def wrap(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls
    return wrap


def stage_class(name_or_class: Union[str, type]) -> type:
    """A registered stage by name, or a class as given (tests pass toy stages by value)."""
    if not isinstance(name_or_class, str):
        return name_or_class
    if name_or_class not in _REGISTRY and name_or_class in _MODULES:
        importlib.import_module(_MODULES[name_or_class])
    if name_or_class not in _REGISTRY:
        raise KeyError(f"unknown training stage {name_or_class!r}; known: {sorted(set(_MODULES) | set(_REGISTRY))}")
    return _REGISTRY[name_or_class]


def stage_label(name_or_class: Union[str, type]) -> str:
    """How a run folder's config.json names the stage."""
    if isinstance(name_or_class, str):
        return name_or_class
    return f"{name_or_class.__module__}:{name_or_class.__qualname__}"
