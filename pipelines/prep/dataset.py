"""`vgt prep` as a Ray Data program: raw image-text files -> a prepared dataset.

Each input file becomes one output part, built by one Ray Data task (`vgt.data.part`), so
parts map deterministically to inputs, are written atomically, and a rerun redoes only the parts
whose manifest entry is not complete (or whose files are gone). The driver streams the finished
parts' stats back, keeps `manifest.json` current, and prints a summary table at the end.
"""
from __future__ import annotations

import io
import json
import logging
import time

from vgt import io as vio
from vgt.artifacts import ArtifactError
from vgt.config import DataConfig, VGTConfig, to_dict
from vgt.data import layout
from vgt.data.reader import load_manifest
from vgt.data.summary import by_source, format_summary, totals
from vgt.progress import Progress
from vgt.provenance import collect_provenance

from vgt.data.part import build_part, build_part_row
from vgt.data.plan import InputError, plan_parts

log = logging.getLogger(__name__)
MANIFEST_EVERY_S = 5.0  # rewrite manifest.json at most this often while parts finish (and at the end)


def run_prep(inputs: list[str], output: str, cfg: VGTConfig, overwrite: bool = False,
             concurrency: int | None = None, in_process: bool = False) -> dict:
    """Prepare `inputs` ([TAG=]URI ...) into `output`; returns the final manifest.

    `in_process`: build the parts one after another in this process, without Ray (small datasets:
    calibration, debugging); the parts and manifest are the same."""
    started = time.time()
    plan = plan_parts(inputs)
    manifest, todo = start_manifest(output, plan, cfg, overwrite)
    layout.write_manifest(output, manifest)
    log.info("prep: %d part(s) to build, %d already complete", len(todo), len(plan) - len(todo))
    built, last_write = [], time.time()
    parts = ((build_part(spec, cfg.data, output) for spec in todo) if in_process
             else _build_parts(todo, cfg.data, output, concurrency))
    progress = Progress("prep", total=len(plan), unit="part", start=len(plan) - len(todo))
    kept = rejected = 0
    for stats in parts:
        kept, rejected = kept + stats["rows_out"], rejected + stats["rejected"]
        progress.update(1, rows_kept=kept, rejected=rejected)
        manifest["parts"][stats["part"]] = stats
        (manifest.get("latents") or {}).get("parts", {}).pop(stats["part"], None)  # its latents are gone
        built.append(stats)
        log.info("[%d/%d] %s: %d kept, %d rejected (%.1f s)", len(built), len(todo), stats["part"],
                 stats["rows_out"], stats["rejected"], stats["seconds"])
        if time.time() - last_write > MANIFEST_EVERY_S:
            layout.write_manifest(output, _with_totals(manifest))
            last_write = time.time()
    progress.close()
    manifest["runs"].append({
        "started": started, "duration_s": round(time.time() - started, 3),
        "parts_built": [s["part"] for s in built], "parts_skipped": len(plan) - len(todo),
        "rows_in": sum(s["rows_in"] for s in built)})
    manifest["duration_s"] = manifest["runs"][-1]["duration_s"]
    layout.write_manifest(output, _with_totals(manifest))
    print(format_summary(manifest), flush=True)
    return manifest


def start_manifest(output: str, plan: list[dict], cfg: VGTConfig, overwrite: bool) -> tuple[dict, list[dict]]:
    """(manifest to continue, parts to build): checks an existing output against this run."""
    if overwrite:
        remove_dataset(output)
    old = load_manifest(output)
    if old is None and layout.part_files(output):
        raise ArtifactError(f"{output!r} holds part files but no {layout.MANIFEST}; pass --overwrite to replace them")
    data_cfg = to_dict(cfg.data)
    if old is not None:
        _check_compatible(output, old, plan, data_cfg)
    present = layout.part_files(output) & layout.part_files(vio.join(output, layout.REJECTS_DIR))
    parts, todo = {}, []
    for spec in plan:
        entry = (old or {}).get("parts", {}).get(spec["name"])
        if entry and entry.get("complete") and layout.part_file(spec["name"]) in present:
            parts[spec["name"]] = entry
        else:
            parts[spec["name"]] = {**spec, "complete": False}
            todo.append(spec)
    manifest = {
        "kind": layout.KIND, "format_version": layout.FORMAT_VERSION, "preset": cfg.name,
        "config": {"data": data_cfg}, "parts": parts, "runs": (old or {}).get("runs", []),
        "latents": (old or {}).get("latents"),
        "provenance": collect_provenance(config=to_dict(cfg), command="prep",
                                         inputs=[spec["input"] for spec in plan]),
    }
    return _with_totals(manifest), todo


