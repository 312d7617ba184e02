"""Chat-template prompts for the generator (docs/reference.md §2.3).

Captions become `ARConfig.prompt_template`; the unconditional (CFG) prompt is the literal
`ARConfig.uncond_prompt` ("Generate an image."), not an empty string. Ids are right-padded and
truncated to `max_prompt_tokens`; the `<img>` marker is appended by the model after the padding.
"""
from __future__ import annotations

import posixpath
import tempfile

import torch

from vgt import io as vio
from vgt.artifacts import ArtifactError

TOKENIZER_DIR = "tokenizer"  # the tokenizer component of a pipeline folder


def format_prompts(captions: list[str], template: str, uncond_prompt: str,
                   drop: torch.Tensor | None = None) -> list[str]:
    """Captions -> chat texts; rows where `drop` is True get the unconditional prompt."""
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, not one string")
    texts = []
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"caption {i} is {type(caption).__name__}, expected str")
        dropped = drop is not None and bool(drop[i])
        texts.append(uncond_prompt if dropped else template.replace("{caption}", caption))
    return texts


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ids [B, T], mask [B, T]) right-padded to the longest row, truncated to `max_tokens`."""
    enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens,
                    padding="longest", padding_side="right", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def marker_ids(tokenizer, marker: str) -> list[int]:
    """Ids of the image-start marker (`<img>`): one special token for InternVL, maybe several BPE pieces."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"image start marker {marker!r} tokenizes to nothing")
    return list(ids)


def load_tokenizer_folder(folder: str):
    """A tokenizer folder written by `save_pretrained` (local or s3://), right padding."""
    from transformers import AutoTokenizer

    if not vio.exists(folder):
        raise ArtifactError(f"tokenizer folder {folder!r} is missing")
    with tempfile.TemporaryDirectory(prefix="vgt-tokenizer-") as tmp:
        return AutoTokenizer.from_pretrained(vio.local_copy(folder, tmp), padding_side="right")


def sibling_tokenizer(component_folder: str) -> str | None:
    """The `tokenizer/` next to a component inside a pipeline folder, if there is one."""
    folder = posixpath.join(posixpath.dirname(str(component_folder).rstrip("/")), TOKENIZER_DIR)
    return folder if vio.exists(folder) else None
