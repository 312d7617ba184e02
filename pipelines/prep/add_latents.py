"""`vgt prep-latents`: add the AE's latents of each row's centre crop to a prepared dataset.

A Ray Data actor pool: each actor loads the `VGTAutoencoder` once, then takes whole parts (one
per call), streams their rows in batches of `batch_size` (decoding the next batch on a thread
while the AE encodes this one), and writes the part again with `latent` + `latent_shape`
columns, atomically. Parts finish independently, so a rerun encodes only the parts the manifest
does not list under `latents.parts`. The AE fingerprint goes into the manifest; readers refuse
latents of another AE (`vgt.data.PreparedDataset.check_latents`).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from vgt import io as vio
from vgt.artifacts import ArtifactError, read_component_config
from vgt.data import layout
from vgt.data.encode import center_crop_pixels, encode_pixels
from vgt.data.latents import latents_to_columns
from vgt.data.reader import BASE_COLUMNS, PreparedDataset, load_manifest
from vgt.progress import Progress
from vgt.provenance import collect_provenance

from .dataset import remove_dataset

log = logging.getLogger(__name__)
OUT_SCHEMA = pa.schema(list(layout.PART_SCHEMA) + layout.LATENT_FIELDS)


def run_prep_latents(data: str, ae: str, output: str | None = None, batch_size: int = 32,
                     concurrency: int = 1, num_gpus: float | None = None, num_cpus: float = 1,
                     bf16: bool = False, overwrite: bool = False, in_process: bool = False) -> dict:
    """Encode every part of `data` lacking latents of `ae`; write to `output` (default: in place).

    `in_process`: encode the parts one after another in this process, without Ray (small datasets:
    calibration, debugging); the parts and manifest are the same."""
    started = time.time()
    src = PreparedDataset(data)
    out = data if output is None or output.rstrip("/") == data.rstrip("/") else output
    fingerprint = read_component_config(ae, "ae")["fingerprint"]
    manifest = _start(src, out, ae, fingerprint, overwrite)
    done = manifest["latents"]["parts"]
    todo = [p.name for p in src.parts if p.name not in done]
    layout.write_manifest(out, manifest)
    log.info("prep-latents: %d part(s) to encode, %d already done", len(todo), len(src.parts) - len(todo))
    options = dict(src=data, out=out, ae=ae, fingerprint=fingerprint, resolution=src.resolution,
                   batch_size=batch_size, bf16=bf16)
    if in_process:
        encoder = PartEncoder(**options, torch_threads=None)  # this process's thread setting
        encoded = (encoder.encode_part(name) for name in todo)
    else:
        encoded = _encode_parts(todo, options, concurrency, num_gpus, num_cpus)
    progress = Progress("prep-latents", total=len(src.parts), unit="part", start=len(src.parts) - len(todo))
    for stats in encoded:
        progress.update(1, rows=stats["rows"])
        manifest["latents"]["shape"] = stats.pop("shape") or manifest["latents"]["shape"]
        done[stats.pop("part")] = stats
        log.info("[%d/%d] latents for %d rows (%.1f s)", len(done), len(src.parts), stats["rows"], stats["seconds"])
        layout.write_manifest(out, manifest)
    progress.close()
    if out != data:
        _copy_rejects(src, out)
    manifest["latents"]["duration_s"] = round(time.time() - started, 3)
    manifest["latents"]["parts_encoded"] = todo
    layout.write_manifest(out, manifest)
    rows = sum(p.rows for p in src.parts if p.name in todo)
    print(f"prep-latents: {len(todo)} part(s), {rows} rows encoded in {manifest['latents']['duration_s']:.1f} s "
          f"({len(src.parts) - len(todo)} part(s) already had latents of AE {fingerprint})", flush=True)
    return manifest


def _start(src: PreparedDataset, out: str, ae: str, fingerprint: str, overwrite: bool) -> dict:
    """The manifest to continue: the output's own (resume) or a copy of the source's."""
    in_place = out == src.uri
    if overwrite and not in_place:
        remove_dataset(out)
    manifest = copy.deepcopy(src.manifest) if in_place else (load_manifest(out) or copy.deepcopy(src.manifest))
    latents = manifest.get("latents")
    if latents and latents["ae_fingerprint"] != fingerprint and not overwrite:
        raise ArtifactError(f"{out!r} holds latents of AE {latents['ae_fingerprint']}, not {fingerprint}; "
                            "pass --overwrite to replace them")
    if not latents or latents["ae_fingerprint"] != fingerprint or overwrite:
        manifest["latents"] = {"ae": ae, "ae_fingerprint": fingerprint, "crop": "center",
                               "resolution": src.resolution, "dtype": "float16", "shape": None, "parts": {}}
    if not in_place:  # a copied dataset is only as done as the part files actually present there
        present = layout.part_files(out)
        manifest["latents"]["parts"] = {name: e for name, e in manifest["latents"]["parts"].items()
                                        if layout.part_file(name) in present}
    manifest["latents"]["provenance"] = collect_provenance(command="prep-latents", ae=ae, data=src.uri)
    return manifest


def _copy_rejects(src: PreparedDataset, out: str) -> None:
    for part in src.parts:
        vio.atomic_write_bytes(layout.rejects_uri(out, part.name), vio.read_bytes(layout.rejects_uri(src.uri, part.name)))


def _encode_parts(todo: list[str], options: dict, concurrency: int, num_gpus: float | None, num_cpus: float):
    if not todo:
        return
    import ray

    if not ray.is_initialized():  # RAY_ADDRESS (e.g. under `ray job submit`) or a local cluster
        ray.init()
    if num_gpus is None:  # one GPU per actor when the cluster has any
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    ds = ray.data.from_items(
        [{"name": n} for n in todo],
        # One block per part, so parts are handed to actors one by one as they free up.
        override_num_blocks=len(todo))
    ds = ds.map_batches(
        PartEncoder,
        fn_constructor_kwargs={**options, "torch_threads": max(1, int(num_cpus))},
        # One part per call: an actor reads, encodes and writes a whole part (batching inside).
        batch_size=1,
        # Actor pool size: each actor holds one AE copy for its whole life.
        concurrency=concurrency,
        # GPUs per actor (0 on CPU-only clusters); CPUs per actor (decode + CPU encode).
        num_gpus=num_gpus,
        num_cpus=num_cpus)
    for row in ds.iter_rows():
        yield json.loads(row["stats"])


class PartEncoder:
    """Ray Data actor: holds one AE; `__call__` adds latents to the parts named in the batch."""

    def __init__(self, src: str, out: str, ae: str, fingerprint: str, resolution: int, batch_size: int,
                 bf16: bool, torch_threads: int | None):
        import torch

        from vgt.ae import VGTAutoencoder

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.ae = VGTAutoencoder.from_pretrained(ae).to(self.device).eval()
        # encode_pixels autocasts to bf16 on CUDA when asked: the vision tower's attention follows
        self.ae.use_attention(self.device, torch.bfloat16 if bf16 and self.device.type == "cuda" else torch.float32)
        if self.ae.fingerprint != fingerprint:
            raise ArtifactError(f"AE {ae!r} changed while prep-latents ran ({fingerprint} -> {self.ae.fingerprint})")
        self.src, self.out, self.resolution, self.batch_size, self.bf16 = src, out, resolution, batch_size, bf16

    def __call__(self, batch: dict) -> dict:
        return {"stats": [json.dumps(self.encode_part(str(name))) for name in batch["name"]]}

    def encode_part(self, name: str) -> dict:
        start = time.perf_counter()
        batches = layout.open_parquet(layout.part_uri(self.src, name)).iter_batches(
            batch_size=self.batch_size, columns=list(BASE_COLUMNS))  # any old latent columns are dropped
        rows, shape = 0, None
        with layout.committed_local_path(layout.part_uri(self.out, name)) as tmp, \
                pq.ParquetWriter(tmp, OUT_SCHEMA) as writer, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._next_pixels, batches)  # decode overlaps the previous encode
            while (item := pending.result()) is not None:
                batch, pixels = item
                pending = pool.submit(self._next_pixels, batches)
                latent, shape_col = latents_to_columns(self._encode(pixels))
                table = pa.Table.from_batches([batch]).append_column(layout.LATENT_FIELDS[0], latent)
                writer.write_table(table.append_column(layout.LATENT_FIELDS[1], shape_col),
                                   row_group_size=layout.ROW_GROUP_ROWS)
                rows, shape = rows + batch.num_rows, shape_col[0].as_py()
        return {"part": name, "rows": rows, "shape": shape,
                "seconds": round(time.perf_counter() - start, 3)}

    def _next_pixels(self, batches):
        batch = next(batches, None)
        if batch is None:
            return None
        return batch, center_crop_pixels(batch.column("image").to_pylist(), self.resolution)

    def _encode(self, pixels):
        return encode_pixels(self.ae, pixels, bf16=self.bf16)
