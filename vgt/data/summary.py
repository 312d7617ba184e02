"""Manifest totals (overall and per source) and the human summary table `vgt prep` prints."""
from __future__ import annotations

import collections

_COUNTS = ("rows_in", "rows_out", "rejected")


def totals(parts: list[dict]) -> dict:
    """Sum the counts of finished part entries: rows in / out / rejected and by reason."""
    out = {k: 0 for k in _COUNTS}
    reasons: collections.Counter = collections.Counter()
    for entry in parts:
        if not entry.get("complete"):
            continue
        for k in _COUNTS:
            out[k] += entry[k]
        reasons.update(entry["rejected_by_reason"])
    return {**out, "rejected_by_reason": dict(sorted(reasons.items()))}


def by_source(parts: dict[str, dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for entry in parts.values():
        groups[entry["source"]].append(entry)
    return {source: {"inputs": len(entries), **totals(entries)} for source, entries in sorted(groups.items())}


def format_summary(manifest: dict) -> str:
    """A plain-text table: one line per source, a total, then reasons and damaged input files."""
    header = ("source", "inputs", "rows in", "kept", "rejected", "kept %")
    lines = [header]
    for name, s in {**manifest["sources"], "TOTAL": _total_line(manifest)}.items():
        kept = f"{100 * s['rows_out'] / s['rows_in']:.1f}" if s["rows_in"] else "-"
        lines.append((name, str(s["inputs"]), str(s["rows_in"]), str(s["rows_out"]), str(s["rejected"]), kept))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    reasons = manifest["counts"]["rejected_by_reason"]
    if reasons:
        text.append("rejected by reason: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    for err in manifest.get("shard_errors", []):
        text.append(f"damaged input: {err['input']}: {err['reason']} ({err['detail']})")
    run = manifest["runs"][-1]
    rate = run["rows_in"] / run["duration_s"] if run["duration_s"] else 0.0
    text.append(f"this run: {len(run['parts_built'])} part(s) built, {run['parts_skipped']} skipped, "
                f"{run['rows_in']} rows in {run['duration_s']:.1f} s ({rate:.1f} rows/s)")
    return "\n".join(text)


def _total_line(manifest: dict) -> dict:
    return {"inputs": sum(s["inputs"] for s in manifest["sources"].values()), **manifest["counts"]}
