"""`vgt eval` over Ray Data: recon metrics equal the Ray-free computation, generation is
deterministic and batch-independent, the GenEval / DPG writers and the shapes benchmark run on a
real (tiny, random) pipeline folder, and bad input fails with one clear line."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from vgt.eval.shapes import eval_prompts


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    import torch

    from vgt.pipeline import VGTPipeline
    from vgt.presets import get_preset

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("pipe") / "pipeline")
    VGTPipeline.from_config(get_preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def heldout_prepared(tmp_path_factory, ray_cluster):
    from pipelines.prep.dataset import run_prep
    from vgt.eval.shapes.dataset import write_shard
    from vgt.presets import get_preset

    root = tmp_path_factory.mktemp("shapes")
    write_shard(str(root / "shards"), 0, 12, seed=3, split="heldout")
    out = str(root / "prepared")
    run_prep([f"heldout={root / 'shards'}/shapes-heldout-00000.tar"], out, get_preset("tiny"))
    return out


def test_recon_eval_equals_the_ray_free_metrics(tiny_pipeline, heldout_prepared):
    from pipelines.eval.actors import recon_eval
    from vgt.ae import VGTAutoencoder
    from vgt.data.reader import PreparedDataset
    from vgt.eval.recon import evaluate_batch

    ae_dir = os.path.join(tiny_pipeline, "ae")
    got = recon_eval(ae_dir, heldout_prepared, "reference", fd=False, batch_size=5)
    ds = PreparedDataset(heldout_prepared)
    rows = next(ds.iter_batches(columns=["image"], batch_size=100)).column("image").to_pylist()
    direct = evaluate_batch(VGTAutoencoder.from_pretrained(ae_dir), rows, ds.resolution, "reference")
    assert got["images"] == 12 and got["convention"] == "reference"
    assert got["psnr"] == pytest.approx(float(np.mean(direct["psnr"])), abs=1e-5)
    assert got["ssim"] == pytest.approx(float(np.mean(direct["ssim"])), abs=1e-6)
    std = recon_eval(ae_dir, heldout_prepared, "standard", fd=True)
    assert std["frechet_proxy"] > 0 and "NOT FID" in std["frechet_proxy_label"]


def test_generation_is_deterministic_and_batch_independent(tiny_pipeline, ray_cluster):
    from pipelines.eval.actors import generate

    prompts = ["a red circle on the left", "two blue squares at the top"]
    sample = {"num_steps": 2, "guidance_scale": 2.0}
    a = {(i, k): png for i, k, png in generate(tiny_pipeline, prompts, 2, seed=5, sample=sample, batch_size=4)}
    b = {(i, k): png for i, k, png in generate(tiny_pipeline, prompts, 2, seed=5, sample=sample, batch_size=1)}
    assert sorted(a) == [(0, 0), (0, 1), (1, 0), (1, 1)] and sorted(b) == sorted(a)
    for key in a:  # CPU kernels differ across batch shapes by ~1e-6: at most one 8-bit level
        pa, pb = (np.asarray(Image.open(io.BytesIO(x[key])), dtype=int) for x in (a, b))
        assert pa.shape == (112, 112, 3) and np.abs(pa - pb).max() <= 1
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(a[0, 0]))), np.asarray(Image.open(io.BytesIO(a[0, 1]))))


def test_geneval_and_dpg_folders_from_a_pipeline(tiny_pipeline, ray_cluster, tmp_path):
    from pipelines.eval.benchmarks import dpg_images, geneval_images

    meta = tmp_path / "evaluation_metadata.jsonl"
    records = [{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}], "prompt": "a red circle"},
               {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a square"}]
    meta.write_text("".join(json.dumps(r) + "\n" for r in records))
    sample = {"num_steps": 2}
    assert geneval_images(tiny_pipeline, str(meta), str(tmp_path / "geneval"), n=3, sample=sample) == 2
    for i, record in enumerate(records):
        folder = tmp_path / "geneval" / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record
        assert sorted(os.listdir(folder / "samples")) == ["0000.png", "0001.png", "0002.png"]
    prompts = tmp_path / "dpg"
    prompts.mkdir()
    (prompts / "whoops12.txt").write_text("a green triangle")
    assert dpg_images(tiny_pipeline, str(prompts), str(tmp_path / "dpg_out"), sample=sample) == 1
    assert os.listdir(tmp_path / "dpg_out") == ["whoops12.png"]
    assert Image.open(tmp_path / "dpg_out" / "whoops12.png").size == (224, 224)


def test_shapes_benchmark_on_a_pipeline_folder(tiny_pipeline, ray_cluster, tmp_path):
    from pipelines.eval.shapes import shapes_eval

    summary = shapes_eval(tiny_pipeline, n=1, seed=0, sample={"num_steps": 2}, out=str(tmp_path / "s"))
    assert summary["n_images"] == len(eval_prompts()) == 48
    for task in ("colour", "count", "shape", "position", "two_object", "overall"):
        assert 0.0 <= summary[task] <= 1.0
    saved = json.loads((tmp_path / "s" / "shapes.json").read_text())
    assert len(saved["images"]) == 48 and all((tmp_path / "s" / r["image"]).exists() for r in saved["images"])
    bars = Image.open(tmp_path / "s" / "shapes.png")  # the score bars (vgt.plots.score_bars)
    assert bars.format == "PNG" and bars.size[0] >= 640


@pytest.mark.parametrize("argv,status,message", [
    (["eval", "recon", "--ae", "/nonexistent/ae", "--data", "/tmp"], 1, "does not exist"),
    (["eval", "shapes", "--model", "/nonexistent/pipe"], 1, "does not exist"),
    (["eval", "shapes", "--model", "http://127.0.0.1:9", "--n", "0"], 2, "at least 1"),
])
def test_cli_errors_are_one_line(argv, status, message, capsys):
    from ray_jobs.cli import main

    try:
        assert main(argv) == status  # refused by the command: exactly one line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
    except SystemExit as exc:  # refused by argparse: the usage, then one error line
        assert exc.code == status
        err = capsys.readouterr().err.strip().splitlines()[-1:]
    assert message in err[0] and "error:" in err[0]