def remove_dataset(output: str) -> None:
    """Delete what prep/prep-latents wrote in `output` (parts, rejects, manifest); nothing else."""
    for name in layout.part_files(output):
        vio.rm(vio.join(output, name))
    vio.rm(vio.join(output, layout.REJECTS_DIR), recursive=True)
    vio.rm(layout.manifest_uri(output))


def _check_compatible(output: str, old: dict, plan: list[dict], data_cfg: dict) -> None:
    if old["config"]["data"] != data_cfg:
        changed = sorted(k for k in data_cfg if old["config"]["data"].get(k) != data_cfg[k])
        raise ArtifactError(f"{output!r} was prepared with another data config (differs in {changed}); "
                            "pass --overwrite to rebuild it")
    planned = {spec["name"]: spec["input"] for spec in plan}
    stale = [f"{name} ({entry['input']})" for name, entry in old["parts"].items()
             if planned.get(name) != entry["input"]]
    if stale:
        raise ArtifactError(f"{output!r} holds parts for inputs not given now: {', '.join(stale[:5])}"
                            f"{' ...' if len(stale) > 5 else ''}; give the same inputs (new ones may be "
                            "added) or pass --overwrite")


def _with_totals(manifest: dict) -> dict:
    entries = list(manifest["parts"].values())
    manifest["counts"] = totals(entries)
    manifest["sources"] = by_source(manifest["parts"])
    manifest["shard_errors"] = [{"part": e["part"], **err} for e in entries if e.get("complete")
                                for err in e["shard_errors"]]
    return manifest


def _build_parts(todo: list[dict], data_cfg: DataConfig, output: str, concurrency: int | None):
    """Yield each part's stats as its Ray Data task finishes (completion order)."""
    if not todo:
        return
    import ray

    if not ray.is_initialized():  # RAY_ADDRESS (e.g. under `ray job submit`) or a local cluster
        ray.init()
    ds = ray.data.from_items(
        todo,
        # One block per input file, so every part is its own task and parts run in parallel.
        override_num_blocks=len(todo))
    ds = ds.map(
        build_part_row,
        fn_kwargs={"data_cfg": to_dict(data_cfg), "output": output},
        # A part is single-threaded PIL + parquet work: one CPU per task.
        num_cpus=1,
        # Cap on parts built at once (None: as many as the cluster's CPUs allow).
        concurrency=concurrency)
    for row in ds.iter_rows():
        yield json.loads(row["stats"])


def run_prep_dataset(dataset, output: str, cfg: VGTConfig, num_parts: int, tag: str = "hf", **prep_kwargs) -> dict:
    """Prepare a Hugging Face `datasets.Dataset` (image + caption columns) as `num_parts` parts.

    Its rows are written by `datasets` itself as `num_parts` parquet shards of contiguous rows
    (OUT/source/<dataset fingerprint>/, read from its memory-mapped Arrow files, never gathered into
    one table), then prepared like any other folder of parquet shards: one part per shard, the same
    rejects accounting, and a rerun rebuilds only the unfinished parts. `prep_kwargs`: `run_prep`'s."""
    if num_parts < 1 or num_parts > len(dataset):
        raise InputError(f"num_parts must be between 1 and the dataset's {len(dataset)} rows, got {num_parts}")
    stage = vio.join(output, "source", dataset._fingerprint)
    with Progress("prep: writing dataset shards", total=num_parts, unit="shard") as progress:
        for index in range(num_parts):
            uri = vio.join(stage, f"{index:05d}-of-{num_parts:05d}.parquet")
            if not vio.exists(uri):  # a shard of this dataset already written: kept (resume)
                buf = io.BytesIO()  # one shard at a time
                dataset.shard(num_shards=num_parts, index=index, contiguous=True).to_parquet(buf)
                vio.atomic_write_bytes(uri, buf.getvalue())
            progress.update(1)
    return run_prep([f"{tag}={stage}"], output, cfg, **prep_kwargs)
