"""`vgt demo` end to end, in a subprocess (it starts and stops its own Ray cluster): one slow test,
the default demo with fixed training steps: what it learns, and, from its measured stage costs, the
time the budgeted `make demo` takes on the same machine. The budget's arithmetic is tested here
without Ray; `train.time_limit_s` in tests/test_train_time_limit.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.demo.run import BUDGET_SHARES, TRAIN_FIXED_S, budgeted_seconds, stage_plan
from vgt.eval.shapes import eval_prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("colour", "count", "shape", "position", "two_object", "single_all", "overall")


def test_demo_preset_has_the_calibrated_sizes():
    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    cfg = get_preset("demo")
    pipe = VGTPipeline.from_config(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 1.6e6 < count(pipe.model.llm) < 1.9e6 and 1.1e6 < count(pipe.model.head) < 1.3e6
    assert cfg.data.resolution == 112 and cfg.ae.latent_channels == 32
    # the AE stage trains with the channel LayerNorm the AR sampler applies to every token
    assert cfg.train.ae_stage1.encoder_norm and cfg.sample.guidance_scale > 1


def run_demo(out, *flags: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-m", "ray_jobs.demo", "--out", str(out), *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def leftover_processes(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                found.append(cmd[:200])
    return found


def check_report(out, n: int, budget_s: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all((out / r).is_file() for r in refs), [r for r in refs if not (out / r).is_file()]
    pictures = [r for r in refs if r.endswith(".png")]
    for name in ("report/recon_grid.png", "report/ae_loss.png", "report/ar_loss.png"):
        assert name in pictures
    spread = {r: np.asarray(Image.open(out / r).convert("L"), dtype=float).std() for r in pictures}
    samples = [v for r, v in spread.items() if r.startswith("shapes/")]
    assert all(v > 2.0 for r, v in spread.items() if r.startswith("report/")), spread  # grids and curves
    # samples: a barely trained model may leave a single picture empty, never most of them
    assert np.median(samples) > 2.0 and np.mean([v > 2.0 for v in samples]) >= 0.9, sorted(samples)[:5]
    prompts = len(eval_prompts())
    shapes = metrics["shapes"]
    assert shapes["http"]["requests"] == shapes["http"]["ok"] == prompts * n == shapes["n_images"]
    assert len([r for r in pictures if r.startswith("shapes/images/")]) == prompts * n
    for block in (shapes, metrics["ae_ceiling"]):
        assert all(0.0 <= block[t] <= 1.0 for t in TASKS)
    std, ref = metrics["recon"]["standard"], metrics["recon"]["reference"]
    assert 5 < std["psnr"] < 60 and 5 < ref["psnr"] < 60
    assert -1 <= std["ssim"] <= 1 and -1 <= ref["ssim"] <= 1
    assert std["frechet_proxy"] >= 0
    assert metrics["train_ae"]["steps"] >= 1 and metrics["train_ar"]["steps"] >= 1
    assert 0 < metrics["total_seconds"] < budget_s
    assert leftover_processes(metrics["ray_temp_dir"]) == []
    return metrics


# What the conditioned model must beat the unconditional one (guidance 0: the prompt ignored) by.
# Run K: position 1.00 against 0.11, colour 0.89 against 0.00 (README "The default demo on 2 cores").
QUALITY_MARGINS = {"position": 0.50, "colour": 0.50}
# The quality test's fixed training: what the default 15-minute budget buys on 2 quiet cores. A busy
# machine takes longer but trains and scores the same (the sampling seeds are fixed too).
QUALITY_STEPS = {"ae": 1600, "ar": 1800}
# Floors the quality test's runs cleared (README "The default demo on 2 cores": run K, colour 0.89,
# position 1.00; run G, with the old time shift, 0.81 and 1.00). Count is not floored: at these steps
# it is barely above the unconditional model's (0.43 vs 0.25), the open part of issue 12.
QUALITY_FLOORS = {"colour": 0.70, "position": 0.95}


def score_table(metrics: dict) -> str:
    rows = [("generated", metrics["shapes"]), ("unconditional", metrics["shapes_unconditional"]),
            ("AE ceiling", metrics["ae_ceiling"])]
    head = "| | " + " | ".join(TASKS) + " |"
    return "\n".join([head, *(f"| {name} | " + " | ".join(f"{block[t]:.2f}" for t in TASKS) + " |"
                                for name, block in rows)])


def prompt_lift_short_of(metrics: dict, margins: dict) -> dict:
    """Tasks where the conditioned score is not `margin` above the unconditional model's."""
    conditioned, unconditional = metrics["shapes"], metrics["shapes_unconditional"]
    return {t: (conditioned[t], unconditional[t]) for t, margin in margins.items()
            if conditioned[t] < unconditional[t] + margin}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(2700)  # ~15 min on 2 quiet cores; fixed steps take longer on a busy machine
