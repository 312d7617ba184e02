"""Convert reference (hustvl/VGT) checkpoints into vgt folders.

AE checkpoints (`vgt_ae_internvl3.pth`, `vgt_ae_qwen25vl.pth`) become an AE folder that
`VGTAutoencoder.from_pretrained` loads. AR checkpoints (mmengine `iter_N.pth` with
`state_dict`/`ema_state_dict`) become a pipeline folder that `VGTPipeline.from_pretrained` loads:
the LLM, queries, projections and flow head from the checkpoint, the AE from its `vgt_ae.*` keys
(or `--ae`), the tokenizer and LLM config from `--base` (the VLM the checkpoint was tuned from).
Every conversion reports which weights it read, unmapped and missing keys, and the dropped keys
counted by reason, and refuses to write a folder unless every weight found its place.

`--from pth` re-saves any weights-only `.pth` state dict as one safetensors file: the way to
bring the released perceptual-loss weights (torchvision VGG16 / ConvNeXt-S, LPIPS `vgg.pth`)
into `train.perceptual.*`, since nothing outside `vgt convert` unpickles.
"""
from __future__ import annotations

import argparse

AE_PRESETS = {"internvl": "internvl3-1b", "qwen2_5_vl": "qwen25vl-3b"}
AR_PRESETS = {("internvl", 896): "internvl3-1b", ("internvl", 1536): "internvl3-2b",
              ("qwen2_5_vl", 2048): "qwen25vl-3b"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_overrides

    parser.add_argument("--from", dest="source", choices=["reference", "pth"], required=True,
                        help="reference = a hustvl/VGT checkpoint -> vgt folder; "
                             "pth = any .pth state dict -> one .safetensors file")
    parser.add_argument("--in", dest="input", required=True, help="the .pth file to convert")
    parser.add_argument("--out", required=True, help="output folder (local or s3://); with --from pth "
                        "the .safetensors file to write")
    parser.add_argument("--preset", help="preset with the checkpoint's architecture (default: by family "
                        "and width: internvl3-1b, internvl3-2b or qwen25vl-3b)")
    parser.add_argument("--base", help="AR checkpoints: the base VLM folder (or HF id) the checkpoint was "
                        "tuned from; gives the tokenizer and LLM config (default: the preset's)")
    parser.add_argument("--ae", help="AR checkpoints without vgt_ae.* keys: an AE folder to pair them with")
    parser.add_argument("--weights", choices=["ema", "raw"], default="ema",
                        help="AR checkpoints: which of the two weight sets of an mmengine iter_N.pth to read. "
                             "ema (default) reads its `state_dict`, which holds the EMA weights because the "
                             "reference's EMA hook swaps the two dicts before saving; raw reads `ema_state_dict`, "
                             "which after that swap holds the raw training weights (the set the reference's own "
                             "sampling scripts load, as they prefer `ema_state_dict`). The report says which key "
                             "was read; a file with only one set gives that one")
    add_overrides(parser, "applied to the preset before the weights are placed, e.g. sample.num_steps=20 "
                          "sample.guidance_scale=3 (keys that change the architecture must match the checkpoint)")


def run(args: argparse.Namespace) -> int:
    from ray_jobs._entry import UserError

    if args.source == "pth":
        if args.overrides:
            raise UserError("--set applies to --from reference (a .pth -> .safetensors copy has no config)")
        return convert_pth(args)
    from vgt.convert.reference import load_reference_state
    from vgt.convert.reference_ar import ar_family, load_reference_ar

    ref = _read(load_reference_state, args.input)
    if ar_family(ref) is None:
        return convert_ae(args, ref)
    return convert_ar(args, *_read(load_reference_ar, args.input, args.weights))


def _read(loader, path: str, *extra):
    from vgt.errors import VGTError

    try:
        return loader(path, *extra)
    except FileNotFoundError as e:
        raise VGTError(f"{path!r} does not exist") from e
    except (OSError, ValueError) as e:  # the file is there but is no checkpoint: refused (exit 1)
        raise VGTError(f"cannot read {path!r} as a reference checkpoint: {e}") from e


def convert_pth(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from vgt import io as vio
    from vgt.convert.reference import load_reference_state

    state = _read(load_reference_state, args.input)
    vio.atomic_write_bytes(args.out, save({k: v.contiguous() for k, v in state.items()}))
    print(f"wrote {len(state)} tensors to {args.out}")
    return 0


def offline_preset(name: str, overrides: list[str] = ()):
    """The preset (with `overrides`) with every weight coming from the checkpoint: architecture built
    without the hub."""
    from vgt.config import apply_overrides
    from vgt.presets import get_preset

    return apply_overrides(get_preset(name, list(overrides)), ["ae.backbone.pretrained=null",
                                                                "ae.decoder.pretrained=null",
                                                                "ar.backbone.pretrained=null"])


def reference_ae(ref, cfg, family: str):
    """The AE of a reference state dict (AE names) for preset `cfg`, with its conversion report."""
    from ray_jobs._entry import UserError
    from vgt.convert.reference import convert_reference_ae
    from vgt.errors import VGTError

    if cfg.ae.backbone.family != family:
        raise UserError(f"this is a {family} checkpoint but preset {cfg.name!r} is {cfg.ae.backbone.family}: "
                        "pass another --preset")
    try:
        return convert_reference_ae(ref, cfg.ae)
    except ValueError as e:  # weights that find no place: the conversion is refused, nothing written
        raise VGTError(str(e)) from e


def convert_ae(args: argparse.Namespace, ref) -> int:
    from vgt.convert.reference import detect_family
    from vgt.errors import VGTError

    try:
        family = detect_family(ref)
    except ValueError as e:
        raise VGTError(str(e)) from e
    ae, report = reference_ae(ref, offline_preset(args.preset or AE_PRESETS[family], args.overrides), family)
    ae.save_pretrained(args.out)
    print(report.summary())
    print(f"wrote AE folder {args.out} (fingerprint {ae.fingerprint})")
    return 0


def convert_ar(args: argparse.Namespace, ref, source: str = "") -> int:
    from ray_jobs._entry import UserError
    from vgt.ae import VGTAutoencoder
    from vgt.backbones import load_tokenizer
    from vgt.errors import VGTError
    from vgt.convert.reference import detect_family
    from vgt.convert.reference_ar import ar_family, convert_reference_ar, llm_hidden_size, reference_ae_part

    family = ar_family(ref)
    name = args.preset or AR_PRESETS.get((family, llm_hidden_size(ref)))
    if name is None:
        raise UserError(f"no preset matches a {family} LLM of width {llm_hidden_size(ref)}: pass --preset")
    cfg = offline_preset(name, args.overrides)
    if args.base:
        cfg.ar.backbone.hf_config = base_hf_config(args.base, cfg.ar.backbone.family)
        cfg.ar.backbone.tokenizer = args.base
    ae_ref = reference_ae_part(ref)
    if ae_ref:  # the reference lets vgt_ae.* in the AR checkpoint override a separately loaded AE
        ae, ae_report = reference_ae(ae_ref, cfg, detect_family(ae_ref))
        print("AE:", ae_report.summary())
    elif args.ae:
        ae = VGTAutoencoder.from_pretrained(args.ae)
        cfg.ae = ae.config
    else:
        raise UserError("this AR checkpoint has no vgt_ae.* weights: pass --ae AE_FOLDER")
    try:
        tokenizer = load_tokenizer(cfg.ar.backbone)
    except OSError as e:
        raise VGTError(f"cannot load the tokenizer {cfg.ar.backbone.tokenizer!r}: {e}") from e
    try:
        pipe, report = convert_reference_ar(ref, cfg, tokenizer, ae, source)
    except ValueError as e:  # weights that find no place: the conversion is refused, nothing written
        raise VGTError(str(e)) from e
    pipe.save_pretrained(args.out)
    print("AR:", report.summary())
    print(f"wrote pipeline folder {args.out} (LLM layers: {cfg.ar.llm_num_layers})")
    return 0


def base_hf_config(base: str, family: str) -> dict:
    """The base VLM's config (architecture numbers), read without loading its weights."""
    from vgt.backbones.families import vlm_config_class
    from vgt.errors import VGTError

    try:
        return vlm_config_class(family).from_pretrained(base).to_dict()
    except OSError as e:  # no such folder / hub id
        raise VGTError(f"cannot read the config of the base VLM --base {base!r}: {e}") from e


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
