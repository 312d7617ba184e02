"""Print a preset's resolved config, every key with its value and its meaning, e.g.

  vgt config internvl3-2b
  vgt config demo --set sample.guidance_scale=7 ray.num_workers=2
  vgt config tiny --json > run-config.json

Keys are grouped by section: the model and engine config (vgt/config.py: ae, ar, data, train,
sample) and the Ray Train settings (`ray.`, pipelines/train/config.py). Values are printed as
`--set` takes them (JSON). Dict-valued fields (hf_config, dc_config) are shortened; `--json`
prints everything.
"""
from __future__ import annotations

import argparse

# Dict values longer than this (as one line of JSON) are cut in the text listing.
MAX_VALUE_CHARS = 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_overrides

    parser.add_argument("preset", metavar="PRESET", help="preset name (see `vgt info`)")
    add_overrides(parser, "e.g. sample.guidance_scale=7 train.ar_pretrain.lr=1e-4 ray.num_workers=2")
    parser.add_argument("--json", action="store_true",
                        help="print the resolved config as JSON (the vgt sections at the top level, plus `ray`)")


def resolve(preset: str, overrides: list[str]):
    """(VGTConfig, RayTrainConfig) for `preset` with `overrides` (`ray.` ones go to the Ray section)."""
    from pipelines.train.config import ray_train_config, split_overrides
    from vgt.presets import get_preset

    model_overrides, ray_overrides = split_overrides(list(overrides))
    return get_preset(preset, model_overrides), ray_train_config(ray_overrides)


def format_value(value) -> str:
    """A value as `--set` takes it (JSON); long dicts cut to one line with a note."""
    import json

    text = json.dumps(value)
    if isinstance(value, dict) and len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS - 20]}... ({len(value)} keys; --json prints all)"
    return text


def sections(cfg, prefix: str = "", doc: str = "") -> list[tuple[str, str, list[tuple[str, object, str]]]]:
    """[(section key, section doc, [(key, value, doc), ...])] for a dataclass config, depth first."""
    import dataclasses

    from vgt.config import field_docs

    docs = field_docs(type(cfg))
    leaves, nested = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            nested += sections(value, f"{prefix}{f.name}.", docs[f.name])
        else:
            leaves.append((f"{prefix}{f.name}", value, docs[f.name]))
    return ([(prefix.rstrip("."), doc, leaves)] if leaves else []) + nested


def format_listing(cfg, ray_cfg, overrides: list[str] = (), width: int = 100) -> str:
    """The text listing: one block per section, `key = value` then the doc, wrapped to `width`."""
    import inspect
    import textwrap

    from pipelines.train.config import PREFIX

    groups = (sections(cfg, "", inspect.getdoc(type(cfg)) or "")
              + sections(ray_cfg, PREFIX, "Ray Train settings (pipelines/train/config.py): where and how many "
                                          "workers run, what Ray keeps."))
    lines = [f"# vgt config {cfg.name}" + (f" --set {' '.join(overrides)}" if overrides else "")
             + ": every key = value (as --set takes it), then its meaning"]
    for name, doc, leaves in groups:
        lines += ["", f"[{name or 'vgt'}]" + (f"  {doc}" if doc else "")]
        for key, value, field_doc in leaves:
            lines.append(f"{key} = {format_value(value)}")
            lines += textwrap.wrap(field_doc or "(undocumented)", width=max(40, width), initial_indent="    ",
                                   subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    import shutil

    from vgt.config import to_dict

    cfg, ray_cfg = resolve(args.preset, args.overrides)
    if args.json:
        text = json.dumps({**to_dict(cfg), "ray": to_dict(ray_cfg)}, indent=2)
    else:
        text = format_listing(cfg, ray_cfg, args.overrides,
                              width=min(120, shutil.get_terminal_size((100, 24)).columns))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `vgt config PRESET | head`: the reader left, nothing more to say
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
