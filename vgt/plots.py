"""Figures of the demo report and `vgt eval` (matplotlib, no display: the Agg backend).

`learning_curves`: a run's loss per optimiser step on a log scale, raw and smoothed, with its
learning rate below; `score_bars`: accuracy per task, side by side for several models. Each returns
the `Figure` (tests read its axes) and `png` turns one into bytes for a file next to the report.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, also on machines without a display
from matplotlib.figure import Figure  # noqa: E402  (after the backend choice)

SMOOTHING = 0.9  # weight of the past in the smoothed loss (TensorBoard's slider, same formula)


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average (the first points are not pulled to 0)."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def learning_curves(records: list[dict], title: str) -> Figure:
    """metrics.jsonl step records -> loss (log scale, raw and smoothed) over learning rate, by step."""
    steps = [r["step"] for r in records if "loss" in r]
    loss = [r["loss"] for r in records if "loss" in r]
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="raw")
    top.plot(steps, smoothed(loss), color="tab:blue", linewidth=1.8, label=f"smoothed (EMA {SMOOTHING})")
    if loss and min(loss) > 0:
        top.set_yscale("log")
    top.set_ylabel("loss (log scale)" if top.get_yscale() == "log" else "loss")
    top.set_title(title)
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="upper right")
    lr_steps = [r["step"] for r in records if "lr" in r]
    bottom.plot(lr_steps, [r["lr"] for r in records if "lr" in r], color="tab:orange")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimiser step")
    bottom.grid(True, alpha=0.3)
    return fig


def score_bars(scores: dict[str, dict[str, float | None]], tasks: list[str], title: str,
               ylabel: str = "fraction correct (0-1)") -> Figure:
    """{model: {task: score}} -> grouped bars per task (a missing score leaves a gap), values on top."""
    fig = Figure(figsize=(max(6.4, 1.1 * len(tasks)), 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(scores))
    for j, (name, values) in enumerate(scores.items()):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(tasks))]
        heights = [values.get(t) if values.get(t) is not None else float("nan") for t in tasks]
        bars = ax.bar(xs, heights, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("task")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
