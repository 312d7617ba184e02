"""Training data order: a pure function of (seed, epoch, rank, world size), resumable mid-epoch.

Ray Data's default `streaming_split` hands blocks to whichever worker asks first, so two identical
runs see different batches (docs/environment.md §4.3). Each rank therefore reads its own rows of the
prepared parquet parts directly (vgt.data reader, pyarrow, local or s3://):

* every part's row groups are cut into chunks of at most `chunk_rows` rows;
* epoch e lays all chunks end to end in a seeded order and gives rank r the r-th of `world` equal
  contiguous slices, so every rank gets the same number of rows and reads only its own chunks;
* a rank shuffles rows inside windows of `window` consecutive chunks (a bounded shuffle buffer:
  at most `window` chunks are held in memory);
* each source is an endless stream per rank (epoch after epoch); the position is (epoch, index),
  so resuming mid-epoch is arithmetic: nothing has to be read again;
* several sources mix per sample with the given weights, drawn from a generator seeded by
  (seed, step, rank).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch


# The columns to read: a list, or a function of the dataset (e.g. latents only where they fit the AE).
Columns = Union[list[str], Callable[[Any], list[str]]]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any labels (stable across processes, unlike `hash`)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class Chunk:
    part: int
    row_group: int
    start: int  # first row inside the row group
    stop: int


class PreparedSource:
    """One prepared dataset (vgt.data reader), its row groups cut into chunks; reads chunks with a
    small row-group cache."""

    def __init__(self, uri: str, columns: Columns, chunk_rows: int, world_size: int, cache: int = 8):
        from vgt.data import PreparedDataset
        from vgt.data.layout import open_parquet

        self.uri = uri
        self.dataset = PreparedDataset(uri)
        self.columns = list(columns(self.dataset) if callable(columns) else columns)
        self.files = [open_parquet(p.uri) for p in self.dataset.parts]
        self._check_columns()
        groups = [[f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] for f in self.files]
        self.num_rows = sum(map(sum, groups))
        if self.num_rows < world_size:
            raise ValueError(f"{uri!r} has {self.num_rows} rows, fewer than the {world_size} workers")
        self.chunks = [Chunk(p, g, s, min(s + chunk_rows, n)) for p, sizes in enumerate(groups)
                       for g, n in enumerate(sizes) for s in range(0, n, chunk_rows)]
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache

    def _check_columns(self) -> None:
        names = set(self.files[0].schema_arrow.names)
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise ValueError(f"{self.uri!r} lacks column(s) {missing}; it has {sorted(names)}")

    def rows(self, chunk: int, offsets: list[int]) -> list[dict]:
        c = self.chunks[chunk]
        table = self._row_group(c.part, c.row_group)
        return table.take([c.start + o for o in offsets]).to_pylist()

    def _row_group(self, part: int, group: int):
        key = (part, group)
        if key not in self._cache:
            self._cache[key] = self.files[part].read_row_group(group, columns=self.columns)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]


def epoch_order(sizes: list[int], seed: int, epoch: int, rank: int, world: int,
                window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk ids, row offsets) this rank reads in `epoch`, in order; `sizes` are chunk lengths.

    The epoch's chunks are put in a seeded order and laid end to end; rank r takes the r-th of
    `world` equal contiguous slices of that row sequence (the remainder is left out this epoch),
    then rows are shuffled within windows of `window` consecutive chunks (pieces) of its slice.
    """
    order = torch.randperm(len(sizes), generator=seeded(seed, "chunks", epoch))
    lengths = torch.tensor(sizes)[order]
    ends = lengths.cumsum(0)
    per = int(ends[-1]) // world
    lo, hi = rank * per, (rank + 1) * per
    first = int(torch.searchsorted(ends, lo, right=True))
    pieces = []  # (chunk id, first offset, stop offset) of every chunk (piece) in the slice
    for i in range(first, len(order)):
        start = int(ends[i] - lengths[i])
        if start >= hi:
            break
        pieces.append((int(order[i]), max(lo, start) - start, min(hi, int(ends[i])) - start))
    chunk_ids, offsets = [], []
    for w in range(0, len(pieces), window):
        group = pieces[w:w + window]
        ids = torch.cat([torch.full((b - a,), c) for c, a, b in group])
        offs = torch.cat([torch.arange(a, b) for _, a, b in group])
        perm = torch.randperm(len(ids), generator=seeded(seed, "rows", epoch, rank, w))
        chunk_ids.append(ids[perm])
        offsets.append(offs[perm])
    return torch.cat(chunk_ids), torch.cat(offsets)


