"""Read a prepared dataset without Ray: parts, rows (pyarrow), images, fingerprint-checked latents.

```python
ds = PreparedDataset("s3://bucket/prepared")      # reads and checks manifest.json
ds.parts                                         # [Part(name, uri, rows, source)], sorted by name
for batch in ds.iter_batches(ds.parts[rank::world], columns=["key", "caption", "image"]):
    images = [decode_image(b) for b in batch.column("image").to_pylist()]
latents = read_latents(ds.read_part(part, columns=["latent", "latent_shape"], ae_fingerprint=ae.fingerprint))
```
Reading the `latent` column needs the fingerprint of the AE the reader will decode with; a
dataset whose latents came from another AE (or that has none) raises `LatentMismatchError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from vgt import io as vio
from vgt.artifacts import ArtifactError

from . import layout
from .latents import latents_from_columns

BASE_COLUMNS = tuple(layout.PART_SCHEMA.names)
LATENT_COLUMNS = tuple(f.name for f in layout.LATENT_FIELDS)


class LatentMismatchError(ArtifactError):
    """The dataset's latents were not made by the AE the caller uses (or are missing)."""


@dataclass(frozen=True)
class Part:
    name: str     # "part-<source>-<shard>"
    uri: str      # the parquet file
    rows: int
    source: str


def load_manifest(dataset: str) -> dict | None:
    """The checked manifest of `dataset`, or None when it has none (ArtifactError if foreign)."""
    uri = layout.manifest_uri(dataset)
    if not vio.exists(uri):
        return None
    manifest = vio.read_json(uri)
    problem = layout.manifest_problem(manifest)
    if problem:
        raise ArtifactError(f"{uri!r} {problem}")
    return manifest


class PreparedDataset:
    def __init__(self, uri: str, allow_incomplete: bool = False):
        self.uri = uri
        manifest = load_manifest(uri)
        if manifest is None:
            raise FileNotFoundError(f"{layout.manifest_uri(uri)!r} not found: is {uri!r} a `vgt prep` output?")
        self.manifest = manifest
        unfinished = sorted(name for name, e in manifest["parts"].items() if not e.get("complete"))
        if unfinished and not allow_incomplete:
            raise ArtifactError(f"{uri!r} is incomplete: {len(unfinished)} part(s) not built "
                                f"({', '.join(unfinished[:3])}...); rerun `vgt prep` with the same arguments")
        self.parts = [Part(name, layout.part_uri(uri, name), e["rows_out"], e["source"])
                      for name, e in sorted(manifest["parts"].items()) if e.get("complete")]

    @property
    def num_rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def sources(self) -> dict[str, int]:
        """Rows per source tag (for weighting sources when mixing)."""
        out: dict[str, int] = {}
        for p in self.parts:
            out[p.source] = out.get(p.source, 0) + p.rows
        return out

    @property
    def resolution(self) -> int:
        """The shorter side of every stored image."""
        return int(self.manifest["config"]["data"]["resolution"])

    @property
    def latent_fingerprint(self) -> str | None:
        return (self.manifest.get("latents") or {}).get("ae_fingerprint")

    def check_latents(self, ae_fingerprint: str) -> None:
        """Raise unless every part has latents made by the AE with `ae_fingerprint`."""
        have = self.latent_fingerprint
        if have is None:
            raise LatentMismatchError(f"{self.uri!r} has no latents; run `vgt prep-latents --data {self.uri} --ae AE_DIR`")
        if have != ae_fingerprint:
            raise LatentMismatchError(f"{self.uri!r} holds latents of AE {have}, not of this AE {ae_fingerprint}; "
                                      "rerun `vgt prep-latents --overwrite` with this AE")
        done = self.manifest["latents"]["parts"]
        missing = [p.name for p in self.parts if p.name not in done]
        if missing:
            raise LatentMismatchError(f"{self.uri!r}: {len(missing)} part(s) lack latents ({', '.join(missing[:3])}); "
                                      "rerun `vgt prep-latents`")

    def read_part(self, part: Part, columns: Iterable[str] | None = None,
                  ae_fingerprint: str | None = None) -> pa.Table:
        cols = self._columns(columns, ae_fingerprint)
        return layout.open_parquet(part.uri).read(columns=cols)

    def iter_batches(self, parts: Iterable[Part] | None = None, columns: Iterable[str] | None = None,
                     batch_size: int = layout.ROW_GROUP_ROWS,
                     ae_fingerprint: str | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of `parts` (default: all) in part order, then row order."""
        cols = self._columns(columns, ae_fingerprint)
        for part in self.parts if parts is None else parts:
            yield from layout.open_parquet(part.uri).iter_batches(batch_size=batch_size, columns=cols)

    def _columns(self, columns: Iterable[str] | None, ae_fingerprint: str | None) -> list[str]:
        if columns is None:
            cols = list(BASE_COLUMNS) + (list(LATENT_COLUMNS) if ae_fingerprint else [])
        else:
            cols = list(columns)
        if set(cols) & set(LATENT_COLUMNS):
            if not ae_fingerprint:
                raise LatentMismatchError("reading latents needs ae_fingerprint= (the AE that will decode them)")
            self.check_latents(ae_fingerprint)
        return cols


def read_latents(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """float16 [N, C, h, w] from a table/batch read with the latent columns."""
    return latents_from_columns(table.column("latent"), table.column("latent_shape"))