def test_default_demo_follows_its_prompts(tmp_path):
    """The default demo with its training fixed at what the 15-minute budget buys: every stage, the
    report, and held-out scores above their floors and above the same model sampled unconditionally;
    apart from those, the budgeted `make demo`'s time on this machine, from this run's stage costs."""
    out = tmp_path / "demo"
    # --out relative to the working directory, as `make demo` passes it (Ray workers run elsewhere)
    proc = run_demo(os.path.relpath(out, REPO), "--ae-steps", str(QUALITY_STEPS["ae"]), "--ar-steps",
                    str(QUALITY_STEPS["ar"]), timeout=2650)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[demo 8/8] report done" in proc.stdout
    metrics = check_report(out, n=8, budget_s=2650)
    assert (metrics["train_ae"]["steps"], metrics["train_ar"]["steps"]) == (QUALITY_STEPS["ae"], QUALITY_STEPS["ar"])
    assert metrics["shapes_unconditional"]["n_images"] == len(eval_prompts())
    table = score_table(metrics)
    below = {t: metrics["shapes"][t] for t, floor in QUALITY_FLOORS.items() if metrics["shapes"][t] < floor}
    assert not below, f"held-out scores below the floors {QUALITY_FLOORS}:\n{table}"
    behind = prompt_lift_short_of(metrics, QUALITY_MARGINS)
    assert not behind, f"the prompt does not lift {behind} by {QUALITY_MARGINS}:\n{table}"
    records = json.loads((out / "shapes" / "shapes.json").read_text())["images"]
    blank = [r["image"] for r in records
             if np.asarray(Image.open(out / "shapes" / r["image"]).convert("L"), dtype=float).std() <= 2.0]
    assert not blank, f"blank images {blank}\n{table}"
    # the preset's batch on the one worker (2 threads); long training prints progress
    assert (metrics["train_ae"]["batch_per_worker"], metrics["train_ar"]["batch_per_worker"]) == (8, 32)
    assert re.search(r"^  train-ar: step \d+ of \d+, loss [0-9.]+, \d+ s$", proc.stdout, re.M), proc.stdout[-2000:]
    # the time, asserted apart from the scores: this run's costs with training held to the budget
    budgeted = budgeted_seconds(metrics)
    print(f"\nas the budgeted demo: {budgeted}")
    assert budgeted["total"] <= 1.1 * budgeted["budget"], f"`make demo` would overrun its budget + 10 %: {budgeted}"


@pytest.mark.timeout(30)
def test_training_progress_prints_only_step_records(tmp_path, capsys, monkeypatch):
    import time

    import pipelines.demo.run as demo

    monkeypatch.setattr(demo, "PROGRESS_EVERY_S", 0.1)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"event": "start", "step": 0}) + "\n")  # no loss yet: nothing to print
    with demo.training_progress("train-ae", str(metrics), 10):
        time.sleep(0.35)
        assert capsys.readouterr().out == ""
        metrics.write_text(metrics.read_text() + json.dumps({"step": 3, "loss": 0.5}) + "\n")
        time.sleep(0.35)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(re.fullmatch(r"  train-ae: step 3 of 10, loss 0\.5000, \d+ s", line) for line in lines), lines


