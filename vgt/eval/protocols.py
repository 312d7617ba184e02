"""Named sampling settings: the generation benchmarks as the reference ran them (docs/reference.md §4.1).

Every reference benchmark script samples at the model's 448 px with guidance 4.5, the linear guidance
schedule, a random order, one latent token per LLM step and the SDE head sampler; GenEval with 30
flow-head steps, DPG-Bench with 100. `vgt eval geneval-images|dpg-images --protocol NAME` samples with
them; explicit sampling flags override single settings, and what a protocol leaves out (the feed mode,
identical for one token per step) comes from the pipeline folder's `config.sample`.
"""
from __future__ import annotations

_REFERENCE = {"guidance_scale": 4.5, "cfg_schedule": "linear", "order": "random", "parallel_tokens": 1,
              "sampler": "sde"}

PROTOCOLS: dict[str, dict] = {
    "geneval": {**_REFERENCE, "num_steps": 30},
    "dpg": {**_REFERENCE, "num_steps": 100},
}


def protocol_settings(name: str) -> dict:
    """The sampling settings (`SampleConfig` field names) of protocol `name`, a fresh dict."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return dict(PROTOCOLS[name])
