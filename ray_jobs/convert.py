"""Convert reference (hustvl/VGT) checkpoints into vgt folders.

AE checkpoints (`vgt_ae_internvl3.pth`, `vgt_ae_qwen25vl.pth`) become an AE folder that
`VGTAutoencoder.from_pretrained` loads. The conversion reports unmapped, missing and dropped
(teacher) keys, and refuses to write a folder unless every weight found its place.

`--from pth` re-saves any weights-only `.pth` state dict as one safetensors file: the way to
bring the released perceptual-loss weights (torchvision VGG16 / ConvNeXt-S, LPIPS `vgg.pth`)
into `train.perceptual.*`, since nothing outside `vgt convert` unpickles.
"""
from __future__ import annotations

import argparse

DEFAULT_PRESETS = {"internvl": "internvl3-1b", "qwen2_5_vl": "qwen25vl-3b"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", choices=["reference", "pth"], required=True,
                        help="reference = a hustvl/VGT checkpoint -> vgt folder; "
                             "pth = any .pth state dict -> one .safetensors file")
    parser.add_argument("--in", dest="input", required=True, help="the .pth file to convert")
    parser.add_argument("--out", required=True, help="output folder (local or s3://); with --from pth "
                        "the .safetensors file to write")
    parser.add_argument("--preset", help="preset whose architecture the checkpoint has (default: "
                        "internvl3-1b for InternVL checkpoints, qwen25vl-3b for Qwen ones)")
    parser.add_argument("--base", help="for AR checkpoints: the base VLM folder (tokenizer, LLM config)")


def run(args: argparse.Namespace) -> int:
    return convert_pth(args) if args.source == "pth" else convert_reference(args)


def convert_pth(args: argparse.Namespace) -> int:
    from safetensors.torch import save

    from ray_jobs._entry import UserError
    from vgt import io as vio
    from vgt.convert.reference import load_reference_state

    try:
        state = load_reference_state(args.input)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {args.input!r} as a state dict: {e}") from e
    vio.atomic_write_bytes(args.out, save({k: v.contiguous() for k, v in state.items()}))
    print(f"wrote {len(state)} tensors to {args.out}")
    return 0


def convert_reference(args: argparse.Namespace) -> int:
    from ray_jobs._entry import UserError
    from vgt.config import apply_overrides
    from vgt.convert.reference import convert_reference_ae, detect_family, load_reference_state
    from vgt.presets import get_preset

    try:
        ref = load_reference_state(args.input)
        family = detect_family(ref)
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot read {args.input!r} as a reference checkpoint: {e}") from e
    cfg = get_preset(args.preset or DEFAULT_PRESETS[family])
    if cfg.ae.backbone.family != family:
        raise UserError(f"{args.input!r} is a {family} checkpoint but preset {cfg.name!r} is "
                        f"{cfg.ae.backbone.family}")
    # every weight comes from the checkpoint: build the architecture offline, without the hub
    ae_cfg = apply_overrides(cfg, ["ae.backbone.pretrained=null", "ae.decoder.pretrained=null"]).ae
    try:
        ae, report = convert_reference_ae(ref, ae_cfg)
    except ValueError as e:
        raise UserError(str(e)) from e
    ae.save_pretrained(args.out)
    print(report.summary())
    print(f"wrote AE folder {args.out} (fingerprint {ae.fingerprint})")
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