def write_run(folder, step_times: list[float]) -> str:
    """A run folder whose metrics.jsonl has a start record at 0 and a step at each of `step_times`."""
    folder.mkdir()
    rows = [{"event": "start", "step": 0, "time": 1000.0}]
    rows += [{"step": i + 1, "time": 1000.0 + t, "loss": 1.0} for i, t in enumerate(step_times)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


@pytest.mark.timeout(30)
def test_budgeted_seconds_holds_training_to_its_allowance_and_keeps_the_other_stages(tmp_path):
    """A 10-minute budget (shares: AE 132 s, AR 282 s), a fixed-steps run that trained far longer."""
    ae_run = write_run(tmp_path / "ae", [*range(2, 282, 2), 285])  # loop 285 s, longest step 5 s
    ar_run = write_run(tmp_path / "ar", [3.0 * k for k in range(1, 217)])  # loop 648 s, longest 3 s
    times = {"data": 10, "prep": 20, "train-ae": 300, "prep-latents": 30, "train-ar": 700, "serve": 30,
             "generate": 80, "report": 40}
    starts, t = {}, 5.0  # Ray start: 5 s
    for name in BUDGET_SHARES:
        starts[name], t = t, t + times[name]
    metrics = {"options": {"budget_minutes": 10}, "paths": {"ae_run": ae_run, "ar_run": ar_run},
               "stage_seconds": times, "stage_start_seconds": starts, "total_seconds": t + 3}
    got = budgeted_seconds(metrics)
    assert TRAIN_FIXED_S == 25.0
    # AE starts at 35 s: 600 - 35 - 0.71 * 600 = 139 s (> its 132 s share), loop cap 114 s;
    # 300 - 285 s measured outside the loop + 114 + a 5 s step
    assert got["stages"]["train-ae"] == pytest.approx(134.0)
    # AR starts at 35 + 134 + 30 = 199 s: 600 - 199 - 0.2 * 600 = 281 s < its 282 s share: 282, cap 257
    assert got["stages"]["train-ar"] == pytest.approx(700 - 648 + 257 + 3)
    assert got["stages"]["generate"] == 80 and got["outside_stages"] == 8
    assert got["total"] == pytest.approx(5 + 10 + 20 + 134 + 30 + 312 + 30 + 80 + 40 + 3)
    assert got["budget"] == 600


@pytest.mark.timeout(30)
def test_stage_plan_buys_steps_with_the_budget_or_runs_fixed_steps():
    from pipelines.demo.run import STEPS_PER_SECOND
    from vgt.presets import get_preset

    ar = get_preset("demo").train.ar_pretrain
    budgeted = stage_plan(ar, "ar_pretrain", 1, None, 400.0)
    assert budgeted == {"preset_steps": ar.steps, "batch_per_worker": ar.batch_size, "time_limit_s": 375.0,
                        "steps": min(ar.steps, int(375.0 * STEPS_PER_SECOND["ar_pretrain"]))}
    assert stage_plan(ar, "ar_pretrain", 1, None, 1e6)["steps"] == ar.steps  # never past the preset's
    # no time left: the 10 s the cap never goes below, and the steps they buy
    rate = STEPS_PER_SECOND["ar_pretrain"]
    assert stage_plan(ar, "ar_pretrain", 1, None, 0.0) == {**budgeted, "steps": int(10 * rate), "time_limit_s": 10.0}
    fixed = stage_plan(ar, "ar_pretrain", 2, 1800, 400.0)
    assert fixed == {"preset_steps": ar.steps, "batch_per_worker": ar.batch_size // 2, "steps": 1800,
                     "time_limit_s": None}
