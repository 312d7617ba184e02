"""The figures of the demo report and `vgt eval` (vgt.plots): what they draw, read back from the
matplotlib axes, and the PNG files they become."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from vgt import plots


def records(n: int = 50) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"step": s, "loss": float(2.0 * s ** -0.5 * rng.uniform(0.7, 1.3)), "lr": 1e-4 * min(1, s / 10),
             "samples_per_s": 10.0} for s in range(1, n + 1)]


def test_smoothing_is_tensorboards_debiased_ema():
    assert plots.smoothed([4.0]) == [4.0]  # debiased: the first point is not pulled towards 0
    a, b = 4.0, 2.0
    assert plots.smoothed([a, b], 0.5) == pytest.approx([a, (0.25 * a + 0.5 * b) / 0.75])


def test_learning_curves_log_scale_raw_and_smoothed_with_units():
    rs = records()
    fig = plots.learning_curves(rs, "AR training")
    top, bottom = fig.axes
    assert top.get_yscale() == "log" and top.get_ylabel() == "loss (log scale)" and top.get_title() == "AR training"
    raw, smooth = top.get_lines()
    assert list(raw.get_xdata()) == [r["step"] for r in rs]
    assert list(raw.get_ydata()) == [r["loss"] for r in rs]
    assert list(smooth.get_ydata()) == pytest.approx(plots.smoothed([r["loss"] for r in rs]))
    assert np.abs(np.diff(smooth.get_ydata())).mean() < 0.5 * np.abs(np.diff(raw.get_ydata())).mean()  # smoother
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["raw", "smoothed (EMA 0.9)"]
    (lr,) = bottom.get_lines()
    assert list(lr.get_ydata()) == [r["lr"] for r in rs]
    assert bottom.get_xlabel() == "optimiser step" and bottom.get_ylabel() == "learning rate"
    image = Image.open(io.BytesIO(plots.png(fig)))
    assert image.size == (640, 400) and np.asarray(image.convert("L"), dtype=float).std() > 2.0
    # a loss that reaches 0 or below cannot be drawn on a log scale: linear, and said so
    flat = plots.learning_curves([{"step": 1, "loss": 0.0, "lr": 1.0}, {"step": 2, "loss": -1.0, "lr": 1.0}], "x")
    assert flat.axes[0].get_yscale() == "linear" and flat.axes[0].get_ylabel() == "loss"


def test_score_bars_heights_gaps_and_labels():
    tasks = ["colour", "count", "overall"]
    scores = {"generated": {"colour": 0.5, "count": 0.25, "overall": 0.375},
              "unconditional": {"colour": 0.125, "count": None, "overall": 0.1}}
    fig = plots.score_bars(scores, tasks, "Shapes scores")
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights[:3] == [0.5, 0.25, 0.375]
    assert heights[3] == 0.125 and math.isnan(heights[4]) and heights[5] == 0.1  # a missing score: a gap
    assert [t.get_text() for t in ax.get_xticklabels()] == tasks
    assert ax.get_ylabel() == "fraction correct (0-1)" and ax.get_ylim() == (0, 1.1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["generated", "unconditional"]
    assert Image.open(io.BytesIO(plots.png(fig))).format == "PNG"


def test_demo_report_draws_its_loss_curves_with_matplotlib(tmp_path):
    import json

    from pipelines.demo.report import loss_curve

    rs = records(20)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                    [{"event": "start", "step": 0}, *rs]))
    png, stats = loss_curve(str(tmp_path), "AE training")
    assert Image.open(io.BytesIO(png)).size == (640, 400)
    assert stats["steps"] == 20 and stats["first_loss"] == rs[0]["loss"]
    assert stats["last_loss"] == pytest.approx(np.mean([r["loss"] for r in rs[-2:]]))
