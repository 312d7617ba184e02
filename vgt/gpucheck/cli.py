"""Check a GPU: AR training step, FSDP2, bf16 vs fp32, attention kernels' outputs, sampling latency and AE
throughput at a real preset's sizes with random weights; one JSON and one table (vgt.gpucheck).

Exit status: 0 every check passed; 1 a check failed or a section raised (its error is in the report);
2 refused (no CUDA without --allow-cpu, or a bad flag)."""
from __future__ import annotations

import argparse
import gc
import logging
import platform
import sys
import time
import traceback

import torch

from vgt.errors import UsageError

from .report import markdown, write

PACKAGES = ("vgt", "transformers", "tokenizers", "safetensors", "diffusers", "flash-attn", "numpy", "pillow")
# what `make gpu-bundle` does not pack: the check must never import them
NOT_BUNDLED = ("ray", "pyarrow", "s3fs")
SECTIONS = ("training", "attention", "sampling", "autoencoder")
BUDGET_S = 420  # the check is sized to finish within 7 minutes on one H100/H200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/gpu-check", help="folder for gpu-check.json and gpu-check.md "
                                                                "(default: runs/gpu-check)")
    parser.add_argument("--preset", default="internvl3-1b", help="architecture to build with random weights "
                                                                 "(default: internvl3-1b)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without CUDA (a smoke run of every step; use with --preset tiny)")
    parser.add_argument("--batch", type=int, default=None,
                        help="AR training samples per step (default: the preset's train.ar_pretrain.batch_size)")
    parser.add_argument("--steps", type=int, default=8, help="timed AR training steps per strategy (default: 8)")
    parser.add_argument("--ae-batch", type=int, default=None,
                        help="images per AE encode/decode call (default: 32 on a GPU, 2 on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for the MFU (default: looked up by device name)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides as every command takes them, e.g. ar.llm_num_layers=12 "
                             "train.activation_checkpointing=true (weights stay random: *.pretrained is ignored)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")


def environment(device: torch.device) -> dict:
    from vgt.backbones import choose_attn_implementation
    from vgt.provenance import package_versions

    impl, why = choose_attn_implementation("auto", device, torch.bfloat16)
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'cpu'})",
            "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None,
            "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "packages": package_versions(PACKAGES), "attention": impl, "attention_reason": why}


def run(args: argparse.Namespace) -> int:
    from vgt.backbones import load_tokenizer

    from .autoencoder import diffusers_missing, run_autoencoder
    from .context import Check, check_config, peak_tflops
    from .kernels import kernels, run_kernels
    from .sampling import run_sampling
    from .train import run_training

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise UsageError(f"gpu-check needs a CUDA GPU and torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no'}); --allow-cpu --preset tiny runs the CPU smoke test")
    if min(args.steps, args.batch or 1, args.ae_batch or 1) < 1:
        raise UsageError("--steps, --batch and --ae-batch must be at least 1")
    started = time.monotonic()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    cfg = check_config(args.preset, args.overrides)
    peak, source = peak_tflops(device, args.peak_tflops)
    check = Check(cfg, device, torch.bfloat16, args.batch or cfg.train.ar_pretrain.batch_size, args.steps,
                  args.ae_batch or (32 if device.type == "cuda" else 2), peak, source)
    env = environment(device)
    notes = [kernels(check)[1]]  # which attention kernels are compared, and why not flash where it is not
    tokenizer = load_tokenizer(cfg.ar.backbone)
    sections = {"training": lambda: run_training(check, tokenizer), "attention": lambda: run_kernels(check, tokenizer),
                "sampling": lambda: run_sampling(check, tokenizer), "autoencoder": lambda: run_autoencoder(check)}
    results, errors = {}, {}
    for name in args.only or SECTIONS:
        if name == "autoencoder" and (missing := diffusers_missing()):
            notes.append(missing)
            results[name] = {"skipped": missing}
            continue
        logging.getLogger(__name__).info("gpu-check: %s", name)
        try:
            results[name] = sections[name]()
        except Exception as err:  # noqa: BLE001 - one failed section must not hide the others' numbers
            errors[name] = f"{type(err).__name__}: {err}"
            results[name] = {"error": errors[name], "traceback": traceback.format_exc()}
            check.row(name, "section raised", None, "", False, errors[name][:300])
        gc.collect()  # a failed section's models (held by its traceback until now) leave the device too
        check.reset_peak()
    seconds = time.monotonic() - started
    if seconds > BUDGET_S and device.type == "cuda":
        notes.append(f"took {seconds:.0f} s, over the {BUDGET_S} s budget")
    env["imported_not_bundled"] = [m for m in NOT_BUNDLED if m in sys.modules]
    ok = not errors and all(r["ok"] is not False for r in check.rows)
    result = {"format": 1, "preset": args.preset, "ok": ok, "seconds": seconds, "environment": env,
              "settings": {"train_batch": check.train_batch, "train_steps": check.train_steps,
                           "ae_batch": check.ae_batch, "compute_dtype": str(check.compute_dtype),
                           "peak_tflops": peak, "peak_source": source, "grid": list(check.grid),
                           "resolution": cfg.data.resolution},
              "notes": notes, "errors": errors, **results, "rows": check.rows}
    json_path, table_path = write(result, args.out)
    print(markdown(result))
    print(f"gpu-check: {'all passed' if ok else 'FAILED'} in {seconds:.0f} s; wrote {json_path} and {table_path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m vgt.gpucheck`: the same flags and exit statuses as `vgt gpu-check`."""
    parser = argparse.ArgumentParser(prog="python -m vgt.gpucheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
