"""`vgt prep-latents`: add the AE's latents of each row's centre crop to a prepared dataset.

A Ray Data pipeline of two stages: CPU actors read parts and decode + centre-crop their rows into
blocks of uint8 crops (`vgt.data.crops.CropParts`), and an actor pool whose actors each load the
`VGTAutoencoder` once encodes those blocks in batches of `batch_size` (`LatentEncoder`). Decoding
thus runs in other processes while the actors encode (no thread in the actor competes with the
encoder for the GIL), and a batch may span parts. The driver gathers each part's latents and
writes the part again with `latent` + `latent_shape` columns, atomically, as soon as all its rows
are encoded. Parts finish independently, so a rerun encodes only the parts the manifest does not
list under `latents.parts`. The AE fingerprint goes into the manifest; readers refuse latents of
another AE (`vgt.data.PreparedDataset.check_latents`).
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgt import io as vio
from vgt.artifacts import ArtifactError, read_component_config
from vgt.data import layout
from vgt.data.crops import CropParts, part_crops
from vgt.data.latents import latents_to_columns
from vgt.data.reader import BASE_COLUMNS, Part, PreparedDataset, load_manifest
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
    # local paths made absolute: the Ray actors do not run in the caller's directory
    data, ae, output = (vio.absolute(p) if p else p for p in (data, ae, output))
    src = PreparedDataset(data)
    out = data if output is None or output.rstrip("/") == data.rstrip("/") else output
    fingerprint = read_component_config(ae, "ae")["fingerprint"]
    manifest = _start(src, out, ae, fingerprint, overwrite)
    done = manifest["latents"]["parts"]
    todo = [p.name for p in src.parts if p.name not in done]
    layout.write_manifest(out, manifest)
    log.info("prep-latents: %d part(s) to encode, %d already done", len(todo), len(src.parts) - len(todo))
    parts = [p for p in src.parts if p.name in todo]
    encoder = dict(ae=ae, fingerprint=fingerprint, bf16=bf16)
    if in_process:
        encoded = _encode_in_process(parts, out, src.resolution, batch_size, LatentEncoder(**encoder, torch_threads=None))
    else:
        encoded = _encode_parts(parts, out, src.resolution, batch_size, encoder, concurrency, num_gpus, num_cpus)
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


def _encode_in_process(parts: list[Part], out: str, resolution: int, batch_size: int, encoder: LatentEncoder):
    """The pipeline's work one part after another in this process (no overlap, no Ray)."""
    for part in parts:
        gather = _PartLatents(part)
        for crops in part_crops(part.name, part.uri, resolution, batch_size):
            gather.add(encoder(crops))
        yield gather.write(out)


def _encode_parts(parts: list[Part], out: str, resolution: int, batch_size: int, encoder: dict,
                  concurrency: int, num_gpus: float | None, num_cpus: float):
    """Yield each part's stats once all its rows are encoded and the part is written."""
    import ray

    gathers = {p.name: _PartLatents(p) for p in parts}
    for part in [p for p in parts if p.rows == 0]:  # nothing to encode: written at once
        yield gathers.pop(part.name).write(out)
    if not gathers:
        return
    if not ray.is_initialized():  # RAY_ADDRESS (e.g. under `ray job submit`) or a local cluster
        ray.init()
    if num_gpus is None:  # one GPU per actor when the cluster has any
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    # The CPUs left beside the encoders decode; none left (the encoders take every CPU): one
    # decoding actor that shares their CPUs rather than waiting for a CPU that never frees.
    spare = ray.cluster_resources().get("CPU", 0) - concurrency * num_cpus
    ds = ray.data.from_items(
        [{"name": name, "uri": gathers[name].part.uri} for name in gathers],
        # One block per part, so parts are read and decoded in parallel, one call each.
        override_num_blocks=len(gathers))
    ds = ds.map_batches(
        CropParts, fn_constructor_args=(resolution, batch_size),
        # One part per call; the generator yields blocks of crops as it decodes (bounded memory).
        batch_size=1,
        num_cpus=1 if spare >= 1 else 0,
        # Decoding actors: one per spare CPU.
        concurrency=(1, int(spare)) if spare >= 2 else 1)
    ds = ds.map_batches(
        LatentEncoder,
        fn_constructor_kwargs={**encoder, "torch_threads": max(1, int(num_cpus))},
        # Images per AE forward; a batch may hold rows of two parts.
        batch_size=batch_size,
        batch_format="numpy",
        # Actor pool size: each actor holds one AE copy for its whole life.
        concurrency=concurrency,
        # GPUs per actor (0 on CPU-only clusters); CPUs per actor (the torch thread count on CPU).
        num_gpus=num_gpus,
        num_cpus=num_cpus)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name in np.unique(batch["part"]):
            gather = gathers[str(name)]
            gather.add({k: v[batch["part"] == name] for k, v in batch.items()})
            if gather.complete:
                yield gathers.pop(gather.part.name).write(out)
    if gathers:  # the manifest promised more rows than the part files hold
        raise ArtifactError(f"prep-latents: parts {sorted(gathers)[:3]} ended with rows missing; "
                            "their files do not match the manifest (rebuild them with `vgt prep`)")


