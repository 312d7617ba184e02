"""`vgt prep-latents`: the latent column is the AE's encoding of the centre crop; fingerprints are enforced."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from prep_samples import image_bytes, write_parquet, write_wds

from pipelines.prep.add_latents import run_prep_latents
from pipelines.prep.dataset import run_prep
from ray_jobs.cli import main
from vgt.ae import VGTAutoencoder
from vgt.artifacts import ArtifactError
from vgt.data import LatentMismatchError, PreparedDataset, read_latents
from vgt.presets import get_preset


def test_latents_equal_encode_of_centre_crop_and_fingerprint_is_enforced(ray_cluster, tmp_path):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    ae = VGTAutoencoder.from_config(cfg.ae).eval()
    fp = ae.save_pretrained(str(tmp_path / "ae"))
    write_wds(str(tmp_path / "raw" / "w.tar"), [
        {"__key__": f"{i}", "jpg": image_bytes(size, seed=i), "txt": f"cap {i}"}
        for i, size in enumerate([(120, 150), (200, 112), (112, 112)])])
    write_parquet(str(tmp_path / "raw" / "t.parquet"), [image_bytes((140, 90), fmt="PNG", seed=7)], ["table"])
    # a part whose every row was rejected (too small): it still gets the latent columns
    write_wds(str(tmp_path / "raw" / "z.tar"), [{"__key__": "0", "jpg": image_bytes((40, 40)), "txt": "small"}])
    data = str(tmp_path / "prepared")
    run_prep([str(tmp_path / "raw")], data, cfg)
    assert [p.rows for p in PreparedDataset(data).parts] == [1, 3, 0]

    # an actor that takes both CPUs: decoding shares them (one actor) instead of waiting for a free CPU
    assert main(["prep-latents", "--data", data, "--ae", str(tmp_path / "ae"), "--batch-size", "2", "--num-cpus", "2"]) == 0
    ds = PreparedDataset(data)
    assert {name: (e["rows"], e["torch_threads"]) for name, e in ds.manifest["latents"]["parts"].items()} == {
        p.name: (p.rows, 2 if p.rows else None) for p in ds.parts}  # the empty part is written too
    assert ds.read_part(ds.parts[2], ae_fingerprint=fp).num_rows == 0
    assert ds.latent_fingerprint == fp and ds.manifest["latents"]["shape"] == [32, 4, 4]
    table = ds.read_part(ds.parts[0], columns=["key", "image", "latent", "latent_shape"], ae_fingerprint=fp)
    rows = [r for b in ds.iter_batches(columns=["image", "width", "height"]) for r in b.to_pylist()]
    stored = np.concatenate([read_latents(b) for b in ds.iter_batches(columns=["latent", "latent_shape"],
                                                                          ae_fingerprint=fp)])
    assert stored.dtype == np.float16 and stored.shape == (4, 32, 4, 4) and table.num_rows == 1

    crops = []
    for r in rows:  # centre crop by hand: the stored image has its shorter side at 112
        arr = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
        top, left = (r["height"] - 112) // 2, (r["width"] - 112) // 2
        crops.append(arr[top: top + 112, left: left + 112])
    assert [(r["width"], r["height"]) for r in rows] == [(174, 112), (112, 140), (200, 112), (112, 112)]
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = ae.encode(pixels)
    # fp32 at another batch shape (CPU BLAS is not batch-invariant), then one fp16 rounding.
    torch.testing.assert_close(torch.from_numpy(stored).float(), ref.half().float(), rtol=2e-3, atol=1e-4)

    torch.manual_seed(1)
    other = VGTAutoencoder.from_config(cfg.ae)
    other_fp = other.save_pretrained(str(tmp_path / "ae2"))
    assert other_fp != fp
    with pytest.raises(LatentMismatchError, match="not of this AE"):
        ds.check_latents(other_fp)
    with pytest.raises(LatentMismatchError, match="ae_fingerprint"):
        next(ds.iter_batches(columns=["latent"]))
    with pytest.raises(ArtifactError, match="--overwrite"):  # no Ray work: refused up front
        run_prep_latents(data, str(tmp_path / "ae2"))