class SourceStream:
    """One rank's endless, deterministic walk over one source; position = (epoch, index)."""

    def __init__(self, source: PreparedSource, seed: int, rank: int, world: int, window: int):
        self.source, self.seed, self.rank, self.world, self.window = source, seed, rank, world, window
        self.sizes = [c.stop - c.start for c in source.chunks]
        self.epoch, self.index = 0, 0
        self._order: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_order(self.sizes, self.seed, self.epoch, self.rank,
                                                   self.world, self.window))
        return self._order[1]

    def take(self, n: int) -> list[tuple[int, int]]:
        """The next `n` (chunk, offset) positions, crossing into the next epoch when needed."""
        out: list[tuple[int, int]] = []
        while len(out) < n:
            chunks, offsets = self._epoch()
            stop = min(len(chunks), self.index + n - len(out))
            out += zip(chunks[self.index:stop].tolist(), offsets[self.index:stop].tolist())
            self.index = stop
            if self.index == len(chunks):
                self.epoch, self.index = self.epoch + 1, 0
        return out


class MixedFeed:
    """Per-rank batches mixed from weighted sources. Each row dict gains `_source` (its index)."""

    def __init__(self, uris: list[str], weights: list[float], columns: Columns, seed: int,
                 rank: int, world: int, chunk_rows: int = 1024, window: int = 8):
        if len(uris) != len(weights) or not uris or min(weights) <= 0:
            raise ValueError(f"need one positive weight per dataset, got {uris} / {weights}")
        self.seed, self.rank = seed, rank
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.sources = [PreparedSource(u, columns, chunk_rows, world, cache=window + 1) for u in uris]
        self.streams = [SourceStream(s, derive_seed(seed, "source", i), rank, world, window)
                        for i, s in enumerate(self.sources)]

    def batch(self, step: int, size: int) -> list[dict]:
        which = self._choose(step, size)
        rows: list[dict | None] = [None] * size
        for s, stream in enumerate(self.streams):
            slots = [i for i in range(size) if which[i] == s]
            positions = stream.take(len(slots))
            for slot, row in zip(slots, self._read(s, positions)):
                rows[slot] = {**row, "_source": s}
        return rows  # type: ignore[return-value]

    def _choose(self, step: int, size: int) -> list[int]:
        if len(self.streams) == 1:
            return [0] * size
        gen = seeded(self.seed, "mix", step, self.rank)
        return torch.multinomial(self.weights, size, replacement=True, generator=gen).tolist()

    def _read(self, s: int, positions: list[tuple[int, int]]) -> list[dict]:
        by_chunk: dict[int, list[int]] = {}
        for i, (chunk, _) in enumerate(positions):
            by_chunk.setdefault(chunk, []).append(i)
        out: list[dict | None] = [None] * len(positions)
        for chunk, idx in by_chunk.items():
            for i, row in zip(idx, self.sources[s].rows(chunk, [positions[i][1] for i in idx])):
                out[i] = row
        return out  # type: ignore[return-value]

    def state(self) -> dict:
        return {"positions": [[s.epoch, s.index] for s in self.streams]}

    def load_state(self, state: dict) -> None:
        positions = state["positions"]
        if len(positions) != len(self.streams):
            raise ValueError(f"checkpoint has {len(positions)} data sources, this run {len(self.streams)}")
        for stream, (epoch, index) in zip(self.streams, positions):
            stream.epoch, stream.index = epoch, index