class LatentEncoder:
    """Ray Data actor: holds one AE; `__call__` encodes a batch of crops -> their latents.

    Each row also carries the seconds the actor spent on it (its share of the batch's call:
    pixel conversion, encoding, the copy back) and the actor's torch thread count."""

    def __init__(self, ae: str, fingerprint: str, bf16: bool, torch_threads: int | None):
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
        self.bf16 = bf16

    def __call__(self, batch: dict) -> dict:
        import torch

        from vgt.data.encode import encode_pixels
        from vgt.data.images import uint8_to_pixels

        start = time.perf_counter()
        latent = encode_pixels(self.ae, uint8_to_pixels(batch["pixels"]), bf16=self.bf16)
        n = len(latent)
        return {"part": batch["part"], "row": batch["row"], "latent": latent,
                "seconds": np.full(n, (time.perf_counter() - start) / n),
                "torch_threads": np.full(n, torch.get_num_threads())}


class _PartLatents:
    """One part's latents as they arrive (in any order); `write` rewrites the part with them."""

    def __init__(self, part: Part):
        self.part, self.latent, self.filled, self.seconds, self.threads = part, None, 0, 0.0, None

    @property
    def complete(self) -> bool:
        return self.filled == self.part.rows

    def add(self, batch: dict) -> None:
        if self.latent is None:
            self.latent = np.empty((self.part.rows, *batch["latent"].shape[1:]), dtype=np.float16)
        self.latent[batch["row"]] = batch["latent"]
        self.filled += len(batch["row"])
        self.seconds += float(batch["seconds"].sum())
        self.threads = int(batch["torch_threads"][0])

    def write(self, out: str) -> dict:
        """The part with its latent columns, atomically, streamed one row group at a time."""
        start, rows = time.perf_counter(), 0
        with layout.committed_local_path(layout.part_uri(out, self.part.name)) as tmp, \
                pq.ParquetWriter(tmp, OUT_SCHEMA) as writer:
            batches = layout.open_parquet(self.part.uri).iter_batches(
                batch_size=layout.ROW_GROUP_ROWS, columns=list(BASE_COLUMNS))  # any old latent columns are dropped
            for batch in batches:
                latent, shape = latents_to_columns(self.latent[rows: rows + batch.num_rows])
                table = pa.Table.from_batches([batch]).append_column(layout.LATENT_FIELDS[0], latent)
                writer.write_table(table.append_column(layout.LATENT_FIELDS[1], shape),
                                   row_group_size=layout.ROW_GROUP_ROWS)
                rows += batch.num_rows
        if rows != self.part.rows:
            raise ArtifactError(f"prep-latents: {self.part.uri!r} holds {rows} rows, the manifest {self.part.rows}")
        return {"part": self.part.name, "rows": rows,
                "shape": list(self.latent.shape[1:]) if rows else None,
                "seconds": round(self.seconds, 3),  # in the actors
                "write_s": round(time.perf_counter() - start, 3), "torch_threads": self.threads}
