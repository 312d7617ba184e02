"""Benchmark harness behind `vgt bench`.

A benchmark is a module in `pipelines/bench/` that defines
`NAME: str` and `run(quick: bool) -> list[dict]`. Each row is one measured case; benchmarks
measure their alternatives side by side in the same process and report ratios themselves,
because this machine's absolute timings drift. The harness only discovers, runs and tabulates.
"""
from __future__ import annotations

import importlib
import pkgutil
import time
from typing import Callable, Iterable

PACKAGES = ("pipelines.bench",)


def discover(packages: Iterable[str] = PACKAGES) -> dict[str, object]:
    """NAME -> module for every benchmark module found (import errors propagate)."""
    found = {}
    for package in packages:
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{package}.{info.name}")
            if hasattr(module, "NAME") and hasattr(module, "run"):
                found[module.NAME] = module
    return found


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def format_table(rows: list[dict]) -> str:
    """One aligned text table over the union of the rows' keys (first-seen order)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [columns, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def run_all(names: list[str] | None = None, quick: bool = False) -> list[dict]:
    modules = discover()
    unknown = set(names or []) - set(modules)
    if unknown:
        raise KeyError(f"unknown benchmark(s) {sorted(unknown)}; available: {sorted(modules)}")
    rows = []
    for name, module in modules.items():
        if names and name not in names:
            continue
        rows += [{"benchmark": name, **row} for row in module.run(quick)]
    return rows


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
