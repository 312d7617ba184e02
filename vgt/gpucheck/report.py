"""The check's two outputs: `gpu-check.json` (everything measured) and `gpu-check.md` (one table)."""
from __future__ import annotations

import json
import os

JSON_NAME, TABLE_NAME = "gpu-check.json", "gpu-check.md"
VERDICT = {True: "pass", False: "FAIL", None: ""}


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value).replace("|", "/")


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# vgt gpu-check: {result['preset']} ({'all passed' if result['ok'] else 'FAILED'}, "
             f"{result['seconds']:.0f} s)", "",
             f"- device: {env['device']}", f"- torch {env['torch']} (CUDA {env['cuda']}), python {env['python']}",
             "- " + ", ".join(f"{k} {v or 'not installed'}" for k, v in env["packages"].items()),
             f"- attention for bf16 on this device: {env['attention']} ({env['attention_reason']})"]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", "| check | case | value | unit | verdict | note |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append("| " + " | ".join([r["check"], _cell(r["case"]), _cell(r["value"]), r["unit"], VERDICT[r["ok"]],
                                        _cell(r["note"])]) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = os.path.join(out, JSON_NAME), os.path.join(out, TABLE_NAME)
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(result))
    return paths
