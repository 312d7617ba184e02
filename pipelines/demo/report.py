"""The demo's stage (8): score the autoencoder's own ceiling, measure reconstructions, draw the
loss curves, and write OUT/report.html (every picture it shows is a file next to it)."""
from __future__ import annotations

import html
import io
import json

import numpy as np
from PIL import Image

from vgt import io as vio
from vgt import plots
from vgt.eval.shapes.score import SCORES

GRID_IMAGES = 8  # originals / reconstructions shown in the reconstruction grid


def loss_curve(run: str, title: str) -> tuple[bytes, dict]:
    """The run's learning curves (PNG) and its loss / throughput figures."""
    from vgt.train.loop import read_metrics

    steps = [r for r in read_metrics(run) if "loss" in r]
    curve = plots.png(plots.learning_curves(steps, title))
    tail = steps[-max(1, len(steps) // 10):]
    return curve, {"steps": len(steps), "first_loss": steps[0]["loss"] if steps else None,
                   "last_loss": float(np.mean([r["loss"] for r in tail])) if steps else None,
                   "samples_per_s": float(np.mean([r["samples_per_s"] for r in tail])) if steps else None}


def _save(image: Image.Image, uri: str) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    vio.write_bytes(uri, buf.getvalue())


def ae_ceiling(ae_dir: str, heldout: str, report: str) -> dict:
    """Shapes scores of the AE's reconstructions of held-out ground-truth renders (the generator's
    ceiling) and a grid of originals over reconstructions."""
    import torch

    from vgt.ae import VGTAutoencoder
    from vgt.data.images import to_uint8
    from vgt.data.reader import PreparedDataset
    from vgt.eval.recon import model_inputs
    from vgt.eval.shapes import score_images, spec_of, summarize

    ae = VGTAutoencoder.from_pretrained(ae_dir).eval()
    data = PreparedDataset(heldout)
    table = next(data.iter_batches(columns=["caption", "image"], batch_size=data.num_rows))
    pixels = model_inputs(table.column("image").to_pylist(), data.resolution, "standard")
    with torch.no_grad():
        recon = ae(pixels).clamp(-1, 1)
    images = [Image.fromarray(a) for a in to_uint8(recon)]
    summary = summarize(score_images([spec_of(c) for c in table.column("caption").to_pylist()], images))
    k = min(GRID_IMAGES, len(images))
    grid = np.concatenate([np.concatenate(list(to_uint8(pixels[:k])), 1), np.concatenate(list(to_uint8(recon[:k])), 1)], 0)
    _save(Image.fromarray(grid), vio.join(report, "recon_grid.png"))
    return {k2: v for k2, v in summary.items() if k2 != "per_prompt"}


def write_report(metrics: dict, paths: dict, cfg) -> None:
    from pipelines.eval.actors import recon_eval

    report = paths["report"]
    metrics["ae_ceiling"] = ae_ceiling(paths["ae"], paths["heldout"], report)
    metrics["recon"] = {"standard": recon_eval(paths["ae"], paths["heldout"], "standard", fd=True),
                        "reference": recon_eval(paths["ae"], paths["heldout"], "reference", fd=False)}
    for name in ("ae", "ar"):
        curve, stats = loss_curve(paths[f"{name}_run"], f"{name.upper()} training")
        vio.write_bytes(vio.join(report, f"{name}_loss.png"), curve)
        metrics[f"train_{name}"].update(stats)
    scores = {"generated": metrics["shapes"], "unconditional (guidance 0)": metrics["shapes_unconditional"],
              "AE ceiling": metrics["ae_ceiling"]}
    vio.write_bytes(vio.join(report, "scores.png"),
                    plots.png(plots.score_bars(scores, SCORES, "Shapes scores on held-out prompts")))
    vio.write_bytes(vio.join(paths["root"], "report.html"), render_html(metrics, cfg).encode())


def _table(rows: list[tuple[str, object]]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in rows) + "</table>"


def render_html(metrics: dict, cfg) -> str:
    shapes, ceiling, unconditional = metrics["shapes"], metrics["ae_ceiling"], metrics["shapes_unconditional"]
    score_rows = "".join(f"<tr><th>{t}</th><td>{_num(shapes.get(t))}</td><td>{_num(unconditional.get(t))}</td>"
                         f"<td>{_num(ceiling.get(t))}</td></tr>" for t in SCORES)
    recon = metrics["recon"]
    recon_rows = [("PSNR (standard, dB)", recon["standard"]["psnr"]), ("SSIM (standard)", recon["standard"]["ssim"]),
                  ("PSNR (reference conventions, dB)", recon["reference"]["psnr"]),
                  ("SSIM (reference conventions: data range 2, inflated)", recon["reference"]["ssim"]),
                  ("Fréchet distance, EfficientNet-Lite0 features (proxy, NOT FID)", recon["standard"]["frechet_proxy"])]
    budgets = metrics["stage_budget_seconds"]
    timing_rows = [(k, f"{v:.1f} s (budget {budgets[k]:.0f} s)") for k, v in metrics["stage_seconds"].items()]
    by_prompt: dict[str, list] = {}
    for record in json.loads(vio.read_bytes(vio.join(metrics["paths"]["shapes"], "shapes.json")))["images"]:
        by_prompt.setdefault(record["prompt"], []).append(record)
    samples = "".join(
        f"<tr><td>{html.escape(p)}</td><td>"
        + "".join(f'<img src="shapes/{html.escape(r["image"])}" title="{html.escape(", ".join(r["detections"]))}" '
                  f'class="{"ok" if r["correct"] else "bad"}">' for r in rs)
        + f"</td><td>{sum(r['correct'] for r in rs)}/{len(rs)}</td></tr>" for p, rs in by_prompt.items())
    http = shapes.get("http", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vgt demo report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{margin:2px;border:3px solid #ccc}}
img.ok{{border-color:#3a3}} img.bad{{border-color:#c33}}</style></head><body>
<h1>vgt demo: preset <code>{html.escape(cfg.name)}</code> on synthetic shapes</h1>
<p>Held-out attribute combinations only (never in training); {shapes['n_images']} images from
{http.get('requests', '?')} HTTP requests to the Serve app, sampled with the model's config.sample
(CFG {shapes['sample'].get('guidance_scale', cfg.sample.guidance_scale)}, {cfg.sample.num_steps} steps,
{cfg.sample.parallel_tokens} tokens per LLM step).
Scores by the deterministic shapes detector; "unconditional" scores one image per prompt drawn with
guidance 0 (the model without its prompt: chance level); the AE ceiling scores the autoencoder's own
reconstructions of held-out ground-truth renders.</p>
<h2>Shapes scores</h2><table><tr><th>task</th><th>generated</th><th>unconditional</th><th>AE ceiling</th></tr>
{score_rows}</table><img src="report/scores.png" alt="shapes scores per task">
<h2>Reconstruction</h2>{_table(recon_rows)}<img src="report/recon_grid.png" alt="originals over reconstructions">
<h2>Training</h2><img src="report/ae_loss.png" alt="AE loss"><img src="report/ar_loss.png" alt="AR loss">
{_table([("AE steps", metrics['train_ae'].get('steps')), ("AE final loss", metrics['train_ae'].get('last_loss')),
         ("AR steps", metrics['train_ar'].get('steps')), ("AR final loss", metrics['train_ar'].get('last_loss'))])}
<h2>Stage times</h2>{_table(timing_rows)}
<h2>Samples (green: the detector finds the prompt right; hover for detections)</h2>
<table><tr><th>prompt</th><th>images</th><th>right</th></tr>{samples}</table>
<p>All numbers: <a href="metrics.json">metrics.json</a>.</p></body></html>
"""


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
